//go:build integration

package integration

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Issue 9, class 2, links: package metadata that a runtime reads through a hard link or a
// symlink, its bytes stored in the image under a name no scanner reads (srv/blob/pj is no
// package.json). Each case builds the image's files in a directory with real links (os.Link,
// os.Symlink), runs the tool that loads them there (node and npm, python3's importlib.metadata
// and pip, dpkg-query) and checks that it sees the vulnerable version, then writes the tree as
// layers that keep hard links as tar hard links (TypeLink), as docker and buildkit write them,
// and pulls the image through an enforcing Gatehouse: 403 DENIED naming the advisory and the
// package, the package listed in the scan at the path the runtime reads, and the scan complete
// (Gatehouse reads the file through the link; it does not give up on it).
//
// The node_modules/lodash and dist-info directories that are symlinks are TestScanEvasionPackages'
// cases; these are the hard links, the symlinks to files, the chains, the absolute targets
// (resolved in the image's root, not the host's) and the links made in a later layer.

// linkEvasion is an evasion (never an unread one) whose image may have several layers.
type linkEvasion struct {
	evasion
	layers func(t *testing.T, dir string) []string // the image's layer tars, from the tree build made in dir
	at     string                                  // where the scan must list the package: the path the runtime reads
}

func TestScanEvasionLinks(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	pkgDB(t, gh)

	var cases []linkEvasion
	cases = append(cases, npmLinkEvasions(t)...)
	cases = append(cases, pypiLinkEvasions()...)
	cases = append(cases, debianLinkEvasions()...)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.build(t, dir)
			c.check(t, dir)
			layers := c.layers(t, dir)
			if links := tarHardLinks(t, layers); hasHardLinks(t, dir) && links == 0 {
				t.Fatal("the tree has hard links and its layers none")
			}
			for _, l := range layers {
				if strings.Contains(l, ",") {
					t.Fatal("crane append -f takes a comma-separated list: no comma in a case's name (its temporary directory)")
				}
			}
			repo := fmt.Sprintf("library/links%d", i)
			digest := pushLayer(t, crane, up.addr+"/"+repo+":v1", strings.Join(layers, ","))
			var m struct{ Layers []struct{ Digest string } }
			json.Unmarshal([]byte(run(t, nil, crane, "manifest", "--insecure", up.addr+"/"+repo+"@"+digest)), &m)
			if len(m.Layers) != len(layers) {
				t.Fatalf("the image has %d layers, want %d", len(m.Layers), len(layers))
			}

			msg, rules := pullRefused(t, gh, repo, digest, c.want, false) // complete: the file is read through the link

			report, _ := waitScan(t, gh, digest, func(r scanReport) bool { return r.Verdict != nil })
			name, version := c.want[1], c.want[2]
			var listed []string
			found := false
			for _, p := range report.Result.Inventory.Packages {
				if p.Name == name {
					listed = append(listed, p.Version+" at "+p.Path+" layer "+p.Layer)
					found = found || p.Version == version && strings.TrimPrefix(p.Path, "/") == c.at
				}
			}
			if !found {
				t.Errorf("the scan lists %s at %q, want %s at %s", name, listed, version, c.at)
			}
			if !report.Complete {
				t.Errorf("the scan report is not complete: %s", report.Error)
			}
			t.Logf("refused (%s): %.300s; %s listed: %q", rules, msg, name, listed)
		})
	}
	gh.healthy(t)
}

// --- the trees ---

// hardLink makes name (root-relative, in dir) a hard link to target.
func hardLink(t *testing.T, dir, target, name string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	os.Remove(p)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, filepath.FromSlash(target)), p); err != nil {
		t.Fatal(err)
	}
}

// symlink makes name (root-relative, in dir) a symlink to target, as written.
func symlink(t *testing.T, dir, target, name string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(name))
	os.Remove(p)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

