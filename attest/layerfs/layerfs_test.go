package layerfs

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs/tartest"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
	raw              []byte // written as is into the tar stream instead (hand-made headers)
}

// layers makes a layer of each list of entries.
func layers(t *testing.T, gz bool, entries [][]entry) []Layer {
	t.Helper()
	ls := make([]Layer, 0, len(entries))
	for _, es := range entries {
		ls = append(ls, layer(t, gz, es...))
	}
	return ls
}

func layer(t *testing.T, gz bool, entries ...entry) Layer {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, e := range entries {
		if e.raw != nil {
			tw.Flush()
			w.Write(e.raw)
			continue
		}
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Linkname: e.link}
		if typ == tar.TypeXGlobalHeader {
			h = &tar.Header{Name: e.name, Typeflag: typ, PAXRecords: map[string]string{"comment": "global"}}
		}
		if typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	if zw != nil {
		zw.Close()
	}
	b := buf.Bytes()
	return Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func flatten(t *testing.T, lim Limits, layers ...Layer) (*Result, string) {
	t.Helper()
	parent := t.TempDir()
	dir := filepath.Join(parent, "root")
	os.Mkdir(dir, 0o755)
	res, err := Flatten(context.Background(), dir, layers, lim, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return res, parent
}

// regular is the tree's regular files and their contents' digests.
func regular(res *Result) map[string]digest.Digest {
	out := map[string]digest.Digest{}
	for p, f := range res.Files {
		if f.Mode.IsRegular() {
			out[p] = f.SHA256
		}
	}
	return out
}

// kinds counts the issues by kind.
func kinds(res *Result) map[Kind]int {
	out := map[Kind]int{}
	for _, is := range res.Issues {
		out[is.Kind]++
	}
	return out
}

func TestLayersMerge(t *testing.T) {
	l1 := layer(t, true,
		entry{name: "etc/", typ: tar.TypeDir},
		entry{name: "etc/os-release", body: "ID=debian\n"},
		entry{name: "etc/removed", body: "gone later"},
		entry{name: "opt/app/", typ: tar.TypeDir},
		entry{name: "opt/app/old.txt", body: "old"},
		entry{name: "usr/bin/tool", body: "binary", mode: 0o4755},
	)
	l2 := layer(t, false, // an uncompressed layer
		entry{name: "etc/os-release", body: "ID=debian\nVERSION_ID=12\n"},
		entry{name: "etc/.wh.removed"},
		entry{name: "opt/app/.wh..wh..opq"},
		entry{name: "opt/app/new.txt", body: "new"},
		entry{name: "usr/bin/link", typ: tar.TypeSymlink, link: "tool"},
		entry{name: "etc/alternatives/tool", typ: tar.TypeSymlink, link: "/usr/bin/tool"},
	)
	res, _ := flatten(t, DefaultLimits, l1, l2)
	if res.Incomplete || len(res.Issues) != 0 {
		t.Fatalf("issues: %+v", res.Issues)
	}
	b, _ := os.ReadFile(filepath.Join(res.Root, "etc/os-release"))
	if string(b) != "ID=debian\nVERSION_ID=12\n" || res.Files["etc/os-release"].Layer != l2.Digest {
		t.Errorf("override: %q from %s", b, res.Files["etc/os-release"].Layer)
	}
	if res.Files["etc/os-release"].SHA256 != digest.FromString("ID=debian\nVERSION_ID=12\n") {
		t.Errorf("sha256 %s", res.Files["etc/os-release"].SHA256)
	}
	for _, gone := range []string{"etc/removed", "opt/app/old.txt"} {
		if _, ok := res.Files[gone]; ok {
			t.Errorf("%s still recorded", gone)
		}
		if _, err := os.Lstat(filepath.Join(res.Root, gone)); err == nil {
			t.Errorf("%s still on disk", gone)
		}
	}
	if f := res.Files["opt/app/new.txt"]; f.Layer != l2.Digest {
		t.Errorf("new file: %+v", f)
	}
	if f := res.Files["usr/bin/tool"]; f.Layer != l1.Digest || f.Mode&os.ModeSetuid == 0 {
		t.Errorf("setuid not recorded: %+v", f)
	}
	if fi, _ := os.Stat(filepath.Join(res.Root, "usr/bin/tool")); fi.Mode()&os.ModeSetuid != 0 {
		t.Error("the setuid bit was reproduced on the host")
	}
	if res.Files["usr/bin/link"].Link != "tool" {
		t.Errorf("symlink: %+v", res.Files["usr/bin/link"])
	}
	// an absolute symlink resolves inside the tree, as it would inside the container
	root, _ := os.OpenRoot(res.Root)
	defer root.Close()
	if b, err := root.ReadFile("etc/alternatives/tool"); err != nil || string(b) != "binary" {
		t.Errorf("absolute symlink read through the root: %q %v", b, err)
	}
}

// outside lists files under parent but outside root (there must be none).
func outside(t *testing.T, parent, root string) []string {
	var out []string
	filepath.Walk(parent, func(p string, info os.FileInfo, err error) error {
		if p == parent || p == root || strings.HasPrefix(p, root+string(filepath.Separator)) {
			return nil
		}
		out = append(out, p)
		return nil
	})
	return out
}

// TestHostileEntries: names and links that climb out are placed inside the root where
// containerd places them (and reported as escapes); what containerd refuses makes the result
// incomplete; nothing is written outside the tree and the walk goes on.
func TestHostileEntries(t *testing.T) {
	l := layer(t, true,
		entry{name: "../../escaped", body: "x1"},
		entry{name: "a/../../escaped2", body: "x2"},
		entry{name: "/etc/absolute", body: "stays inside"},
		entry{name: "up", typ: tar.TypeSymlink, link: "../../.."},
		entry{name: "up/escaped3", body: "x3"},
		entry{name: "abs", typ: tar.TypeSymlink, link: "/"},
		entry{name: "abs/tmp/escaped4", body: "x4"},
		entry{name: "loop1", typ: tar.TypeSymlink, link: "loop2"},
		entry{name: "loop2", typ: tar.TypeSymlink, link: "loop1"},
		entry{name: "loop1/x", body: "x"},
		entry{name: "hard", typ: tar.TypeLink, link: "../../etc/passwd"},
		entry{name: "dev/sda", typ: tar.TypeBlock},
		entry{name: strings.Repeat("d/", 3000) + "f", body: "deep"},
		entry{name: "ok.txt", body: "fine"},
	)
	res, parent := flatten(t, DefaultLimits, l)
	if got := outside(t, parent, res.Root); len(got) != 0 {
		t.Fatalf("written outside the root: %v", got)
	}
	if _, err := os.Stat("/tmp/escaped4"); err == nil {
		t.Fatal("wrote /tmp/escaped4 on the host")
	}
	want := map[Kind]int{Escape: 4, Loop: 1, Special: 1, TooLong: 1, Invalid: 1}
	if diff := cmp.Diff(want, kinds(res)); diff != "" {
		t.Errorf("issues by kind (-want +got):\n%s\n%+v", diff, res.Issues)
	}
	wantFiles := map[string]digest.Digest{
		"escaped": digest.FromString("x1"), "escaped2": digest.FromString("x2"), "escaped3": digest.FromString("x3"),
		"etc/absolute": digest.FromString("stays inside"), "tmp/escaped4": digest.FromString("x4"), "ok.txt": digest.FromString("fine"),
	}
	if diff := cmp.Diff(wantFiles, regular(res)); diff != "" {
		t.Errorf("regular files (-want +got):\n%s", diff)
	}
	if b, err := os.ReadFile(filepath.Join(res.Root, "etc/absolute")); err != nil || string(b) != "stays inside" {
		t.Errorf("absolute path not kept inside: %v", err)
	}
	if !res.Incomplete {
		t.Error("a loop, an over-long path and a dangling hard link left the result complete")
	}
}

// TestWhiteoutsHideLowerLayers: a whiteout removes what lower layers wrote, wherever it comes
// in its layer; where containerd would also remove what its own layer wrote (and the OCI spec
// would not), the tree follows containerd and the result is incomplete (ambiguous).
func TestWhiteoutsHideLowerLayers(t *testing.T) {
	lower := []entry{
		{name: "old.txt", body: "old"},
		{name: "app/", typ: tar.TypeDir},
		{name: "app/lower.txt", body: "lower"},
		{name: "app/sub/", typ: tar.TypeDir},
		{name: "app/sub/deep.txt", body: "deep"},
		{name: "x", body: "lower x"},
	}
	tests := []struct {
		name      string
		upper     []entry
		want      []string // regular files left
		ambiguous int
	}{
		{"opaque root last, own files listed with their dirs", []entry{
			{name: "app/", typ: tar.TypeDir}, {name: "app/eicar.com", body: "own"}, {name: ".wh..wh..opq"},
		}, []string{"app/eicar.com"}, 0},
		{"opaque app last", []entry{
			{name: "app/", typ: tar.TypeDir}, {name: "app/new.txt", body: "new"}, {name: "app/.wh..wh..opq"},
		}, []string{"app/new.txt", "old.txt", "x"}, 0},
		{"opaque app first", []entry{
			{name: "app/.wh..wh..opq"}, {name: "app/new.txt", body: "new"},
		}, []string{"app/new.txt", "old.txt", "x"}, 0},
		{"opaque app last keeps a relisted subdirectory but not its lower files", []entry{
			{name: "app/sub/", typ: tar.TypeDir}, {name: "app/sub/new.txt", body: "new"}, {name: "app/.wh..wh..opq"},
		}, []string{"app/sub/new.txt", "old.txt", "x"}, 0},
		{"opaque root last takes own files in directories only made for them", []entry{
			{name: "new/eicar.com", body: "own"}, {name: ".wh..wh..opq"},
		}, nil, 1},
		{"whiteout before own file", []entry{{name: ".wh.x"}, {name: "x", body: "upper x"}},
			[]string{"app/lower.txt", "app/sub/deep.txt", "old.txt", "x"}, 0},
		{"whiteout after own file", []entry{{name: "x", body: "upper x"}, {name: ".wh.x"}},
			[]string{"app/lower.txt", "app/sub/deep.txt", "old.txt"}, 1},
		{"whiteout of a lower directory", []entry{{name: ".wh.app"}},
			[]string{"old.txt", "x"}, 0},
		{"whiteout through a symlinked directory", []entry{{name: "link", typ: tar.TypeSymlink, link: "app"}, {name: "link/.wh.lower.txt"}},
			[]string{"app/sub/deep.txt", "old.txt", "x"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _ := flatten(t, DefaultLimits, layer(t, true, lower...), layer(t, true, tt.upper...))
			var got []string
			for p := range regular(res) {
				got = append(got, p)
			}
			sort.Strings(got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			if k := kinds(res); k[Ambiguous] != tt.ambiguous || len(res.Issues) != tt.ambiguous || res.Incomplete != (tt.ambiguous > 0) {
				t.Errorf("issues %+v, incomplete %v; want %d ambiguous", res.Issues, res.Incomplete, tt.ambiguous)
			}
			for _, p := range []string{"old.txt", "app/lower.txt", "app/sub"} {
				if _, listed := res.Files[p]; !listed {
					if _, err := os.Lstat(filepath.Join(res.Root, p)); err == nil {
						t.Errorf("%s removed from the record but still on disk", p)
					}
				}
			}
		})
	}
}

// TestNamesCleanedLikeContainerd: a name is cleaned and placed under the root before any limit
// applies; what is still too long, or what containerd refuses, makes the result incomplete.
func TestNamesCleanedLikeContainerd(t *testing.T) {
	eicar := "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
	tests := []struct {
		name    string
		entries []entry
		want    map[string]string // regular files and their contents
		kinds   map[Kind]int
	}{
		{"dot-slash padding past the path limit", []entry{{name: strings.Repeat("./", 2100) + "app/eicar.com", body: eicar}},
			map[string]string{"app/eicar.com": eicar}, map[Kind]int{}},
		{"absolute", []entry{{name: "/abs/x", body: "a"}}, map[string]string{"abs/x": "a"}, map[Kind]int{}},
		{"dot-dot inside", []entry{{name: "a/../b/x", body: "b"}}, map[string]string{"b/x": "b"}, map[Kind]int{}},
		{"dot-dot above the root", []entry{{name: "../../etc/x", body: "e"}}, map[string]string{"etc/x": "e"}, map[Kind]int{Escape: 1}},
		{"still too long once cleaned", []entry{{name: strings.Repeat("d/", 3000) + "f", body: "deep"}}, map[string]string{}, map[Kind]int{TooLong: 1}},
		{"a symlink that climbs", []entry{{name: "up", typ: tar.TypeSymlink, link: "../../.."}, {name: "up/etc/x", body: "u"}},
			map[string]string{"etc/x": "u"}, map[Kind]int{Escape: 1}},
		{"a symlink to a directory", []entry{{name: "real/", typ: tar.TypeDir}, {name: "s", typ: tar.TypeSymlink, link: "real/../real"}, {name: "s/x", body: "r"}},
			map[string]string{"real/x": "r"}, map[Kind]int{}},
		{"a hard link that climbs", []entry{{name: "etc/passwd", body: "root:x:0:0"}, {name: "copy", typ: tar.TypeLink, link: "../../etc/passwd"}},
			map[string]string{"etc/passwd": "root:x:0:0", "copy": "root:x:0:0"}, map[Kind]int{Escape: 1}},
		{"a hard link through a symlinked directory", []entry{{name: "etc/passwd", body: "p"}, {name: "e", typ: tar.TypeSymlink, link: "/etc"}, {name: "copy", typ: tar.TypeLink, link: "e/passwd"}},
			map[string]string{"etc/passwd": "p", "copy": "p"}, map[Kind]int{}},
		{"a hard link to nothing", []entry{{name: "copy", typ: tar.TypeLink, link: "missing"}}, map[string]string{}, map[Kind]int{Invalid: 1}},
		{"a hard link to itself", []entry{{name: "f", body: "f"}, {name: "f", typ: tar.TypeLink, link: "f"}}, map[string]string{}, map[Kind]int{Invalid: 1}},
		{"a file under a file", []entry{{name: "f", body: "f"}, {name: "f/x", body: "x"}}, map[string]string{"f": "f"}, map[Kind]int{Invalid: 1}},
		{"a symlink loop", []entry{{name: "a", typ: tar.TypeSymlink, link: "b"}, {name: "b", typ: tar.TypeSymlink, link: "a"}, {name: "a/x", body: "x"}},
			map[string]string{}, map[Kind]int{Loop: 1}},
		{"an empty whiteout", []entry{{name: "d/.wh."}}, map[string]string{}, map[Kind]int{Invalid: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _ := flatten(t, DefaultLimits, layer(t, true, tt.entries...))
			want := map[string]digest.Digest{}
			for p, body := range tt.want {
				want[p] = digest.FromString(body)
			}
			if diff := cmp.Diff(want, regular(res)); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.kinds, kinds(res)); diff != "" {
				t.Errorf("issues by kind (-want +got):\n%s\n%+v", diff, res.Issues)
			}
			incomplete := false
			for k := range tt.kinds {
				incomplete = incomplete || k.Incomplete()
			}
			if res.Incomplete != incomplete {
				t.Errorf("incomplete %v, want %v", res.Incomplete, incomplete)
			}
		})
	}
}

// TestReplacements: what a later entry does to what is at its path, as containerd does it.
func TestReplacements(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]entry
		want   map[string]string
		links  map[string]string
	}{
		{"duplicate entries in one layer: the last wins", [][]entry{{{name: "f", body: "one"}, {name: "f", body: "two"}}},
			map[string]string{"f": "two"}, nil},
		{"a symlink replaced by a file", [][]entry{{{name: "t", body: "target"}, {name: "s", typ: tar.TypeSymlink, link: "t"}}, {{name: "s", body: "file"}}},
			map[string]string{"t": "target", "s": "file"}, nil},
		{"a file replaced by a symlink", [][]entry{{{name: "s", body: "file"}}, {{name: "s", typ: tar.TypeSymlink, link: "t"}}},
			map[string]string{}, map[string]string{"s": "t"}},
		{"a directory replaced by a file", [][]entry{{{name: "d/", typ: tar.TypeDir}, {name: "d/x", body: "x"}}, {{name: "d", body: "file"}}},
			map[string]string{"d": "file"}, nil},
		{"a file replaced by a directory", [][]entry{{{name: "d", body: "file"}}, {{name: "d/", typ: tar.TypeDir}, {name: "d/x", body: "x"}}},
			map[string]string{"d/x": "x"}, nil},
		{"a directory merged with a directory", [][]entry{{{name: "d/", typ: tar.TypeDir}, {name: "d/x", body: "x"}}, {{name: "d/", typ: tar.TypeDir}, {name: "d/y", body: "y"}}},
			map[string]string{"d/x": "x", "d/y": "y"}, nil},
		// through a lower layer's symlink, the snapshotters disagree: see overlay_test.go
		{"a file written through a symlinked directory of its own layer", [][]entry{{{name: "real/", typ: tar.TypeDir}}, {{name: "s", typ: tar.TypeSymlink, link: "/real"}, {name: "s/x", body: "x"}}},
			map[string]string{"real/x": "x"}, map[string]string{"s": "/real"}},
		{"a hard link to a symlink is a symlink", [][]entry{{{name: "s", typ: tar.TypeSymlink, link: "t"}, {name: "h", typ: tar.TypeLink, link: "s"}}},
			map[string]string{}, map[string]string{"s": "t", "h": "t"}},
		{"a device over a file", [][]entry{{{name: "dev/null", body: "file"}}, {{name: "dev/null", typ: tar.TypeChar}}},
			map[string]string{}, nil},
		{"a PAX global header removes what is at its path in its own layer", [][]entry{{{name: "pax_global_header", body: "f"}, {name: "pax_global_header", typ: tar.TypeXGlobalHeader}}},
			map[string]string{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _ := flatten(t, DefaultLimits, layers(t, false, tt.layers)...)
			want := map[string]digest.Digest{}
			for p, body := range tt.want {
				want[p] = digest.FromString(body)
			}
			if diff := cmp.Diff(want, regular(res)); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			links := map[string]string{}
			for p, f := range res.Files {
				if f.Link != "" {
					links[p] = f.Link
				}
			}
			if diff := cmp.Diff(tt.links, links, cmpEmpty); diff != "" {
				t.Errorf("symlinks (-want +got):\n%s", diff)
			}
			if res.Incomplete {
				t.Errorf("incomplete: %+v", res.Issues)
			}
		})
	}
}

