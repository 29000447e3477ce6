package main

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/gatehouse-dev/gatehouse/"

// TestImportDirection pins the import graph that DESIGN.md and STYLE.md §11 describe, so the
// data flow stays readable from it: storage and signer import no sibling, proxy never imports
// cmd, attest never imports proxy, only proxy and cmd use the admission pipeline (and the gate
// only through its interface), and only cmd imports the cloud-provider SDKs (what field libraries such as osv-scalibr
// pull in for themselves is theirs).
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
			case from == "attest" && to == "proxy":
				t.Errorf("%s imports %s: attest knows images, not how they are served", pkg, imp)
			case imp == module+"proxy/admission" && from != "proxy" && from != "cmd":
				t.Errorf("%s imports %s: only proxy and cmd use the admission pipeline", pkg, imp)
			case imp == module+"proxy/admission" && pkg == module+"proxy/gate":
				t.Errorf("%s imports %s: the gate knows admission only as its Admitter interface", pkg, imp)
			}
		}
		if from == "cmd" || from == "integration" {
			continue
		}
		for _, imp := range imps {
			for _, sdk := range sdks {
				if strings.HasPrefix(imp, sdk) {
					t.Errorf("%s imports %s: only cmd imports provider SDKs", pkg, imp)
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d packages of the module were checked; go list output was:\n%s", checked, out)
	}
}