// treePaths lists the root-relative paths of the tree in dir in walk order, except that the
// paths first (with their directories) come first: of a file's names, those hold its bytes.
func treePaths(t *testing.T, dir string, first ...string) []string {
	t.Helper()
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, f := range first {
		s := strings.Split(f, "/")
		for i := range s {
			add(strings.Join(s[:i+1], "/"))
		}
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		add(filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// without is paths less drop.
func without(paths []string, drop ...string) []string {
	var out []string
	for _, p := range paths {
		keep := true
		for _, d := range drop {
			keep = keep && p != d
		}
		if keep {
			out = append(out, p)
		}
	}
	return out
}

// linkLayers writes a tar of dir for each list of root-relative paths (an entry each: a
// directory's entry is the directory only), each as it is on disk: a directory, a symlink to its
// target as written, a regular file — except that a file with several names is written with its
// bytes at the first of its names written, in this layer or an earlier one, and as a hard link
// (TypeLink) to that name at the others, as docker and buildkit write hard links.
func linkLayers(t *testing.T, dir string, layers ...[]string) []string {
	t.Helper()
	type inode struct{ dev, ino uint64 }
	first := map[inode]string{}
	var tars []string
	for i, paths := range layers {
		p := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d.tar", i))
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(f)
		for _, rel := range paths {
			full := filepath.Join(dir, filepath.FromSlash(rel))
			info, err := os.Lstat(full)
			if err != nil {
				t.Fatal(err)
			}
			link := ""
			if info.Mode()&fs.ModeSymlink != 0 {
				link, _ = os.Readlink(full)
			}
			h, err := tar.FileInfoHeader(info, link)
			if err != nil {
				t.Fatal(err)
			}
			h.Name = rel
			if info.IsDir() {
				h.Name += "/"
			}
			if st, ok := info.Sys().(*syscall.Stat_t); ok && info.Mode().IsRegular() && st.Nlink > 1 {
				k := inode{uint64(st.Dev), st.Ino}
				if to, ok := first[k]; ok {
					h.Typeflag, h.Linkname, h.Size = tar.TypeLink, to, 0
				} else {
					first[k] = rel
				}
			}
			if err := tw.WriteHeader(h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg {
				b, err := os.ReadFile(full)
				if err != nil {
					t.Fatal(err)
				}
				tw.Write(b)
			}
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		tars = append(tars, p)
	}
	return tars
}

// tarHardLinks counts the hard links (TypeLink entries) of layer tars.
func tarHardLinks(t *testing.T, tars []string) int {
	t.Helper()
	n := 0
	for _, p := range tars {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(f)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeLink {
				n++
			}
		}
		f.Close()
	}
	return n
}

// hasHardLinks reports whether a regular file of the tree in dir has several names.
func hasHardLinks(t *testing.T, dir string) bool {
	t.Helper()
	found := false
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
					found = true
				}
			}
		}
		return err
	})
	return found
}

// oneLayer is the whole tree as one layer, the bytes of each file with several names at the
// first of blobs that is one of them.
func oneLayer(blobs ...string) func(t *testing.T, dir string) []string {
	return func(t *testing.T, dir string) []string { return linkLayers(t, dir, treePaths(t, dir, blobs...)) }
}

// linkAbove is the tree as two layers: the second holds only the hard link at name (its bytes,
// in the first layer, at blob).
func linkAbove(blob, name string) func(t *testing.T, dir string) []string {
	return func(t *testing.T, dir string) []string {
		return linkLayers(t, dir, without(treePaths(t, dir, blob), name), []string{name})
	}
}

// inImageRoot runs check on a copy of the tree whose absolute symlinks are made relative to the
// tree's root: inside the container the kernel resolves "/opt/x" from the image's root, which is
// the tree's; on this host it would leave the tree. Hard links stay hard links.
func inImageRoot(check func(t *testing.T, dir string)) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		view := t.TempDir()
		type inode struct{ dev, ino uint64 }
		copied := map[inode]string{}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == dir {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			to := filepath.Join(view, rel)
			info, err := os.Lstat(p)
			if err != nil {
				return err
			}
			switch {
			case info.IsDir():
				return os.MkdirAll(to, 0o755)
			case info.Mode()&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				if path.IsAbs(target) {
					target, _ = filepath.Rel(filepath.Dir(rel), strings.TrimPrefix(path.Clean(target), "/"))
				}
				return os.Symlink(target, to)
			}
			st := info.Sys().(*syscall.Stat_t)
			k := inode{uint64(st.Dev), st.Ino}
			if first, ok := copied[k]; ok {
				return os.Link(first, to)
			}
			copied[k] = to
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			dst, err := os.Create(to)
			if err != nil {
				return err
			}
			_, err = io.Copy(dst, src)
			if cerr := dst.Close(); err == nil {
				err = cerr
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		check(t, view)
	}
}

