//go:build integration

package integration

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest/sbom/sbomtest"
)

// tarDir writes a tar of the files under dir (as paths relative to it) plus extra entries.
func tarDir(t *testing.T, dir string, extra map[string][]byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	if dir != "" {
		err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || path == dir {
				return err
			}
			rel, _ := filepath.Rel(dir, path)
			info, _ := d.Info()
			h, _ := tar.FileInfoHeader(info, "")
			h.Name = rel
			if d.IsDir() {
				h.Name += "/"
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if d.Type().IsRegular() {
				b, _ := os.ReadFile(path)
				tw.Write(b)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range extra {
		mode := int64(0o644)
		if strings.HasPrefix(name, "usr/bin/") || strings.HasSuffix(name, "/server") {
			mode = 0o755
		}
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(b))})
		tw.Write(b)
	}
	tw.Close()
	f.Close()
	return p
}

// buildGoBinary builds a small program against golang.org/x/net v0.30.0 (GO-2024-3333).
func buildGoBinary(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/server\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nimport (\n\t\"fmt\"\n\t\"strings\"\n\n\t\"golang.org/x/net/html\"\n)\n\nfunc main() {\n\tdoc, err := html.Parse(strings.NewReader(\"<p>hi</p>\"))\n\tfmt.Println(doc != nil, err)\n}\n"), 0o644)
	env := []string{"GOFLAGS=-mod=mod", "CGO_ENABLED=0"}
	runDir(t, dir, env, "go", "get", "golang.org/x/net@v0.30.0")
	runDir(t, dir, env, "go", "build", "-o", "server", ".")
	b, err := os.ReadFile(filepath.Join(dir, "server"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// npmInstall installs a package from the npm registry and returns the project directory.
func npmInstall(t *testing.T, spec string) string {
	t.Helper()
	dir := t.TempDir()
	runDir(t, dir, nil, tool(t, "npm"), "install", "--no-audit", "--no-fund", "--silent", spec)
	return dir
}

func zipDir(t *testing.T, dirs ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			b, _ := os.ReadFile(filepath.Join(d, e.Name()))
			w, _ := zw.Create(e.Name())
			w.Write(b)
		}
	}
	zw.Close()
	return buf.Bytes()
}

type scanReport struct {
	Complete bool
	Error    string
	Result   struct {
		Inventory struct {
			Packages []struct{ Ecosystem, Name, Version, Path, Layer string }
		}
		Findings []struct{ Kind, ID, Severity, Title, Path, Layer, Fingerprint string }
	}
	Vulnerabilities []struct {
		ID, Severity, Package, Installed, Fixed, Path, Layer string
		Aliases                                              []string
	}
	Duration string
	Database struct{ Version string }
	Verdict  *struct {
		State    string
		Decision struct {
			Allow bool
			Deny  []struct{ Rule, Message string }
		}
	}
}

// waitScan polls the scan report of an image until want says it is ready.
func waitScan(t *testing.T, gh *server, digest string, want func(scanReport) bool) (scanReport, []byte) {
	t.Helper()
	var body []byte
	for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get(gh.url("/gatehouse/v1/scans/" + digest))
		if err != nil {
			continue
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			continue
		}
		var r scanReport
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatalf("scan report: %v\n%s", err, body)
		}
		if want(r) {
			return r, body
		}
	}
	t.Fatalf("scan of %s not ready in 90s; last report:\n%s\nlog:\n%s", digest, body, tail(gh.log.String(), 30))
	return scanReport{}, nil
}

