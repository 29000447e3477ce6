//go:build integration

package integration

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Issue 9, class 2: package metadata that the real tools load but a scanner reading it its own
// way misses. Each case writes an image's files into a directory, runs the tool that loads them
// there (node and npm, python3's importlib.metadata and pip, dpkg-query) and checks that it sees
// the vulnerable version, then pulls the image through an enforcing Gatehouse and checks the
// refusal: 403 DENIED naming the advisory, or, where Gatehouse cannot read the file as the tool
// does, naming the file as unread.

const (
	lodashAdvisory   = "CVE-2020-8203"        // lodash < 4.17.19 (attest/vulndb/testdata/osv)
	requestsAdvisory = "CVE-2018-18074"       // requests < 2.20.0 (testdata/osv-pkg)
	glibcAdvisory    = "DEBIAN-CVE-2023-4911" // glibc < 2.36-9+deb12u3 in Debian 12 (testdata/osv-pkg)
)

// evasion is one image: its files, the real tool's view of them, and what the refusal names.
type evasion struct {
	name  string
	build func(t *testing.T, dir string)
	check func(t *testing.T, dir string) // fails unless the tool loads the vulnerable version
	want  []string                       // parts of the refusal's message
	// unread: the refusal is the scan's incompleteness (GH-POL-SCAN-INCOMPLETE), the file named,
	// where Gatehouse cannot read the metadata as the tool does; otherwise it must not be
	unread bool
}

// denyRules are the rules of a refusal's detail.
func denyRules(t *testing.T, r response) []string {
	var b struct {
		Errors []struct {
			Detail struct{ Deny []struct{ Rule string } }
		}
	}
	json.Unmarshal(r.body, &b)
	var rules []string
	for _, e := range b.Errors {
		for _, d := range e.Detail.Deny {
			rules = append(rules, d.Rule)
		}
	}
	return rules
}

func TestScanEvasionPackages(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	pkgDB(t, gh)

	var cases []evasion
	cases = append(cases, npmEvasions(t)...)
	cases = append(cases, pypiEvasions()...)
	cases = append(cases, debianEvasions()...)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.build(t, dir)
			c.check(t, dir)
			repo := fmt.Sprintf("library/evasion%d", i)
			if strings.Contains(c.name, ",") {
				t.Fatal("crane append -f takes a comma-separated list: no comma in a case's name (its temporary directory)")
			}
			digest := pushLayer(t, crane, up.addr+"/"+repo+":v1", treeTar(t, dir))
			msg, rules := pullRefused(t, gh, repo, digest, c.want, c.unread)
			t.Logf("refused (%s): %.300s", rules, msg)
		})
	}
	gh.healthy(t)
}

// pkgDB imports into gh's vulnerability database the advisories of the evasion tests: the gate's
// (attest/vulndb/testdata/osv) and the package ecosystems' (testdata/osv-pkg).
func pkgDB(t *testing.T, gh *server) {
	t.Helper()
	osvZip := filepath.Join(t.TempDir(), "all.zip")
	os.WriteFile(osvZip, zipDir(t, "../attest/vulndb/testdata/osv", "testdata/osv-pkg"), 0o644)
	run(t, nil, gatehouseBin, "db", "update", "--config", gh.config, "--from", osvZip)
}

// pullRefused GETs repo@digest through gh's docker.io pull route and checks the refusal: 403
// DENIED, its message naming each of want, and the scan incomplete (GH-POL-SCAN-INCOMPLETE among
// the deny rules) exactly when incomplete says so. It returns the message and the rules.
func pullRefused(t *testing.T, gh *server, repo, digest string, want []string, incomplete bool) (msg, rules string) {
	t.Helper()
	r := do(t, gh, "GET", "/v2/docker.io/"+repo+"/manifests/"+digest, map[string]string{"Accept": acceptAll}, nil)
	code, msg := r.ociError()
	if r.status != http.StatusForbidden || code != "DENIED" {
		t.Fatalf("status %d %s, want 403 DENIED: %.400s\n%s", r.status, code, r.body, tail(gh.log.String(), 10))
	}
	for _, w := range want {
		if !strings.Contains(msg, w) {
			t.Errorf("the refusal does not name %q: %s", w, msg)
		}
	}
	rules = strings.Join(denyRules(t, r), ",")
	if got := strings.Contains(rules, "GH-POL-SCAN-INCOMPLETE"); got != incomplete {
		t.Errorf("deny rules %s: the scan incomplete %v, want %v", rules, got, incomplete)
	}
	return msg, rules
}

