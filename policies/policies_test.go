package policies

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

func clean() Input {
	return Input{
		Image:    Image{Digest: "sha256:aa", MediaType: "application/vnd.oci.image.manifest.v1+json", Repository: "team/app"},
		Route:    Route{Prefix: "", Kind: "push"},
		Scan:     Scan{Scanner: "gatehouse-builtin/1", Complete: true},
		Database: Database{Present: true, Version: "v1", AgeHours: 2, MaxAgeHours: 72},
		Settings: Settings{HighFixGraceDays: 30},
		Now:      "2026-11-23T00:00:00Z",
	}
}

func TestDefaultPolicyTests(t *testing.T) {
	e, err := Load(context.Background(), Default())
	if err != nil {
		t.Fatal(err)
	}
	results, err := e.Test(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(results) < 10 {
		t.Fatalf("only %d Rego tests ran", len(results))
	}
	for _, r := range results {
		if !r.Passed {
			t.Errorf("Rego test %s failed %s", r.Name, r.Error)
		}
	}
}

func TestEval(t *testing.T) {
	ctx := context.Background()
	e, err := Load(ctx, Default())
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.Eval(ctx, clean())
	if err != nil || !d.Allow || len(d.Deny) != 0 {
		t.Fatalf("clean image: %+v %v", d, err)
	}
	in := clean()
	in.Vulnerabilities = []Vulnerability{{ID: "CVE-2024-45338", Severity: "CRITICAL", Package: "golang.org/x/net", Installed: "0.30.0", Fixed: "0.33.0", Path: "app/server"}}
	in.Findings = []Finding{{Kind: "config", ID: "GH-CFG-ROOT", Title: "the image runs as root", Path: "config:User"}}
	d, err = e.Eval(ctx, in)
	if err != nil || d.Allow || len(d.Deny) != 1 || d.Deny[0].Message != "CVE-2024-45338 (critical, fixed in 0.33.0) in golang.org/x/net 0.30.0 at app/server" {
		t.Fatalf("critical: %+v %v", d, err)
	}
	if len(d.Warn) != 2 { // root user, provenance not evaluated
		t.Errorf("warnings: %+v", d.Warn)
	}
	in = clean()
	in.Database = Database{}
	if d, _ := e.Eval(ctx, in); d.Allow || d.Deny[0].Rule != "GH-POL-DB-MISSING" {
		t.Errorf("no database: %+v", d)
	}
}

func TestBrokenPolicyDoesNotLoad(t *testing.T) {
	for name, src := range map[string]string{
		"syntax":      "package gatehouse\n\ndeny contains x if {",
		"no decision": "package other\n\nx := 1\n",
	} {
		e, err := Load(context.Background(), fstest.MapFS{"p.rego": {Data: []byte(src)}})
		if err == nil {
			if _, err = e.Eval(context.Background(), clean()); err == nil {
				t.Errorf("%s: a broken policy loaded and decided", name)
			}
		}
	}
}

func TestDigestIsStable(t *testing.T) {
	a, _ := Load(context.Background(), Default())
	b, _ := Load(context.Background(), Default())
	c, _ := Load(context.Background(), fstest.MapFS{"p.rego": {Data: []byte("package gatehouse\n\ndecision := {\"allow\": true, \"deny\": [], \"warn\": []}\n")}})
	if a.Digest() != b.Digest() || a.Digest() == c.Digest() || !strings.HasPrefix(a.Digest(), "sha256:") {
		t.Errorf("digests %s %s %s", a.Digest(), b.Digest(), c.Digest())
	}
}

// TestInputMatchesSchema keeps input.schema.json true to the Input type.
func TestInputMatchesSchema(t *testing.T) {
	b, err := os.ReadFile("input.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.AddResource("input.schema.json", doc)
	s, err := c.Compile("input.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	in := clean()
	in.Findings = []Finding{{Kind: "secret", ID: "GH-SECRET-PRIVATEKEY", Severity: "HIGH", Path: "root/.ssh/id_ed25519"}}
	in.Vulnerabilities = []Vulnerability{{ID: "CVE-1", Severity: "HIGH", Package: "p", Installed: "1", Fixed: "2", Published: "2024-01-01T00:00:00Z"}}
	raw, _ := json.Marshal(in)
	v, _ := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err := s.Validate(v); err != nil {
		t.Errorf("an Input does not validate against input.schema.json: %v", err)
	}
	var bad map[string]any
	json.Unmarshal(raw, &bad)
	bad["surprise"] = true
	if err := s.Validate(bad); err == nil {
		t.Error("the schema accepts unknown top-level fields")
	}
}
