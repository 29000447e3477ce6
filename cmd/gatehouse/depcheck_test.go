package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/gatehouse-dev/gatehouse/"

// TestImportDirection pins the import graph that DESIGN.md and STYLE.md §11 describe, so the
// data flow stays readable from it: storage and signer import no sibling, proxy never imports
// cmd, and only cmd may pull in the heavy cloud-provider SDKs.
func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "../../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		imports[f[0]] = f[1:]
	}
	own := func(p string) bool { return strings.HasPrefix(p, module) }
	area := func(p string) string { return strings.SplitN(strings.TrimPrefix(p, module), "/", 2)[0] }
	sdks := []string{"github.com/aws/", "cloud.google.com/", "github.com/Azure/", "github.com/hashicorp/vault/"}

	// transitive closure, for the SDK rule
	var deps func(p string, seen map[string]bool)
	deps = func(p string, seen map[string]bool) {
		for _, i := range imports[p] {
			if !seen[i] {
				seen[i] = true
				deps(i, seen)
			}
		}
	}
	checked := 0
	for pkg, imps := range imports {
		if !own(pkg) {
			continue
		}
		checked++
		from := area(pkg)
		for _, imp := range imps {
			if !own(imp) {
				continue
			}
			to := area(imp)
			switch {
			case (from == "storage" || from == "signer") && to != from:
				t.Errorf("%s imports %s: %s imports no sibling", pkg, imp, from)
			case from != "cmd" && to == "cmd" && from != "integration":
				t.Errorf("%s imports %s: nothing imports cmd", pkg, imp)
			case from == "policies" && to != "policies":
				t.Errorf("%s imports %s: policies does no I/O and imports no sibling", pkg, imp)
			}
		}
		if from == "cmd" || from == "integration" {
			continue
		}
		seen := map[string]bool{}
		deps(pkg, seen)
		for d := range seen {
			for _, sdk := range sdks {
				if strings.HasPrefix(d, sdk) {
					t.Errorf("%s depends on %s: only cmd imports provider SDKs", pkg, d)
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d packages of the module were checked; go list output was:\n%s", checked, out)
	}
}