// pushLayer pushes a one-layer image for linux/amd64 and returns its digest.
func pushLayer(t *testing.T, crane, ref, layer string) string {
	t.Helper()
	run(t, nil, crane, "append", "--insecure", "--oci-empty-base", "-f", layer, "-t", ref)
	out := strings.TrimSpace(run(t, nil, crane, "mutate", "--insecure", "--set-platform", "linux/amd64", ref, "-t", ref))
	_, d, _ := strings.Cut(out, "@")
	return d
}

// treeTar writes a tar of a directory as it is: files, directories and symlinks.
func treeTar(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		info, err := os.Lstat(path)
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(path)
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			b, _ := os.ReadFile(path)
			tw.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// --- npm ---

// npmEvasions: the real lodash 4.17.15 from the npm registry, installed under app/, its
// package.json edited. Node loads it (require('lodash').VERSION is the code's own version) and
// npm lists it; Gatehouse takes the identity from the node_modules path and the version as
// npm's semver reads it.
func npmEvasions(t *testing.T) []evasion {
	project := npmInstall(t, "lodash@4.17.15")
	realPJ, err := os.ReadFile(filepath.Join(project, "node_modules/lodash/package.json"))
	if err != nil {
		t.Fatal(err)
	}
	realLock, _ := os.ReadFile(filepath.Join(project, "package-lock.json"))
	pkgJSON := `{"name":"app","version":"1.0.0","dependencies":{"lodash":"^4.17.0"}}`
	// app installs lodash at dir, with its package.json replaced by edit's result
	app := func(dir, at string, edit func(string) string) {
		copyTree(t, filepath.Join(project, "node_modules/lodash"), filepath.Join(dir, at))
		writeFile(t, filepath.Join(dir, at, "package.json"), []byte(edit(string(realPJ))))
		writeFile(t, filepath.Join(dir, "app/package.json"), []byte(pkgJSON))
	}
	edited := func(name string, edit func(string) string) evasion {
		return evasion{
			name:  "npm: " + name,
			build: func(t *testing.T, dir string) { app(dir, "app/node_modules/lodash", edit) },
			check: nodeLoadsLodash,
			want:  []string{lodashAdvisory, "lodash", "app/node_modules/lodash/package.json"},
		}
	}
	setName := func(name string) func(string) string {
		return func(s string) string { return strings.Replace(s, `"name": "lodash"`, `"name": `+name, 1) }
	}
	setVersion := func(v string) func(string) string {
		return func(s string) string { return strings.Replace(s, `"version": "4.17.15"`, `"version": `+v, 1) }
	}
	return []evasion{
		edited(`an extra "Version": "4.17.21" key after "version"`, func(s string) string {
			return strings.Replace(s, `"version": "4.17.15",`, `"version": "4.17.15", "Version": "4.17.21",`, 1)
		}),
		edited("a UTF-8 byte order mark", func(s string) string { return "\ufeff" + s }),
		edited(`the name "Lodash"`, setName(`"Lodash"`)),
		edited(`the name "lodash-x"`, setName(`"lodash-x"`)),
		edited(`the name " lodash"`, setName(`" lodash"`)),
		edited("no name", func(s string) string { return strings.Replace(s, `"name": "lodash",`, "", 1) }),
		edited(`the version "=4.17.15"`, setVersion(`"=4.17.15"`)),
		edited(`the version "v4.17.15"`, setVersion(`"v4.17.15"`)),
		edited(`the version " 4.17.015 " (npm's loose semver: 4.17.15)`, setVersion(`" 4.17.015 "`)),
		{
			// Node resolves node_modules/lodash through the link: its identity is the link's name
			name: "npm: node_modules/lodash a symlink to a package named otherwise",
			build: func(t *testing.T, dir string) {
				app(dir, "app/vendor/lodash-x", setName(`"lodash-x"`))
				os.MkdirAll(filepath.Join(dir, "app/node_modules"), 0o755)
				if err := os.Symlink("../vendor/lodash-x", filepath.Join(dir, "app/node_modules/lodash")); err != nil {
					t.Fatal(err)
				}
			},
			check: nodeLoadsLodash,
			want:  []string{lodashAdvisory, "app/node_modules/lodash/package.json"},
		},
		{
			// JSON.parse keeps the last of two keys; a reader that keeps the first would see
			// 4.17.21: Gatehouse refuses to choose
			name: "npm: two version keys",
			build: func(t *testing.T, dir string) {
				app(dir, "app/node_modules/lodash", func(s string) string { return strings.Replace(s, "{", `{"version": "4.17.21",`, 1) })
			},
			check:  nodeLoadsLodash,
			want:   []string{"could not read everything", "app/node_modules/lodash/package.json", `2 "version" keys`},
			unread: true,
		},
		{
			// only a lock: npm ci installs what its exact keys say (4.17.15); Go's decoder would
			// read the capitalised key
			name: `npm: a package-lock.json with an extra "Version": "4.17.21" key`,
			build: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "app/package.json"), []byte(pkgJSON))
				lock := strings.Replace(string(realLock), `"version": "4.17.15",`, `"version": "4.17.15", "Version": "4.17.21",`, 1)
				writeFile(t, filepath.Join(dir, "app/package-lock.json"), []byte(lock))
			},
			check: func(t *testing.T, dir string) {
				ci := t.TempDir()
				copyTree(t, filepath.Join(dir, "app"), ci)
				runDir(t, ci, nil, tool(t, "npm"), "ci", "--no-audit", "--no-fund", "--silent", "--ignore-scripts")
				nodeLoadsLodashAt(t, ci)
			},
			want:   []string{"could not read everything", "app/package-lock.json", `"Version"`},
			unread: true,
		},
	}
}