// --- npm ---

// npmLinkEvasions: the real lodash 4.17.15 from the npm registry installed at
// app/node_modules/lodash, its package.json's bytes at srv/blob/pj (no package.json: nobody
// scans it), reached from app/node_modules/lodash/package.json through a link.
func npmLinkEvasions(t *testing.T) []linkEvasion {
	project := npmInstall(t, "lodash@4.17.15")
	realPJ, err := os.ReadFile(filepath.Join(project, "node_modules/lodash/package.json"))
	if err != nil {
		t.Fatal(err)
	}
	const (
		pj   = "app/node_modules/lodash/package.json"
		blob = "srv/blob/pj"
	)
	// app installs lodash without its package.json, whose bytes are at blob
	app := func(t *testing.T, dir, blob string) {
		copyTree(t, filepath.Join(project, "node_modules/lodash"), filepath.Join(dir, "app/node_modules/lodash"))
		os.Remove(filepath.Join(dir, pj))
		writeFile(t, filepath.Join(dir, blob), realPJ)
		writeFile(t, filepath.Join(dir, "app/package.json"), []byte(`{"name":"app","version":"1.0.0","dependencies":{"lodash":"^4.17.0"}}`))
	}
	hardLinked := func(t *testing.T, dir string) { app(t, dir, blob); hardLink(t, dir, blob, pj) }
	want := []string{lodashAdvisory, "lodash", "4.17.15"}
	return []linkEvasion{
		{evasion{name: "npm: package.json a hard link to srv/blob/pj", build: hardLinked, check: nodeLoadsLodash, want: want},
			oneLayer(blob), pj},
		{evasion{name: "npm: package.json a hard link to srv/blob/pj made in a later layer than it", build: hardLinked, check: nodeLoadsLodash, want: want},
			linkAbove(blob, pj), pj},
		{evasion{
			// a scanner resolving /opt/x on its host finds nothing there. The bytes end in .json:
			// require('lodash/package.json') loads the file by its real path, as JSON only by
			// that name (Node's own resolution of the package reads package.json where it is)
			name: "npm: package.json a symlink to /opt/x and that a symlink to ../srv/blob/lodash.json (two hops; the first absolute: in the image root)",
			build: func(t *testing.T, dir string) {
				app(t, dir, "srv/blob/lodash.json")
				symlink(t, dir, "/opt/x", pj)
				symlink(t, dir, "../srv/blob/lodash.json", "opt/x")
			},
			check: inImageRoot(nodeLoadsLodash), want: want},
			oneLayer(), pj},
	}
}

// --- PyPI ---

// pypiLinkEvasions: requests 2.19.1 (a stand-in with the real name and version, as in
// pypiEvasions) whose METADATA's bytes are at a path nobody scans, reached through links.
func pypiLinkEvasions() []linkEvasion {
	const (
		sp       = "usr/lib/python3/site-packages"
		metadata = "Metadata-Version: 2.1\nName: requests\nVersion: 2.19.1\nSummary: Python HTTP for Humans.\n\nRequests is an HTTP library.\n"
		blob     = "srv/blob/meta"
	)
	code := func(t *testing.T, dir, sp string) {
		writeFile(t, filepath.Join(dir, sp, "requests/__init__.py"), []byte("__version__ = '2.19.1'\n"))
	}
	check := func(t *testing.T, dir string) { pythonSeesRequests(t, filepath.Join(dir, sp), "requests") }
	want := []string{requestsAdvisory, "requests", "2.19.1"}
	at := sp + "/requests-2.19.1.dist-info/METADATA"
	return []linkEvasion{
		{evasion{name: "PyPI: METADATA a hard link to srv/blob/meta", build: func(t *testing.T, dir string) {
			code(t, dir, sp)
			writeFile(t, filepath.Join(dir, blob), []byte(metadata))
			hardLink(t, dir, blob, at)
		}, check: check, want: want}, oneLayer(blob), at},
		{evasion{
			name: "PyPI: site-packages a symlink to opt/venv/site-packages whose dist-info directory is a symlink to /srv/dist/requests",
			build: func(t *testing.T, dir string) {
				code(t, dir, "opt/venv/site-packages")
				writeFile(t, filepath.Join(dir, "srv/dist/requests/METADATA"), []byte(metadata))
				symlink(t, dir, "../../../opt/venv/site-packages", sp)
				symlink(t, dir, "/srv/dist/requests", "opt/venv/site-packages/requests-2.19.1.dist-info")
			},
			check: inImageRoot(check), want: want}, oneLayer(), at},
	}
}