var cmpEmpty = cmp.Transformer("empty", func(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
})

// TestUnreadableEntriesMakeIncomplete: entries the scanner cannot read as a runtime would
// leave the result incomplete, and the walk goes on past them; devices do not (they hold no
// bytes, and are recorded where containerd makes them).
func TestUnreadableEntriesMakeIncomplete(t *testing.T) {
	lim := DefaultLimits
	lim.MaxFileSize = 64
	tests := []struct {
		name       string
		entry      entry
		kind       Kind
		incomplete bool
		want       map[string]string // regular files besides after.txt
	}{
		{"a file over the size limit", entry{name: "big", body: strings.Repeat("x", 100)}, Limit, true, map[string]string{"big": ""}},
		{"an old GNU sparse entry", entry{raw: tartest.OldGNUSparse("app/x", "hello", 10)}, Sparse, true, map[string]string{"app/x": "hello\x00\x00\x00\x00\x00"}},
		{"a PAX GNU sparse entry", entry{raw: tartest.PaxSparse("app/y", "hello", 8)}, Sparse, true, map[string]string{"app/y": "hello\x00\x00\x00"}},
		{"an unknown tar type", entry{raw: tartest.RawHeader("app/z", 'V', 0, false, nil)}, Unsupported, true, map[string]string{}},
		{"a contiguous-file entry", entry{raw: append(tartest.RawHeader("app/c", '7', 5, false, nil), tartest.Pad([]byte("hello"))...)}, Unsupported, true, map[string]string{}},
		{"a character device", entry{name: "app/tty", typ: tar.TypeChar}, Special, false, map[string]string{}},
		{"a fifo", entry{name: "app/fifo", typ: tar.TypeFifo}, Special, false, map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, _ := flatten(t, lim, layer(t, true, tt.entry, entry{name: "after.txt", body: "after"}))
			if res.Incomplete != tt.incomplete || len(res.Issues) != 1 || res.Issues[0].Kind != tt.kind {
				t.Fatalf("incomplete %v issues %+v; want incomplete %v and one %s", res.Incomplete, res.Issues, tt.incomplete, tt.kind)
			}
			want := map[string]digest.Digest{"after.txt": digest.FromString("after")}
			for p, body := range tt.want {
				want[p] = ""
				if body != "" {
					want[p] = digest.FromString(body)
				}
			}
			if diff := cmp.Diff(want, regular(res)); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWrittenPerLayer: every layer's bytes are recorded, including those a later layer
// overwrote or deleted.
func TestWrittenPerLayer(t *testing.T) {
	l1 := layer(t, true, entry{name: "app/eicar.com", body: "bad"}, entry{name: "app/keep", body: "k"})
	l2 := layer(t, true, entry{name: "app/eicar.com", body: "overwritten"})
	l3 := layer(t, true, entry{name: "app/.wh.eicar.com"}, entry{name: "app/.wh.keep"})
	res, _ := flatten(t, DefaultLimits, l1, l2, l3)
	want := []Written{
		{Path: "app/eicar.com", Layer: l1.Digest, Size: 3, SHA256: digest.FromString("bad")},
		{Path: "app/keep", Layer: l1.Digest, Size: 1, SHA256: digest.FromString("k")},
		{Path: "app/eicar.com", Layer: l2.Digest, Size: 11, SHA256: digest.FromString("overwritten")},
	}
	if diff := cmp.Diff(want, res.Written); diff != "" {
		t.Errorf("written (-want +got):\n%s", diff)
	}
	if len(regular(res)) != 0 {
		t.Errorf("files left: %v", res.Files)
	}
}

func TestDecompressionBomb(t *testing.T) {
	big := strings.Repeat("\x00", 64<<20) // compresses to ~64 KiB
	l := layer(t, true, entry{name: "zeros", body: big})
	lim := DefaultLimits
	lim.MaxBytes = 8 << 20
	res, _ := flatten(t, lim, l)
	if !res.Incomplete || res.Expanded > lim.MaxBytes+1<<20 {
		t.Fatalf("bomb not bounded: incomplete %v, expanded %d", res.Incomplete, res.Expanded)
	}
	if len(res.Issues) == 0 || res.Issues[0].Kind != Limit {
		t.Errorf("issues %+v", res.Issues)
	}
}

func TestTruncatedLayer(t *testing.T) {
	l := layer(t, true, entry{name: "a", body: strings.Repeat("abc", 100000)}, entry{name: "b", body: "b"})
	full, _ := l.Open()
	b, _ := io.ReadAll(full)
	cut := b[:len(b)/2]
	l.Open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(cut)), nil }
	res, _ := flatten(t, DefaultLimits, l)
	if !res.Incomplete || len(res.Issues) != 1 || res.Issues[0].Kind != Truncated {
		t.Fatalf("truncated layer: %+v", res)
	}
	if _, ok := res.Files["a"]; ok {
		t.Error("a partial file was kept")
	}
}

func TestEntryAndSizeLimits(t *testing.T) {
	var es []entry
	for i := range 50 {
		es = append(es, entry{name: "f" + string(rune('a'+i%26)) + string(rune('a'+i/26)), body: "x"})
	}
	lim := DefaultLimits
	lim.MaxEntries = 10
	res, _ := flatten(t, lim, layer(t, true, es...))
	if !res.Incomplete || len(res.Files) > 10 {
		t.Errorf("entry limit: %d files, incomplete %v", len(res.Files), res.Incomplete)
	}
	lim = DefaultLimits
	lim.MaxFileSize = 10
	res, _ = flatten(t, lim, layer(t, true, entry{name: "big", body: strings.Repeat("x", 100)}, entry{name: "small", body: "x"}))
	if f := res.Files["big"]; f.Size != 100 || f.SHA256 != "" {
		t.Errorf("big file: %+v", f)
	}
	if _, err := os.Stat(filepath.Join(res.Root, "big")); err == nil {
		t.Error("an over-limit file was written")
	}
	// an unread file leaves the result incomplete, but the walk goes on
	if _, ok := res.Files["small"]; !ok || !res.Incomplete {
		t.Errorf("over-limit file: small recorded %v, incomplete %v", ok, res.Incomplete)
	}
}

type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(20 * time.Millisecond)
	if len(p) > 512 {
		p = p[:512]
	}
	return s.r.Read(p)
}