// nodeLoadsLodash checks that Node loads lodash 4.17.15 from dir/app and that npm lists it at a
// version its semver reads as 4.17.15.
func nodeLoadsLodash(t *testing.T, dir string) { nodeLoadsLodashAt(t, filepath.Join(dir, "app")) }

func nodeLoadsLodashAt(t *testing.T, app string) {
	t.Helper()
	os.Remove(filepath.Join(app, "node_modules/.package-lock.json")) // npm ls reads the package.json files
	script := `const l = require('lodash'); const pj = require('lodash/package.json');
		console.log(JSON.stringify({code: l.VERSION, version: pj.version, at: require.resolve('lodash')}))`
	out := runDir(t, app, nil, tool(t, "node"), "-e", script)
	var got struct{ Code, Version, At string }
	json.Unmarshal([]byte(out), &got)
	if got.Code != "4.17.15" {
		t.Fatalf("node loads lodash %q from %s (package.json says %q), want the code of 4.17.15", got.Code, got.At, got.Version)
	}
	ls := runDir(t, app, nil, tool(t, "npm"), "ls", "--json")
	var tree struct {
		Dependencies map[string]struct{ Version string }
	}
	json.Unmarshal([]byte(ls), &tree)
	v := tree.Dependencies["lodash"].Version
	semver := `const s = require(require('path').join(process.argv[1], 'node_modules/semver')); console.log(s.eq(process.argv[2], '4.17.15', true))`
	npmDir := filepath.Dir(filepath.Dir(resolvedTool(t, "npm")))
	if eq := strings.TrimSpace(runDir(t, app, nil, tool(t, "node"), "-e", semver, npmDir, v)); eq != "true" {
		t.Fatalf("npm ls lists lodash %q, which npm's semver does not read as 4.17.15\n%s", v, ls)
	}
	t.Logf("node loads lodash %s from %s (package.json version %q); npm ls: %q", got.Code, got.At, got.Version, v)
}

