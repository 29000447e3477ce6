package layerfs

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
)

// scannerKeep is a Keep like the inventory's: package databases by name, executables by a check
// of their bytes (a "GO" prefix stands for Go build info) unless named *.txt (as osv-scalibr
// skips executables of some extensions), nothing else, no symlink.
func scannerKeep(p string, info os.FileInfo) (bool, Check) {
	if info.Mode()&os.ModeSymlink != 0 {
		return false, nil
	}
	switch {
	case p == "var/lib/dpkg/status", strings.HasSuffix(p, ".dist-info/METADATA"),
		path.Base(p) == "package.json" && strings.Contains(p, "node_modules/"):
		return true, nil
	case info.Mode()&0o111 != 0 && path.Ext(p) != ".txt":
		return false, func(r io.ReaderAt, size int64) (bool, error) {
			b := make([]byte, 2)
			n, _ := r.ReadAt(b, 0)
			return string(b[:n]) == "GO", nil
		}
	}
	return false, nil
}

// counted counts how often a layer is opened.
func counted(l Layer, n *int) Layer {
	open := l.Open
	l.Open = func() (io.ReadCloser, error) { *n++; return open() }
	return l
}

func flattenKeep(t *testing.T, layers ...Layer) (*Result, string) {
	t.Helper()
	parent := t.TempDir()
	dir := filepath.Join(parent, "root")
	os.Mkdir(dir, 0o755)
	res, err := Flatten(context.Background(), dir, layers, DefaultLimits, Options{Keep: scannerKeep})
	if err != nil {
		t.Fatal(err)
	}
	return res, parent
}

// onDisk is every regular file of the tree on disk and its contents (symlinks as "-> target").
func onDisk(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || p == root || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if info.Mode()&os.ModeSymlink != 0 {
			to, _ := os.Readlink(p)
			out[filepath.ToSlash(rel)] = "-> " + to
			return nil
		}
		b, _ := os.ReadFile(p)
		out[filepath.ToSlash(rel)] = string(b)
		return nil
	})
	return out
}

const status = "Package: openssl\nStatus: install ok installed\nVersion: 3.0.0\n"