func metricValue(t *testing.T, gh *server, name string) float64 {
	t.Helper()
	resp, err := http.Get(gh.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+]+)$`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func TestScanRealImage(t *testing.T) {
	crane, oras := tool(t, "crane"), tool(t, "oras")
	gh := startGatehouse(t, "vulndb: {recheck: 200ms, max_age: 87600h}\n")

	// the vulnerability database: the facts of real advisories, as an osv.dev-style all.zip
	osvZip := filepath.Join(t.TempDir(), "all.zip")
	os.WriteFile(osvZip, zipDir(t, "../attest/vulndb/testdata/osv"), 0o644)
	run(t, nil, gatehouseBin, "db", "update", "--config", gh.config, "--from", osvZip)

	// layer 1: this machine's Debian package database and binaries, and a package to delete later
	status, _ := os.ReadFile("/var/lib/dpkg/status")
	osRelease, _ := os.ReadFile("/etc/os-release")
	apt, _ := os.ReadFile("/usr/bin/apt")
	ls, _ := os.ReadFile("/bin/ls")
	l1 := tarDir(t, "", map[string][]byte{
		"var/lib/dpkg/status": status, "etc/os-release": osRelease, "usr/bin/apt": apt, "usr/bin/ls": ls,
		"app/node_modules/left-pad/package.json": []byte(`{"name":"left-pad","version":"1.3.0"}`),
	})
	// layer 2: a Go binary with an old golang.org/x/net, node_modules from the npm registry with
	// an old lodash, planted secrets, and the EICAR test file
	project := npmInstall(t, "lodash@4.17.15")
	key := func() []byte {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKCS8PrivateKey(priv)
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}()
	const awsID = "AKIAQ7HJ3RWZ5TXK2LMV"
	const awsSecret = "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"
	l2Files := map[string][]byte{
		"app/server":           buildGoBinary(t),
		"app/.env":             []byte("AWS_ACCESS_KEY_ID=" + awsID + "\nAWS_SECRET_ACCESS_KEY=" + awsSecret + "\n"),
		"root/.ssh/id_ed25519": key,
		"app/eicar.com":        []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`),
	}
	// put node_modules under app/ with the rest of layer 2
	appDir := t.TempDir()
	os.MkdirAll(filepath.Join(appDir, "app"), 0o755)
	os.Rename(filepath.Join(project, "node_modules"), filepath.Join(appDir, "app", "node_modules"))
	l2 := tarDir(t, appDir, l2Files)
	// layer 3: deletes left-pad, adds another package
	l3 := tarDir(t, "", map[string][]byte{
		"app/node_modules/.wh.left-pad":             nil,
		"app/node_modules/later-added/package.json": []byte(`{"name":"later-added","version":"2.0.0"}`),
	})
	ref := gh.addr + "/team/scanned:v1"
	run(t, nil, crane, "append", "--insecure", "--oci-empty-base", "-f", l1, "-t", ref)
	for _, l := range []string{l2, l3} {
		run(t, nil, crane, "append", "--insecure", "-b", ref, "-f", l, "-t", ref)
	}
	d := strings.TrimSpace(run(t, nil, crane, "mutate", "--insecure", "--set-platform", "linux/amd64", ref, "-t", ref))
	_, digest, _ := strings.Cut(d, "@")
	var m struct{ Layers []struct{ Digest string } }
	json.Unmarshal([]byte(run(t, nil, crane, "manifest", "--insecure", ref)), &m)
	if len(m.Layers) != 3 {
		t.Fatalf("image has %d layers, want 3", len(m.Layers))
	}
	layer1, layer2, layer3 := m.Layers[0].Digest, m.Layers[1].Digest, m.Layers[2].Digest

	r, body := waitScan(t, gh, digest, func(r scanReport) bool {
		return r.Database.Version != "" && len(r.Vulnerabilities) > 0 && r.Verdict != nil
	})
	if !r.Complete || r.Error != "" {
		t.Fatalf("scan incomplete or failed: %s", body)
	}
	for _, secret := range []string{awsSecret, awsID, string(key[40:80])} {
		if strings.Contains(string(body), secret) {
			t.Fatalf("the scan report holds a secret's value")
		}
	}
	pkgs := map[string]struct{ Ecosystem, Name, Version, Path, Layer string }{}
	debian := 0
	for _, p := range r.Result.Inventory.Packages {
		pkgs[p.Name] = p
		if strings.HasPrefix(p.Ecosystem, "Debian") && p.Layer == layer1 && p.Path == "var/lib/dpkg/status" {
			debian++
		}
	}
	if debian < 50 {
		t.Errorf("%d Debian packages from layer 1, want this machine's (hundreds)", debian)
	}
	for name, want := range map[string]struct{ version, path, layer string }{
		"golang.org/x/net": {"0.30.0", "app/server", layer2},
		"lodash":           {"4.17.15", "app/node_modules/lodash/package.json", layer2},
		"later-added":      {"2.0.0", "app/node_modules/later-added/package.json", layer3},
	} {
		p, ok := pkgs[name]
		if !ok || p.Version != want.version || p.Path != want.path || p.Layer != want.layer {
			t.Errorf("package %s = %+v, want %+v", name, p, want)
		}
	}
	if p, ok := pkgs["left-pad"]; ok {
		t.Errorf("left-pad was deleted in layer 3 but is reported: %+v", p)
	}

	vulns := map[string]struct {
		ID, Severity, Package, Installed, Fixed, Path, Layer string
		Aliases                                              []string
	}{}
	for _, v := range r.Vulnerabilities {
		vulns[v.ID+" "+v.Package] = v // one per (id, package): binary packages can share a vulnerable source
	}
	for id, want := range map[string]struct{ pkg, installed, fixed, path, layer string }{
		"CVE-2024-45338":       {"golang.org/x/net", "0.30.0", "0.33.0", "app/server", layer2},
		"CVE-2020-8203":        {"lodash", "4.17.15", "4.17.19", "app/node_modules/lodash/package.json", layer2},
		"DEBIAN-CVE-2011-3374": {"apt", pkgs["apt"].Version, "", "var/lib/dpkg/status", layer1},
	} {
		v, ok := vulns[id+" "+want.pkg]
		if !ok || v.Package != want.pkg || v.Installed != want.installed || v.Fixed != want.fixed || v.Path != want.path || v.Layer != want.layer {
			t.Errorf("vulnerability %s = %+v, want %+v", id, v, want)
		}
	}
	if v := vulns["CVE-2024-45338 golang.org/x/net"]; strings.Join(v.Aliases, ",") != "GHSA-w32m-9786-jp63,GO-2024-3333" {
		t.Errorf("x/net aliases not merged: %v", v.Aliases)
	}

	findings := map[string]struct{ Kind, ID, Severity, Title, Path, Layer, Fingerprint string }{}
	for _, f := range r.Result.Findings {
		findings[f.ID+" "+f.Path] = f
	}
	for _, want := range []struct{ id, path, layer string }{
		{"GH-SECRET-PRIVATEKEY", "root/.ssh/id_ed25519", layer2},
		{"GH-SECRET-AWSACCESSKEY", "app/.env", layer2},
		{"GH-MALWARE", "app/eicar.com", layer2},
		{"GH-CFG-ROOT", "config:User", ""},
		{"GH-CFG-PKG-MANAGER", "usr/bin/apt", layer1},
	} {
		f, ok := findings[want.id+" "+want.path]
		if !ok || f.Layer != want.layer {
			t.Errorf("finding %s at %s (layer %s) missing; findings: %+v", want.id, want.path, want.layer, r.Result.Findings)
		}
	}
	// the admission decision is recorded: quarantined, and it says why
	rules := map[string]string{}
	for _, d := range r.Verdict.Decision.Deny {
		rules[d.Rule] = d.Message
	}
	if r.Verdict.State != "quarantined" || r.Verdict.Decision.Allow || rules["GH-POL-MALWARE"] == "" || rules["GH-POL-SECRET"] == "" ||
		!strings.Contains(rules["GH-POL-HIGH-FIXABLE"], "CVE-2020-8203 (high, fixed in 4.17.19) in lodash 4.17.15 at app/node_modules/lodash/package.json") {
		t.Errorf("verdict: %+v", r.Verdict)
	}

	// the SBOM is attached as a referrer, found by oras, and valid CycloneDX
	out := run(t, nil, oras, "discover", "--plain-http", "--format", "json", gh.addr+"/team/scanned@"+digest)
	var disc map[string]any
	json.Unmarshal([]byte(out), &disc)
	var sbomDigest, spdxDigest string
	for _, k := range []string{"referrers", "manifests"} {
		refs, _ := disc[k].([]any)
		for _, x := range refs {
			e := x.(map[string]any)
			switch e["artifactType"] {
			case "application/vnd.cyclonedx+json":
				sbomDigest, _ = e["digest"].(string)
			case "application/spdx+json":
				spdxDigest, _ = e["digest"].(string)
			}
		}
	}
	if spdxDigest == "" {
		t.Errorf("oras discover shows no SPDX SBOM:\n%s", out)
	}
	if sbomDigest == "" {
		t.Fatalf("oras discover shows no CycloneDX SBOM:\n%s", out)
	}
	pulled := t.TempDir()
	runDir(t, pulled, nil, oras, "pull", "--plain-http", gh.addr+"/team/scanned@"+sbomDigest)
	doc, err := os.ReadFile(filepath.Join(pulled, "sbom.cdx.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sbomtest.ValidateCycloneDX(t, doc); err != nil {
		t.Fatalf("the SBOM does not validate: %v", err)
	}
	if !strings.Contains(string(doc), "pkg:npm/lodash@4.17.15") {
		t.Errorf("the SBOM lacks lodash")
	}

	// a database update re-matches the stored inventory without reading a layer
	readBefore := metricValue(t, gh, "gatehouse_scan_layer_bytes_read_total")
	if readBefore == 0 {
		t.Fatal("the scan read no layer bytes?")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(zipDir(t, "../attest/vulndb/testdata/osv", "testdata/osv-update"))
	}))
	defer srv.Close()
	run(t, nil, gatehouseBin, "db", "update", "--config", gh.config, "--from", srv.URL+"/npm/all.zip")
	r, _ = waitScan(t, gh, digest, func(r scanReport) bool {
		for _, v := range r.Vulnerabilities {
			if v.ID == "CVE-2020-28500" {
				return true
			}
		}
		return false
	})
	if after := metricValue(t, gh, "gatehouse_scan_layer_bytes_read_total"); after != readBefore {
		t.Errorf("re-matching read %v layer bytes", after-readBefore)
	}
	t.Logf("scanned %s in %s: %d packages, %d vulnerabilities, %d findings", digest, r.Duration, len(r.Result.Inventory.Packages), len(r.Vulnerabilities), len(r.Result.Findings))
	gh.healthy(t)
}
