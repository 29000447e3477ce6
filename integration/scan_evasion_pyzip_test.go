//go:build integration

package integration

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestScanEvasionPyZip: Python imports from a zip archive on sys.path, and importlib.metadata
// and pip read the distributions at its root, whatever the archive is named and whatever data
// precedes it (zipfile finds an archive from its end). Each image puts requests 2.19.1 in such
// an archive, on sys.path as the image's Python puts it there (a .pth line in site-packages, a
// .pyz run as a program, PYTHONPATH in the image config); python3's importlib.metadata and pip
// list, run on the image's files, report 2.19.1; Gatehouse refuses the image naming
// CVE-2018-18074 and requests.
func TestScanEvasionPyZip(t *testing.T) {
	crane := tool(t, "crane")
	python := tool(t, "python3")
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	pkgDB(t, gh)

	const sp = "usr/lib/python3/site-packages"
	meta := "Metadata-Version: 2.1\nName: requests\nVersion: 2.19.1\n\nRequests is an HTTP library.\n"
	deps := pyZipOf(t, map[string]string{
		"requests/__init__.py":               "__version__ = '2.19.1'\n",
		"requests-2.19.1.dist-info/METADATA": meta,
		"requests-2.19.1.dist-info/RECORD":   "",
	})
	want := []string{requestsAdvisory, "requests", "2.19.1"}
	cases := []struct {
		name  string
		build func(t *testing.T, dir string)
		check func(t *testing.T, dir string)
		env   []string // set in the image config
	}{
		{"a zip named by an absolute .pth line", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, sp, "deps.pth"), []byte("/opt/deps.zip\n"))
			writeFile(t, filepath.Join(dir, "opt/deps.zip"), deps)
		}, func(t *testing.T, dir string) {
			pythonSeesRequests(t, filepath.Join(dir, "opt/deps.zip"), "requests")
			// the .pth line as the image's Python reads it, the image's root at dir
			site := t.TempDir()
			writeFile(t, filepath.Join(site, "deps.pth"), []byte(filepath.Join(dir, "opt/deps.zip")+"\n"))
			pythonOnSysPath(t, dir, nil, "-S", "-c", pySysPathScript, dir, site)
		}, nil},
		{"the same zip named deps.dat by a relative .pth line", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, sp, "deps.pth"), []byte("../../../../opt/deps.dat\n"))
			writeFile(t, filepath.Join(dir, "opt/deps.dat"), deps)
		}, func(t *testing.T, dir string) {
			pythonSeesRequests(t, filepath.Join(dir, "opt/deps.dat"), "requests")
			// the image's own .pth file, unchanged (its line resolves to /opt/deps.dat in the image)
			pythonOnSysPath(t, dir, nil, "-S", "-c", pySysPathScript, dir, filepath.Join(dir, sp))
		}, nil},
		{"a .pyz program made by zipapp", func(t *testing.T, dir string) {
			src := t.TempDir()
			writeFile(t, filepath.Join(src, "__main__.py"), []byte(pyMainScript))
			writeFile(t, filepath.Join(src, "requests/__init__.py"), []byte("__version__ = '2.19.1'\n"))
			writeFile(t, filepath.Join(src, "requests-2.19.1.dist-info/METADATA"), []byte(meta))
			os.MkdirAll(filepath.Join(dir, "usr/local/bin"), 0o755)
			run(t, nil, python, "-m", "zipapp", src, "-o", filepath.Join(dir, "usr/local/bin/app.pyz"), "-p", "/usr/bin/env python3")
		}, func(t *testing.T, dir string) {
			pyz := filepath.Join(dir, "usr/local/bin/app.pyz")
			if b, _ := os.ReadFile(pyz); !bytes.HasPrefix(b, []byte("#!/usr/bin/env python3\n")) {
				t.Fatalf("zipapp wrote no shebang before the archive: %.40q", b)
			}
			pythonSeesRequests(t, pyz, "requests")
			// the program run as the image runs it: its shebang, the archive sys.path[0]
			pythonOnSysPath(t, dir, nil, pyz, dir)
		}, nil},
		{"a zip after binary data named lib.bin on PYTHONPATH", func(t *testing.T, dir string) {
			prefix := bytes.Repeat([]byte("\x7fBLOB\x00\xff"), 512)
			writeFile(t, filepath.Join(dir, "opt/vendor/lib.bin"), append(prefix, deps...))
		}, func(t *testing.T, dir string) {
			lib := filepath.Join(dir, "opt/vendor/lib.bin")
			pythonSeesRequests(t, lib, "requests")
			pythonOnSysPath(t, dir, []string{"PYTHONPATH=" + lib}, "-c", pySysPathScript, dir, "")
		}, []string{"PYTHONPATH=/opt/vendor/lib.bin"}},
		{"a dist-info named 2.19.1 whose METADATA says 2.31.0 (pip lists the name's)", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, sp, "deps.pth"), []byte("/opt/deps.zip\n"))
			writeFile(t, filepath.Join(dir, "opt/deps.zip"), pyZipOf(t, map[string]string{
				"requests/__init__.py":               "__version__ = '2.19.1'\n",
				"requests-2.19.1.dist-info/METADATA": strings.Replace(meta, "2.19.1", "2.31.0", 1),
			}))
		}, func(t *testing.T, dir string) {
			z := filepath.Join(dir, "opt/deps.zip")
			out := runDir(t, "", nil, python, "-m", "pip", "list", "--disable-pip-version-check", "--path", z, "--format", "json")
			if !strings.Contains(out, `{"name": "requests", "version": "2.19.1"}`) {
				t.Fatalf("pip list --path %s: %s, want requests 2.19.1", z, out)
			}
			t.Logf("pip list: %s (importlib.metadata: %s)", strings.TrimSpace(out), strings.TrimSpace(pythonMetadata(t, z)))
		}, nil},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.build(t, dir)
			c.check(t, dir)
			repo := fmt.Sprintf("library/pyzip%d", i)
			ref := up.addr + "/" + repo + ":v1"
			digest := pushLayer(t, crane, ref, treeTar(t, dir))
			for _, e := range c.env {
				out := strings.TrimSpace(run(t, nil, crane, "mutate", "--insecure", "--env", e, ref, "-t", ref))
				_, digest, _ = strings.Cut(out, "@")
			}
			msg, rules := pullRefused(t, gh, repo, digest, want, false) // complete: the archive's metadata is read
			t.Logf("refused (%s): %.300s", rules, msg)
		})
	}
	gh.healthy(t)
}