// TestHardLinksByTheirOwnName: a hard link whose name is wanted gets its bytes, whatever its
// target's name, in the same layer or across layers, even when the target is removed or replaced
// later; bytes not kept the first time are read again from their layer, once per layer.
func TestHardLinksByTheirOwnName(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]entry
		want   map[string]string // the tree on disk
		reread bool              // the bytes had to be read again
		kinds  map[Kind]int
	}{
		{"same layer", [][]entry{{
			{name: "opt/blob", body: status},
			{name: "var/lib/dpkg/status", typ: tar.TypeLink, link: "opt/blob"},
		}}, map[string]string{"var/lib/dpkg/status": status}, true, nil},
		{"across layers", [][]entry{
			{{name: "opt/blob", body: `{"name":"lodash","version":"4.17.15"}`}, {name: "opt/other", body: "x"}},
			{{name: "app/node_modules/lodash/package.json", typ: tar.TypeLink, link: "/opt/blob"}},
		}, map[string]string{"app/node_modules/lodash/package.json": `{"name":"lodash","version":"4.17.15"}`}, true, nil},
		{"the target whited out later", [][]entry{
			{{name: "opt/blob", body: status}, {name: "var/lib/dpkg/status", typ: tar.TypeLink, link: "opt/blob"}},
			{{name: "opt/.wh.blob"}},
		}, map[string]string{"var/lib/dpkg/status": status}, true, nil},
		{"the target replaced after the link", [][]entry{
			{{name: "opt/blob", body: status}, {name: "var/lib/dpkg/status", typ: tar.TypeLink, link: "opt/blob"}, {name: "opt/blob", body: "new"}},
		}, map[string]string{"var/lib/dpkg/status": status}, true, nil},
		{"the link whited out", [][]entry{
			{{name: "opt/blob", body: status}, {name: "var/lib/dpkg/status", typ: tar.TypeLink, link: "opt/blob"}},
			{{name: "var/lib/dpkg/.wh.status"}},
		}, map[string]string{}, false, nil},
		{"a link to a link", [][]entry{
			{{name: "opt/blob", body: status}, {name: "opt/blob2", typ: tar.TypeLink, link: "opt/blob"}},
			{{name: "var/lib/dpkg/status", typ: tar.TypeLink, link: "opt/blob2"}},
		}, map[string]string{"var/lib/dpkg/status": status}, true, nil},
		{"a target kept: linked, not read again", [][]entry{
			{{name: "a.dist-info/METADATA", body: "Name: a\nVersion: 1\n"}, {name: "b.dist-info/METADATA", typ: tar.TypeLink, link: "a.dist-info/METADATA"}},
		}, map[string]string{"a.dist-info/METADATA": "Name: a\nVersion: 1\n", "b.dist-info/METADATA": "Name: a\nVersion: 1\n"}, false, nil},
		{"an executable under a name nobody wants: judged by its bytes at the link", [][]entry{
			{{name: "opt/app.txt", body: "GO binary", mode: 0o755}, {name: "opt/script.txt", body: "#!/bin/sh", mode: 0o755}},
			{{name: "usr/bin/app", typ: tar.TypeLink, link: "opt/app.txt"}, {name: "usr/bin/script", typ: tar.TypeLink, link: "opt/script.txt"}},
		}, map[string]string{"usr/bin/app": "GO binary"}, true, nil},
		{"a link's mode is its target's", [][]entry{
			{{name: "opt/app", body: "GO binary"}, {name: "usr/bin/app", typ: tar.TypeLink, link: "opt/app", mode: 0o755}},
		}, map[string]string{}, false, nil},
		{"a database linked to an executable a check refused", [][]entry{
			{{name: "usr/bin/tool", body: "#!/bin/sh", mode: 0o755}, {name: "var/lib/dpkg/status", typ: tar.TypeLink, link: "usr/bin/tool"}},
		}, map[string]string{"var/lib/dpkg/status": "#!/bin/sh"}, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opens := 0
			var ls []Layer
			for _, es := range tt.layers {
				ls = append(ls, counted(layer(t, true, es...), &opens))
			}
			res, _ := flattenKeep(t, ls...)
			if diff := cmp.Diff(tt.want, onDisk(t, res.Root)); diff != "" {
				t.Errorf("tree (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.kinds, kinds(res), cmpEmptyKinds); diff != "" {
				t.Errorf("issues (-want +got):\n%s\n%+v", diff, res.Issues)
			}
			if got := res.Reread > 0; got != tt.reread {
				t.Errorf("reread %d bytes, want reread %v", res.Reread, tt.reread)
			}
			if tt.reread && opens != len(ls)+1 {
				t.Errorf("%d opens of %d layers: one layer read again, once", opens, len(ls))
			}
			for p := range tt.want {
				if f := res.Files[p]; f.SHA256 != digest.FromString(tt.want[p]) {
					t.Errorf("%s recorded as %+v", p, f)
				}
			}
		})
	}
}

var cmpEmptyKinds = cmp.Transformer("empty", func(m map[Kind]int) map[Kind]int {
	if m == nil {
		return map[Kind]int{}
	}
	return m
})