// resolvedTool is a tool's real path (npm's bin is a link into its package).
func resolvedTool(t *testing.T, name string) string {
	p, err := filepath.EvalSymlinks(tool(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// --- PyPI ---

// pypiEvasions: requests 2.19.1 in a site-packages directory (its code says so; the registry
// is not reachable here, so the package is a stand-in with the real name and version), its
// METADATA as each case writes it.
func pypiEvasions() []evasion {
	const sp = "usr/lib/python3/site-packages"
	dist := func(info, metadata string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, sp, "requests/__init__.py"), []byte("__version__ = '2.19.1'\n"))
			writeFile(t, filepath.Join(dir, sp, info, "METADATA"), []byte(metadata))
		}
	}
	head := "Metadata-Version: 2.1\nName: requests\n"
	body := "\nRequests is an HTTP library.\n"
	want := []string{requestsAdvisory, "requests", "2.19.1"}
	check := func(pipName string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { pythonSeesRequests(t, filepath.Join(dir, sp), pipName) }
	}
	return []evasion{
		{"PyPI: a 70 KB Summary line", dist("requests-2.19.1.dist-info", head+"Summary: "+strings.Repeat("HTTP for Humans. ", 4200)+"\nVersion: 2.19.1\n"+body), check("requests"), want, false},
		{"PyPI: Version on a folded line", dist("requests-2.19.1.dist-info", head+"Version:\n 2.19.1\n"+body), check("requests"), want, false},
		{"PyPI: a line of spaces inside the headers", dist("requests-2.19.1.dist-info", head+"Summary: HTTP\n    \nVersion: 2.19.1\n"+body), check("requests"), want, false},
		{"PyPI: CR line ends", dist("requests-2.19.1.dist-info", strings.ReplaceAll(head+"Version: 2.19.1\n"+body, "\n", "\r")), check("requests"), want, false},
		{"PyPI: the dist-info directory names it and METADATA names another",
			dist("requests-2.19.1.dist-info", "Metadata-Version: 2.1\nName: quests\nVersion: 2.19.1\n"+body), check("quests"), want, false},
		{"PyPI: a symlinked dist-info directory", func(t *testing.T, dir string) {
			dist("requests-meta", head+"Version:\n\t2.19.1\n"+body)(t, dir)
			os.MkdirAll(filepath.Join(dir, sp), 0o755)
			if err := os.Symlink("requests-meta", filepath.Join(dir, sp, "requests-2.19.1.dist-info")); err != nil {
				t.Fatal(err)
			}
		}, check("requests"), want, false},
		{"PyPI: METADATA that begins with a BOM (Python reads no header from it)",
			dist("requests-2.19.1.dist-info", "\ufeff"+head+"Version: 2.19.1\n"+body),
			func(t *testing.T, dir string) {
				out := pythonMetadata(t, filepath.Join(dir, sp))
				if !strings.Contains(out, "requests None 2.19.1") {
					t.Fatalf("importlib.metadata: %s", out)
				}
			},
			[]string{"could not read everything", "requests-2.19.1.dist-info/METADATA", "no Version header"}, true},
	}
}

// pythonMetadata prints, for each distribution importlib.metadata finds in sp, its name as
// found, its version and the code's __version__.
func pythonMetadata(t *testing.T, sp string) string {
	t.Helper()
	script := `import sys, importlib.metadata as m
sys.path.insert(0, sys.argv[1])
import requests
try:
    v = m.version('requests')
except Exception as e:
    v = repr(e)
print('requests', None if v is None else v.strip(), requests.__version__)`
	return runDir(t, "", nil, tool(t, "python3"), "-c", script, sp)
}

