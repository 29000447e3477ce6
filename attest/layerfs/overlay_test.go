package layerfs

import (
	"archive/tar"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/go-digest"
)

// TestLowerSymlinkAmbiguous: an entry whose directories pass through a symlink a lower layer
// wrote is placed where containerd's native snapshotter places it (through the symlink), and
// the result is incomplete with an Ambiguous issue naming the entry and the symlink: the overlay
// snapshotters unpack the layer into an empty directory, where the symlink is not, and the
// directories they make there hide it. A symlink of the entry's own layer is followed by both.
func TestLowerSymlinkAmbiguous(t *testing.T) {
	pj := func(v string) string { return `{"name":"lodash","version":"` + v + `"}` }
	status := func(v string) string { return "Package: libc6\nStatus: install ok installed\nVersion: " + v + "\n\n" }
	npm := []entry{{name: "app/", typ: tar.TypeDir}, {name: "app/node_modules/lodash/package.json", body: pj("4.17.15")}, {name: "x", typ: tar.TypeSymlink, link: "app"}}
	dpkg := []entry{{name: "var/lib/dpkg/status", body: status("2.36-9+deb12u1")}, {name: "v", typ: tar.TypeSymlink, link: "var/lib"}}
	tests := []struct {
		name   string
		layers [][]entry
		want   map[string]string // regular files, as the native snapshotter leaves them
		issue  string            // the entry the Ambiguous issue names ("" for none)
		via    string            // the lower symlink it names
	}{
		{"a whiteout through a lower symlink", [][]entry{npm, {{name: "x/node_modules/.wh.lodash"}}},
			map[string]string{}, "x/node_modules/.wh.lodash", "x"},
		{"an opaque marker through a lower symlink", [][]entry{npm, {{name: "x/.wh..wh..opq"}}},
			map[string]string{}, "x/.wh..wh..opq", "x"},
		{"a file written through a lower symlink", [][]entry{npm, {{name: "x/node_modules/lodash/package.json", body: pj("4.17.21")}}},
			map[string]string{"app/node_modules/lodash/package.json": pj("4.17.21")}, "x/node_modules/lodash/package.json", "x"},
		{"a dpkg status written through a lower symlink", [][]entry{dpkg, {{name: "v/dpkg/status", body: status("2.36-9+deb12u3")}}},
			map[string]string{"var/lib/dpkg/status": status("2.36-9+deb12u3")}, "v/dpkg/status", "v"},
		{"a directory through a lower symlink", [][]entry{npm, {{name: "x/new/", typ: tar.TypeDir}}},
			map[string]string{"app/node_modules/lodash/package.json": pj("4.17.15")}, "x/new", "x"},
		{"a symlink through a lower symlink", [][]entry{npm, {{name: "x/node_modules/lodash", typ: tar.TypeSymlink, link: "/nowhere"}}},
			map[string]string{}, "x/node_modules/lodash", "x"},
		{"a hard link named through a lower symlink", [][]entry{npm, {{name: "fixed", body: pj("4.17.21")}, {name: "x/node_modules/lodash/package.json", typ: tar.TypeLink, link: "fixed"}}},
			map[string]string{"fixed": pj("4.17.21"), "app/node_modules/lodash/package.json": pj("4.17.21")}, "x/node_modules/lodash/package.json", "x"},
		{"a hard link whose target is named through a lower symlink", [][]entry{npm, {{name: "copy", typ: tar.TypeLink, link: "x/node_modules/lodash/package.json"}}},
			map[string]string{"app/node_modules/lodash/package.json": pj("4.17.15"), "copy": pj("4.17.15")}, "copy", "x"},
		{"a symlink of its own layer leading through a lower one", [][]entry{npm, {{name: "y", typ: tar.TypeSymlink, link: "x/node_modules"}, {name: "y/.wh.lodash"}}},
			map[string]string{}, "y/.wh.lodash", "x"},
		{"a lower symlink under a directory", [][]entry{{{name: "srv/app/package.json", body: pj("4.17.15")}, {name: "srv/cur", typ: tar.TypeSymlink, link: "app"}}, {{name: "srv/cur/.wh.package.json"}}},
			map[string]string{}, "srv/cur/.wh.package.json", "srv/cur"},

		// both kinds of snapshotter agree
		{"a whiteout through a symlink of its own layer", [][]entry{npm[:2], {{name: "x", typ: tar.TypeSymlink, link: "app"}, {name: "x/node_modules/.wh.lodash"}}},
			map[string]string{}, "", ""},
		{"a lower symlink written again by the layer", [][]entry{npm, {{name: "x", typ: tar.TypeSymlink, link: "app"}, {name: "x/node_modules/lodash/package.json", body: pj("4.17.21")}}},
			map[string]string{"app/node_modules/lodash/package.json": pj("4.17.21")}, "", ""},
		{"a lower symlink replaced by a directory first", [][]entry{npm, {{name: "x/", typ: tar.TypeDir}, {name: "x/node_modules/lodash/package.json", body: pj("4.17.21")}}},
			map[string]string{"app/node_modules/lodash/package.json": pj("4.17.15"), "x/node_modules/lodash/package.json": pj("4.17.21")}, "", ""},
		{"a whiteout of the lower symlink itself", [][]entry{npm, {{name: ".wh.x"}}},
			map[string]string{"app/node_modules/lodash/package.json": pj("4.17.15")}, "", ""},
		{"real paths beside a lower symlink (usrmerge)", [][]entry{{{name: "usr/lib/libc.so.6", body: "old"}, {name: "lib", typ: tar.TypeSymlink, link: "usr/lib"}}, {{name: "usr/lib/libc.so.6", body: "new"}}},
			map[string]string{"usr/lib/libc.so.6": "new"}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ls := layers(t, false, tt.layers)
			res, _ := flatten(t, DefaultLimits, ls...)
			want := map[string]digest.Digest{}
			for p, body := range tt.want {
				want[p] = digest.FromString(body)
			}
			if diff := cmp.Diff(want, regular(res)); diff != "" {
				t.Errorf("files, as the native snapshotter leaves them (-want +got):\n%s", diff)
			}
			var found []Issue
			for _, is := range res.Issues {
				if is.Kind == Ambiguous {
					found = append(found, is)
				} else {
					t.Errorf("an issue of kind %s: %+v", is.Kind, is)
				}
			}
			if tt.issue == "" {
				if len(found) > 0 || res.Incomplete {
					t.Errorf("incomplete %v: %+v", res.Incomplete, res.Issues)
				}
				return
			}
			if !res.Incomplete || len(found) != 1 {
				t.Fatalf("incomplete %v, want one ambiguous issue: %+v", res.Incomplete, res.Issues)
			}
			is := found[0]
			if is.Path != tt.issue || is.Layer != ls[len(ls)-1].Digest {
				t.Errorf("the issue names %s of layer %s, want %s of the last layer", is.Path, is.Layer, tt.issue)
			}
			if !strings.Contains(is.Detail, " "+tt.via+", a symlink of a lower layer") || !strings.Contains(is.Detail, "overlay snapshotters") {
				t.Errorf("the issue does not name the lower symlink %s and the snapshotters: %s", tt.via, is.Detail)
			}
			t.Logf("%s", is.Detail)
		})
	}
}