// TestSymlinksResolveAsTheKernelDoes: what a runtime reads through a symlink — to a file, to a
// directory, through chains — is made at the link's path when it is wanted there and not read
// where it is; what the extractors read where it is already is not made twice.
func TestSymlinksResolveAsTheKernelDoes(t *testing.T) {
	meta := "Name: urllib3\nVersion: 1.26.4\n"
	tests := []struct {
		name    string
		layers  [][]entry
		want    map[string]string // the tree on disk
		aliases map[string]string
		kinds   map[Kind]int
	}{
		{"a symlinked dist-info directory", [][]entry{
			{{name: "opt/store/x/METADATA", body: meta}},
			{{name: "usr/lib/python3/site-packages/urllib3-1.26.4.dist-info", typ: tar.TypeSymlink, link: "/opt/store/x"}},
		}, map[string]string{"usr/lib/python3/site-packages/urllib3-1.26.4.dist-info/METADATA": meta},
			map[string]string{"usr/lib/python3/site-packages/urllib3-1.26.4.dist-info/METADATA": "opt/store/x/METADATA"}, nil},
		{"a symlinked package directory, relative", [][]entry{{
			{name: "app/.store/l/package.json", body: `{"version":"4.17.15"}`},
			{name: "app/.store/l/index.js", body: "js"},
			{name: "app/node_modules/lodash", typ: tar.TypeSymlink, link: "../.store/l"},
		}}, map[string]string{"app/node_modules/lodash/package.json": `{"version":"4.17.15"}`},
			map[string]string{"app/node_modules/lodash/package.json": "app/.store/l/package.json"}, nil},
		{"a symlink to a file", [][]entry{{
			{name: "opt/db", body: status},
			{name: "var/lib/dpkg/status", typ: tar.TypeSymlink, link: "../../../opt/db"},
		}}, map[string]string{"var/lib/dpkg/status": status}, map[string]string{"var/lib/dpkg/status": "opt/db"}, nil},
		{"a chain through directories and files", [][]entry{{
			{name: "v/db/real", body: status},
			{name: "v/db/status", typ: tar.TypeSymlink, link: "real"},
			{name: "v/dpkg", typ: tar.TypeSymlink, link: "db"},
			{name: "var/lib", typ: tar.TypeSymlink, link: "/v"},
		}}, map[string]string{"var/lib/dpkg/status": status}, map[string]string{"var/lib/dpkg/status": "v/db/real"}, nil},
		{"merged /usr: read where it is, not twice", [][]entry{{
			{name: "usr/lib/python3/dist-packages/a-1.dist-info/METADATA", body: meta},
			{name: "usr/bin/app", body: "GO", mode: 0o755},
			{name: "usr/bin/X11", typ: tar.TypeSymlink, link: "."},
			{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
			{name: "bin", typ: tar.TypeSymlink, link: "usr/bin"},
			{name: "usr/local/bin/app", typ: tar.TypeSymlink, link: "/usr/bin/app"},
		}}, map[string]string{"usr/lib/python3/dist-packages/a-1.dist-info/METADATA": meta, "usr/bin/app": "GO"}, map[string]string{}, nil},
		{"an executable under a name nobody wants, run through a symlink", [][]entry{{
			{name: "opt/app.txt", body: "GO", mode: 0o755},
			{name: "opt/notgo.txt", body: "ELF", mode: 0o755},
			{name: "usr/bin/app", typ: tar.TypeSymlink, link: "/opt/app.txt"},
			{name: "usr/bin/notgo", typ: tar.TypeSymlink, link: "/opt/notgo.txt"},
		}}, map[string]string{"usr/bin/app": "GO"}, map[string]string{"usr/bin/app": "opt/app.txt"}, nil},
		{"a symlink to a removed directory", [][]entry{
			{{name: "opt/x/METADATA", body: meta}, {name: "a.dist-info", typ: tar.TypeSymlink, link: "opt/x"}},
			{{name: "opt/.wh.x"}},
		}, map[string]string{}, map[string]string{}, nil},
		{"a symlink climbing out of the root", [][]entry{{
			{name: "opt/x/METADATA", body: meta},
			{name: "site/a.dist-info", typ: tar.TypeSymlink, link: "../../../../opt/x"},
		}}, map[string]string{"site/a.dist-info/METADATA": meta}, map[string]string{"site/a.dist-info/METADATA": "opt/x/METADATA"}, map[Kind]int{Escape: 1}},
		{"a symlink loop", [][]entry{{
			{name: "a.dist-info", typ: tar.TypeSymlink, link: "b"},
			{name: "b", typ: tar.TypeSymlink, link: "a.dist-info"},
			{name: "self", typ: tar.TypeSymlink, link: "self/x"},
		}}, map[string]string{}, map[string]string{}, map[Kind]int{Loop: 3}},
		{"a directory cycle is walked once", [][]entry{{
			{name: "app/lodash/package.json", body: `{"version":"4.17.15"}`},
			{name: "app/node_modules", typ: tar.TypeSymlink, link: "."},
		}}, map[string]string{"app/node_modules/lodash/package.json": `{"version":"4.17.15"}`},
			map[string]string{"app/node_modules/lodash/package.json": "app/lodash/package.json"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, parent := flattenKeep(t, layers(t, true, tt.layers)...)
			if got := outside(t, parent, res.Root); len(got) != 0 {
				t.Fatalf("written outside the root: %v", got)
			}
			if diff := cmp.Diff(tt.want, onDisk(t, res.Root)); diff != "" {
				t.Errorf("tree (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.aliases, res.Aliases); diff != "" {
				t.Errorf("aliases (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.kinds, kinds(res), cmpEmptyKinds); diff != "" {
				t.Errorf("issues (-want +got):\n%s\n%+v", diff, res.Issues)
			}
			for a, to := range tt.aliases {
				if f, ok := res.File(a); !ok || f != res.Files[to] {
					t.Errorf("File(%s) = %+v, %v; want the record of %s", a, f, ok, to)
				}
			}
		})
	}
}

// TestSymlinkWalkBounded: links that multiply paths (each directory linking twice to the next)
// stop at the walk's budget, and the result says so.
func TestSymlinkWalkBounded(t *testing.T) {
	var es []entry
	const depth = 20 // 2^20 paths
	for i := range depth {
		es = append(es, entry{name: fmt.Sprintf("d%d/a", i), typ: tar.TypeSymlink, link: fmt.Sprintf("/d%d", i+1)},
			entry{name: fmt.Sprintf("d%d/b", i), typ: tar.TypeSymlink, link: fmt.Sprintf("/d%d", i+1)})
	}
	es = append(es, entry{name: fmt.Sprintf("d%d/x", depth), body: "x"})
	res, _ := flattenKeep(t, layer(t, true, es...))
	if !res.Incomplete || kinds(res)[Limit] != 1 {
		t.Errorf("incomplete %v, issues %+v", res.Incomplete, res.Issues)
	}
}

// TestRereadChecked: bytes read again from a layer must be the bytes read the first time.
func TestRereadChecked(t *testing.T) {
	first := layer(t, false, entry{name: "opt/blob", body: status}, entry{name: "var/lib/dpkg/status", typ: tar.TypeLink, link: "opt/blob"})
	second := layer(t, false, entry{name: "opt/blob", body: strings.Replace(status, "3.0.0", "3.0.9", 1)})
	opens := 0
	l := first
	l.Open = func() (io.ReadCloser, error) {
		opens++
		if opens > 1 {
			return second.Open()
		}
		return first.Open()
	}
	res, _ := flattenKeep(t, l)
	if got := onDisk(t, res.Root); len(got) != 0 {
		t.Errorf("tree %v", got)
	}
	if !res.Incomplete || kinds(res)[Truncated] != 1 {
		t.Errorf("incomplete %v, issues %+v", res.Incomplete, res.Issues)
	}
}

// TestLinksCostNothingWithoutThem: an image without links is read once, and Keep is asked once
// per file.
func TestLinksCostNothingWithoutThem(t *testing.T) {
	var es []entry
	for i := range 100 {
		es = append(es, entry{name: fmt.Sprintf("usr/share/doc/p%d/copyright", i), body: "c"})
	}
	opens := 0
	asked := 0
	keep := func(p string, info os.FileInfo) (bool, Check) { asked++; return scannerKeep(p, info) }
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	res, err := Flatten(context.Background(), dir, []Layer{counted(layer(t, true, es...), &opens)}, DefaultLimits, Options{Keep: keep})
	if err != nil {
		t.Fatal(err)
	}
	if opens != 1 || asked != 100 || res.Reread != 0 || len(res.Issues) != 0 {
		t.Errorf("opens %d, Keep asked %d times, reread %d, issues %+v", opens, asked, res.Reread, res.Issues)
	}
}

// TestTailReread: a file that Keep and Sniff did not want but whose end Options.Tail accepts is
// not written as it is read; it is read again from its layer if the image still holds it (at
// its path, or at a hard link's) and judged there by TailCheck; files whose end Tail refuses,
// or that a later layer removed, are not read again.
func TestTailReread(t *testing.T) {
	tailOpts := func(judged *[]string) Options {
		return Options{
			Keep: func(string, os.FileInfo) (bool, Check) { return false, nil },
			Tail: func(tail []byte) bool { return strings.HasSuffix(string(tail), "END") },
			TailCheck: func(r io.ReaderAt, size int64) (bool, error) {
				b := make([]byte, size)
				r.ReadAt(b, 0)
				*judged = append(*judged, string(b))
				return strings.HasPrefix(string(b), "keep"), nil
			},
		}
	}
	big := strings.Repeat("x", TailLen+100) // longer than the tail kept
	layers := []Layer{
		layer(t, true, entry{name: "opt/a", body: "keep me END"}, entry{name: "opt/b", body: "drop me END"},
			entry{name: "opt/c", body: "keep, but no end"}, entry{name: "opt/gone", body: "keep gone END"},
			entry{name: "opt/big", body: "keep" + big + "END"}, entry{name: "opt/linked", body: "keep linked END"}),
		layer(t, true, entry{name: "opt/.wh.gone"}, entry{name: "srv/link", typ: tar.TypeLink, link: "opt/linked"}, entry{name: "opt/.wh.linked"}),
	}
	var judged []string
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	res, err := Flatten(context.Background(), dir, layers, DefaultLimits, tailOpts(&judged))
	if err != nil {
		t.Fatal(err)
	}
	got := onDisk(t, dir)
	want := map[string]string{"opt/a": "keep me END", "opt/big": "keep" + big + "END", "srv/link": "keep linked END"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the tree (-want +got):\n%s", diff)
	}
	if len(judged) != 4 {
		t.Errorf("judged %d files; want 4 (a, b, big, the link)", len(judged))
	}
	if res.Reread == 0 || res.Incomplete {
		t.Errorf("reread %d bytes, incomplete %v", res.Reread, res.Incomplete)
	}
}

// TestTailBounded: past maxTails files whose ends Tail accepts, the rest are not judged and the
// result is incomplete (each would be read again and held till then).
func TestTailBounded(t *testing.T) {
	var es []entry
	for i := range maxTails + 5 {
		es = append(es, entry{name: fmt.Sprintf("opt/f%d", i), body: "keep END"})
	}
	var judged []string
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	opts := Options{
		Keep: func(string, os.FileInfo) (bool, Check) { return false, nil },
		Tail: func(tail []byte) bool { return strings.HasSuffix(string(tail), "END") },
		TailCheck: func(r io.ReaderAt, size int64) (bool, error) {
			judged = append(judged, "")
			return true, nil
		},
	}
	res, err := Flatten(context.Background(), dir, []Layer{layer(t, true, es...)}, DefaultLimits, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(judged) != maxTails || !res.Incomplete {
		t.Errorf("judged %d, incomplete %v; want %d and incomplete", len(judged), res.Incomplete, maxTails)
	}
}