// pythonSeesRequests checks that importlib.metadata.version('requests') is 2.19.1 and that pip
// lists the distribution (under pipName) at 2.19.1.
func pythonSeesRequests(t *testing.T, sp, pipName string) {
	t.Helper()
	if out := pythonMetadata(t, sp); strings.TrimSpace(out) != "requests 2.19.1 2.19.1" {
		t.Fatalf("importlib.metadata and the code: %q, want requests 2.19.1", out)
	}
	out := runDir(t, "", nil, tool(t, "python3"), "-m", "pip", "list", "--disable-pip-version-check", "--path", sp, "--format", "json")
	var list []struct{ Name, Version string }
	json.Unmarshal([]byte(out), &list)
	for _, d := range list {
		if d.Name == pipName && d.Version == "2.19.1" {
			t.Logf("importlib.metadata: requests 2.19.1; pip list: %s %s", d.Name, d.Version)
			return
		}
	}
	t.Fatalf("pip list --path %s: %s, want %s 2.19.1", sp, out, pipName)
}

// --- Debian ---

const (
	debianOSRelease = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n"
	libc6           = "Package: libc6\nStatus: install ok installed\nPriority: optional\nSection: libs\nInstalled-Size: 12986\nMaintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>\nArchitecture: amd64\nMulti-Arch: same\nSource: glibc\nVersion: 2.36-9+deb12u1\nDepends: libgcc-s1\nDescription: GNU C Library: Shared libraries\n Contains the standard libraries that are used by nearly all programs on\n the system.\n"
	baseFiles       = "Package: base-files\nStatus: install ok installed\nPriority: required\nMaintainer: Santiago Vila <sanvila@debian.org>\nArchitecture: amd64\nVersion: 12.4+deb12u5\nDescription: Debian base system miscellaneous files\n"
)

// debianEvasions: libc6 2.36-9+deb12u1 (glibc before the fix of CVE-2023-4911) in a dpkg
// database as each case writes it.
func debianEvasions() []evasion {
	db := func(status string, extra map[string]string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "var/lib/dpkg/status"), []byte(status))
			writeFile(t, filepath.Join(dir, "var/lib/dpkg/available"), nil)
			os.MkdirAll(filepath.Join(dir, "var/lib/dpkg/updates"), 0o755)
			if _, ok := extra["-etc/os-release"]; !ok {
				writeFile(t, filepath.Join(dir, "etc/os-release"), []byte(debianOSRelease))
			}
			for p, b := range extra {
				if !strings.HasPrefix(p, "-") {
					writeFile(t, filepath.Join(dir, p), []byte(b))
				}
			}
		}
	}
	want := []string{glibcAdvisory, "libc6", "2.36-9+deb12u1"}
	check := func(status string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { dpkgSeesLibc(t, dir, status) }
	}
	release := func(file string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			dpkgSeesLibc(t, dir, "ii ")
			if out := runDir(t, dir, nil, "sh", "-c", `if [ -f etc/os-release ]; then . ./etc/os-release; elif [ -f usr/lib/os-release ]; then . ./usr/lib/os-release; fi; echo "$ID $VERSION_ID $(cat etc/debian_version 2>/dev/null)"`); !strings.Contains(out, "12") {
				t.Fatalf("the release, read as os-release(5) says (%s): %q", file, out)
			}
		}
	}
	fixed := strings.Replace(libc6, "2.36-9+deb12u1", "2.36-9+deb12u10", 1)
	return []evasion{
		{"Debian: an earlier stanza's Status with two spaces",
			db(strings.Replace(baseFiles, "install ok installed", "install ok  installed", 1)+"\n"+libc6, nil), check("ii "), want, false},
		{"Debian: an earlier stanza's Status with a tab",
			db(strings.Replace(baseFiles, "install ok installed", "install\tok installed", 1)+"\n"+libc6, nil), check("ii "), want, false},
		{"Debian: libc6 half-configured (its files are on disk)",
			db(baseFiles+"\n"+strings.Replace(libc6, "ok installed", "ok half-configured", 1), nil), check("iF "), want, false},
		{"Debian: libc6 unpacked and not configured",
			db(baseFiles+"\n"+strings.Replace(libc6, "ok installed", "ok unpacked", 1), nil), check("iU "), want, false},
		{"Debian: the release only in usr/lib/os-release",
			db(baseFiles+"\n"+libc6, map[string]string{"-etc/os-release": "", "usr/lib/os-release": debianOSRelease}), release("usr/lib/os-release"), want, false},
		{"Debian: the release only in etc/debian_version",
			db(baseFiles+"\n"+libc6, map[string]string{"-etc/os-release": "", "etc/debian_version": "12.4\n"}), release("etc/debian_version"), want, false},
		{"Debian: the journal (updates/0000) holds the vulnerable record over a fixed one",
			db(baseFiles+"\n"+fixed, map[string]string{"var/lib/dpkg/updates/0000": libc6}), check("ii "), want, false},
		{"Debian: names in capitals (dpkg lower-cases the package)",
			db(baseFiles+"\n"+strings.NewReplacer("Package: libc6", "Package: LIBC6", "Source: glibc", "Source: GLIBC").Replace(libc6), nil), check("ii "), want, false},
		{"Debian: os-release naming a release no advisory covers (VERSION_ID 99)",
			db(baseFiles+"\n"+libc6, map[string]string{"-etc/os-release": "", "etc/os-release": strings.Replace(debianOSRelease, `VERSION_ID="12"`, `VERSION_ID="99"`, 1)}),
			check("ii "), []string{"no advisory for Debian:99", "cannot be ruled out"}, false},
		{"Debian: a Version cut by a NUL as dpkg's C strings cut it",
			db(baseFiles+"\n"+strings.Replace(libc6, "2.36-9+deb12u1", "2.36-9+deb12u1\x00+deb12u10", 1), nil), check("ii "), want, false},
	}
}