// pyZipOf is a zip archive of files.
func pyZipOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, body := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(body))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pyMainScript reports what Python sees, the image's root (argv[1]) given: importlib.metadata's
// version of requests, the imported code's __version__ and file, the sys.path entries inside the
// root; then pip list (-v: with locations) over sys.path, on its own line.
const pyMainScript = `import sys, json, importlib.metadata as m
root = sys.argv[1]
import requests
print(json.dumps({'importlib': m.version('requests'), 'code': requests.__version__, 'file': requests.__file__,
                  'path': [p for p in sys.path if p.startswith(root)]}))
sys.stdout.flush()
from pip._internal.cli.main import main
main(['list', '-v', '--format', 'json', '--disable-pip-version-check'])
`

// pySysPathScript runs pyMainScript with argv[2] processed as a site directory (its .pth files
// read, as site.py reads site-packages) when it is not "", under python3 -S: the host's own
// site-packages (which has a requests of its own) come after it, for pip to be importable.
const pySysPathScript = `import sys
if sys.argv[2]:
    import site
    site.addsitedir(sys.argv[2])
    sys.path.extend(p for p in site.getsitepackages() if p not in sys.path)
del sys.argv[2]
` + pyMainScript

// pythonOnSysPath runs python3 (or a program, when args[0] is a path) and checks that what it
// puts on sys.path gives requests 2.19.1 to importlib.metadata, to the import system (the code is
// the archive's) and to pip list (at a location inside the image's root dir).
func pythonOnSysPath(t *testing.T, dir string, env []string, args ...string) {
	t.Helper()
	bin := tool(t, "python3")
	if filepath.IsAbs(args[0]) {
		bin, args = args[0], args[1:]
	}
	out := runDir(t, "", env, bin, args...)
	first, rest, _ := strings.Cut(strings.TrimSpace(out), "\n")
	var seen struct {
		Importlib, Code, File string
		Path                  []string
	}
	if err := json.Unmarshal([]byte(first), &seen); err != nil {
		t.Fatalf("python: %v: %s", err, out)
	}
	if seen.Importlib != "2.19.1" || seen.Code != "2.19.1" || !strings.HasPrefix(seen.File, dir) {
		t.Fatalf("python: importlib.metadata %q, requests.__version__ %q from %s; want 2.19.1 from the image", seen.Importlib, seen.Code, seen.File)
	}
	var list []struct{ Name, Version, Location string }
	if err := json.Unmarshal([]byte(strings.TrimSpace(rest)), &list); err != nil {
		t.Fatalf("pip list: %v: %s", err, rest)
	}
	for _, d := range list {
		if d.Name == "requests" && d.Version == "2.19.1" && strings.HasPrefix(d.Location, dir) {
			t.Logf("sys.path %v: importlib.metadata requests %s, code %s from %s; pip list: %s %s at %s",
				seen.Path, seen.Importlib, seen.Code, strings.TrimPrefix(seen.File, dir), d.Name, d.Version, strings.TrimPrefix(d.Location, dir))
			return
		}
	}
	t.Fatalf("pip list: %s; want requests 2.19.1 inside %s", rest, dir)
}