func TestTimeLimit(t *testing.T) {
	l := layer(t, false, entry{name: "slow", body: strings.Repeat("x", 1<<20)})
	full, _ := l.Open()
	b, _ := io.ReadAll(full)
	l.Open = func() (io.ReadCloser, error) { return io.NopCloser(slowReader{bytes.NewReader(b)}), nil }
	lim := DefaultLimits
	lim.Timeout = 300 * time.Millisecond
	start := time.Now()
	res, _ := flatten(t, lim, l)
	if time.Since(start) > 3*time.Second || !res.Incomplete {
		t.Fatalf("time limit: took %s, incomplete %v", time.Since(start), res.Incomplete)
	}
}

func TestKeepAndInspect(t *testing.T) {
	l1 := layer(t, true, entry{name: "etc/secret.env", body: "TOKEN=abc"}, entry{name: "usr/bin/tool", body: "elf", mode: 0o755},
		entry{name: "usr/bin/script", body: "#!/bin/sh", mode: 0o755}, entry{name: "big.txt", body: strings.Repeat("x", 100)})
	l2 := layer(t, true, entry{name: "etc/secret.env", body: "TOKEN=def"}, entry{name: "link", typ: tar.TypeLink, link: "usr/bin/tool"})
	var seen []string
	opts := Options{
		Keep: func(p string, fi os.FileInfo) (bool, Check) {
			if strings.HasPrefix(p, "usr/bin/") {
				return false, func(r io.ReaderAt, size int64) (bool, error) {
					b := make([]byte, 3)
					n, _ := r.ReadAt(b, 0)
					return string(b[:n]) == "elf", nil
				}
			}
			return false, nil
		},
		Wants:      func(p string, size int64) bool { return strings.HasPrefix(p, "etc/") },
		InspectMax: 64,
		Inspect: func(p string, l digest.Digest, data []byte) {
			seen = append(seen, p+"="+string(data))
		},
	}
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	res, err := Flatten(context.Background(), dir, []Layer{l1, l2}, DefaultLimits, opts)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(seen, ",") != "etc/secret.env=TOKEN=abc,etc/secret.env=TOKEN=def" {
		t.Errorf("inspected %v (both layers' versions, nothing else)", seen)
	}
	for _, p := range []string{"etc/secret.env", "usr/bin/script"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err == nil {
			t.Errorf("%s, not kept, is in the tree", p)
		}
	}
	for _, p := range []string{"usr/bin/tool", "link"} {
		if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(b) != "elf" {
			t.Errorf("kept file %s: %q %v", p, b, err)
		}
	}
	if f := res.Files["etc/secret.env"]; f.SHA256 != digest.FromString("TOKEN=def") || f.Layer != l2.Digest {
		t.Errorf("a file not kept is still recorded and hashed: %+v", f)
	}
	if f := res.Files["big.txt"]; f.SHA256 != digest.FromString(strings.Repeat("x", 100)) {
		t.Errorf("big.txt hash: %+v", f)
	}
	if _, ok := res.Files["link"]; !ok || len(res.Issues) != 0 {
		t.Errorf("hard link: %+v issues %+v", res.Files["link"], res.Issues)
	}
}