// dpkgSeesLibc checks that dpkg-query lists libc6 2.36-9+deb12u1, from the source glibc, with
// the given status abbreviation.
func dpkgSeesLibc(t *testing.T, dir, abbrev string) {
	t.Helper()
	out := run(t, nil, tool(t, "dpkg-query"), "--admindir="+filepath.Join(dir, "var/lib/dpkg"), "-W", "-f", `${Package} ${Version} ${db:Status-Abbrev}|${source:Package}\n`)
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "libc6 2.36-9+deb12u1 "+abbrev) && strings.EqualFold(line[strings.LastIndexByte(line, '|')+1:], "glibc") {
			t.Logf("dpkg-query: %s", line)
			return
		}
	}
	t.Fatalf("dpkg-query does not list libc6 2.36-9+deb12u1 (%s):\n%s", abbrev, out)
}

// TestScanDpkgStatusBomb: a dpkg status of a million packages (a few MiB gzipped) is read up to
// the bound and refused as incomplete, naming the file, with the server's peak resident memory
// under 256 MiB and the scan done in bounded time.
func TestScanDpkgStatusBomb(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	gateDB(t, gh)

	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "status"))
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range 1_000_000 {
		fmt.Fprintf(w, "Package: pkg%07d\nStatus: install ok installed\nPriority: optional\nMaintainer: m <m@example.org>\nArchitecture: amd64\nVersion: 1.0-%d\nDescription: package %d\n\n", i, i, i)
	}
	w.Flush()
	size, _ := f.Seek(0, io.SeekCurrent)
	f.Close()
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "var/lib/dpkg"), 0o755)
	os.Rename(filepath.Join(dir, "status"), filepath.Join(root, "var/lib/dpkg/status"))
	writeFile(t, filepath.Join(root, "etc/os-release"), []byte(debianOSRelease))
	digest := pushLayer(t, crane, up.addr+"/library/bomb:v1", treeTar(t, root))
	var m struct{ Layers []struct{ Size int64 } }
	json.Unmarshal([]byte(run(t, nil, crane, "manifest", "--insecure", up.addr+"/library/bomb@"+digest)), &m)

	start := time.Now()
	r := do(t, gh, "GET", "/v2/docker.io/library/bomb/manifests/"+digest, map[string]string{"Accept": acceptAll}, nil)
	took := time.Since(start)
	code, msg := r.ociError()
	rules := strings.Join(denyRules(t, r), ",")
	if r.status != http.StatusForbidden || code != "DENIED" || !strings.Contains(rules, "GH-POL-SCAN-INCOMPLETE") || !strings.Contains(msg, "var/lib/dpkg/status") {
		t.Fatalf("the bomb: %d %s %q, want 403 DENIED, the scan incomplete at var/lib/dpkg/status\n%s", r.status, code, msg, tail(gh.log.String(), 10))
	}
	report, body := waitScan(t, gh, digest, func(r scanReport) bool { return r.Verdict != nil })
	peak := vmHWM(t, gh.cmd.Process.Pid)
	t.Logf("a %d MiB status of 1,000,000 packages (%.1f MiB gzipped): refused in %s (%s scanning), %d packages listed, report %d KiB; peak RSS %.0f MiB (limit 256 MiB)",
		size>>20, float64(m.Layers[0].Size)/(1<<20), took.Round(time.Millisecond), report.Duration, len(report.Result.Inventory.Packages), len(body)>>10, peak)
	t.Logf("refusal: %.300s", msg)
	if peak >= 256 {
		t.Errorf("peak RSS %.0f MiB, want < 256 MiB", peak)
	}
	if took > 60*time.Second {
		t.Errorf("the scan took %s", took)
	}
	if !regexp.MustCompile(`more than \d+ (installed packages|package stanzas)`).MatchString(msg) {
		t.Errorf("the refusal does not say the bound was reached: %s", msg)
	}
	gh.healthy(t)
}