// --- Debian ---

// debianLinkEvasions: libc6 2.36-9+deb12u1 (before the fix of CVE-2023-4911) in a dpkg status
// that dpkg reads at var/lib/dpkg/status through a link.
func debianLinkEvasions() []linkEvasion {
	const (
		status = "var/lib/dpkg/status"
		blob   = "srv/blob/status"
	)
	vulnerable := baseFiles + "\n" + libc6
	// db writes a dpkg database at admin (status, available, updates/) and the release
	db := func(t *testing.T, dir, admin, status string) {
		if status != "" {
			writeFile(t, filepath.Join(dir, admin, "status"), []byte(status))
		}
		writeFile(t, filepath.Join(dir, admin, "available"), nil)
		os.MkdirAll(filepath.Join(dir, admin, "updates"), 0o755)
		writeFile(t, filepath.Join(dir, "etc/os-release"), []byte(debianOSRelease))
	}
	hardLinked := func(t *testing.T, dir string) {
		db(t, dir, "var/lib/dpkg", "")
		writeFile(t, filepath.Join(dir, blob), []byte(vulnerable))
		hardLink(t, dir, blob, status)
	}
	check := func(t *testing.T, dir string) { dpkgSeesLibc(t, dir, "ii ") }
	want := []string{glibcAdvisory, "libc6", "2.36-9+deb12u1"}
	return []linkEvasion{
		{evasion{name: "Debian: var/lib/dpkg/status a hard link to srv/blob/status", build: hardLinked, check: check, want: want},
			oneLayer(blob), status},
		{evasion{name: "Debian: var/lib/dpkg a symlink to ../../srv/dpkg", build: func(t *testing.T, dir string) {
			db(t, dir, "srv/dpkg", vulnerable)
			symlink(t, dir, "../../srv/dpkg", "var/lib/dpkg")
		}, check: check, want: want}, oneLayer(), status},
		{evasion{name: "Debian: var/lib/dpkg/status a hard link to srv/blob/status made in a later layer than it", build: hardLinked, check: check, want: want},
			linkAbove(blob, status), status},
		{evasion{
			// the first layer's var/lib/dpkg, a directory, lists libc6 fixed: the second layer's
			// symlink replaces it (an entry replaces what is at its path unless both are directories)
			name: "Debian: var/lib/dpkg of a fixed libc6 replaced in a later layer by a symlink to /srv/dpkg",
			build: func(t *testing.T, dir string) {
				db(t, dir, "srv/dpkg", vulnerable)
				symlink(t, dir, "/srv/dpkg", "var/lib/dpkg")
			},
			check: inImageRoot(check), want: want},
			func(t *testing.T, dir string) []string {
				lower := t.TempDir()
				db(t, lower, "srv/dpkg", vulnerable)
				db(t, lower, "var/lib/dpkg", baseFiles+"\n"+strings.Replace(libc6, "2.36-9+deb12u1", "2.36-9+deb12u10", 1))
				if out := run(t, nil, tool(t, "dpkg-query"), "--admindir="+filepath.Join(lower, "var/lib/dpkg"), "-W", "libc6"); !strings.Contains(out, "2.36-9+deb12u10") {
					t.Fatalf("the first layer's dpkg database: %q, want libc6 2.36-9+deb12u10", out)
				}
				return append(linkLayers(t, lower, treePaths(t, lower)), linkLayers(t, dir, []string{"var/lib/dpkg"})...)
			}, status},
	}
}