// zeroExecutable is a gzipped layer holding one executable of size zero bytes.
func zeroExecutable(t testing.TB, name string, size int64) Layer {
	b := tartest.ZeroFile(name, size, 0o755)
	return Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

// zeroSize is 1 GiB, or 256 MiB with -short or the race detector (which slows byte loops
// tenfold): either way far more than the allocation bound.
func zeroSize() int64 {
	if testing.Short() || tartest.RaceOn() {
		return 256 << 20
	}
	return 1 << 30
}

// TestCheckStreams: a file whose keeping depends on its bytes is streamed to the tree and read
// there, never held in memory: flattening a 1 GiB executable allocates a few MiB.
func TestCheckStreams(t *testing.T) {
	size := zeroSize()
	l := zeroExecutable(t, "usr/bin/huge", size)
	checked := int64(0)
	opts := Options{Keep: func(p string, fi os.FileInfo) (bool, Check) {
		return false, func(r io.ReaderAt, size int64) (bool, error) {
			checked = size
			b := make([]byte, 4)
			_, err := r.ReadAt(b, 0)
			return string(b) == "\x7fELF", err
		}
	}}
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	res, err := Flatten(context.Background(), dir, []Layer{l}, DefaultLimits, opts)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("flattening a %d MiB executable of zeros (%d bytes gzipped) allocated %.1f MiB", size>>20, len(mustRead(t, l)), float64(alloc)/(1<<20))
	if alloc > 64<<20 {
		t.Errorf("allocated %d MiB, want < 64 MiB", alloc>>20)
	}
	if checked != size || res.Files["usr/bin/huge"].SHA256 == "" || res.Incomplete {
		t.Errorf("checked %d bytes, file %+v, issues %+v", checked, res.Files["usr/bin/huge"], res.Issues)
	}
	if _, err := os.Stat(filepath.Join(dir, "usr/bin/huge")); err == nil {
		t.Error("a file its check did not keep is still in the tree")
	}
}

func mustRead(t testing.TB, l Layer) []byte {
	rc, err := l.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return b
}