// TestScanEvasionDpkgAdminDir: an image whose config sets DPKG_ADMINDIR, with a vulnerable libc6
// in that database only (var/lib/dpkg lists it fixed): dpkg-query in the container, with that
// environment, lists the vulnerable version; Gatehouse refuses the image naming the advisory.
func TestScanEvasionDpkgAdminDir(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	pkgDB(t, gh)

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "etc/os-release"), []byte(debianOSRelease))
	writeFile(t, filepath.Join(dir, "var/lib/dpkg/status"), []byte(baseFiles+"\n"+strings.Replace(libc6, "2.36-9+deb12u1", "2.36-9+deb12u10", 1)))
	writeFile(t, filepath.Join(dir, "opt/dpkg/status"), []byte(baseFiles+"\n"+libc6))
	os.MkdirAll(filepath.Join(dir, "opt/dpkg/updates"), 0o755)
	writeFile(t, filepath.Join(dir, "opt/dpkg/available"), nil)
	// dpkg-query as the container's processes run it: DPKG_ADMINDIR=/opt/dpkg, inside the image root
	out := run(t, []string{"DPKG_ADMINDIR=" + filepath.Join(dir, "opt/dpkg")}, tool(t, "dpkg-query"), "-W", "-f", `${Package} ${Version}\n`)
	if !strings.Contains(out, "libc6 2.36-9+deb12u1\n") {
		t.Fatalf("dpkg-query with DPKG_ADMINDIR: %q", out)
	}
	t.Logf("dpkg-query with DPKG_ADMINDIR=/opt/dpkg: %q", out)

	ref := up.addr + "/library/admindir:v1"
	pushLayer(t, crane, ref, treeTar(t, dir))
	outRef := strings.TrimSpace(run(t, nil, crane, "mutate", "--insecure", "--env", "DPKG_ADMINDIR=/opt/dpkg", ref, "-t", ref))
	_, digest, _ := strings.Cut(outRef, "@")
	r := do(t, gh, "GET", "/v2/docker.io/library/admindir/manifests/"+digest, map[string]string{"Accept": acceptAll}, nil)
	code, msg := r.ociError()
	if r.status != http.StatusForbidden || code != "DENIED" || !strings.Contains(msg, glibcAdvisory) || !strings.Contains(msg, "opt/dpkg/status") {
		t.Fatalf("status %d %s %q; want 403 DENIED naming %s at opt/dpkg/status\n%s", r.status, code, msg, glibcAdvisory, tail(gh.log.String(), 10))
	}
	t.Logf("refused: %.300s", msg)
	gh.healthy(t)
}