// TestGlobalHeaderOverLowerEntry: a PAX global header named after a lower layer's file (found by
// an adversarial round: a vulnerable var/lib/dpkg/status erased from the scan, not from an
// overlay snapshotter's view) makes the result ambiguous; in its own layer it is not.
func TestGlobalHeaderOverLowerEntry(t *testing.T) {
	for _, tt := range []struct {
		name   string
		layers [][]entry
		want   bool // ambiguous
	}{
		{"over a lower layer's file", [][]entry{{{name: "var/lib/dpkg/status", body: status}}, {{name: "var/lib/dpkg/status", typ: tar.TypeXGlobalHeader}}}, true},
		{"over its own layer's file", [][]entry{{{name: "var/lib/dpkg/status", body: status}, {name: "var/lib/dpkg/status", typ: tar.TypeXGlobalHeader}}}, false},
		{"where nothing is", [][]entry{{{name: "var/lib/dpkg/status", body: status}}, {{name: "pax_global_header", typ: tar.TypeXGlobalHeader}}}, false},
	} {
		res, _ := flatten(t, DefaultLimits, layers(t, false, tt.layers)...)
		got := false
		for _, is := range res.Issues {
			got = got || is.Kind == Ambiguous
		}
		if got != tt.want || res.Incomplete != tt.want {
			t.Errorf("%s: ambiguous %v, incomplete %v (issues %+v); want %v", tt.name, got, res.Incomplete, res.Issues, tt.want)
		}
	}
}
