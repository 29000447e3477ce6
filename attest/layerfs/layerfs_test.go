package layerfs

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
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
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: mode, Linkname: e.link}
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

func TestHostileEntries(t *testing.T) {
	l := layer(t, true,
		entry{name: "../../escaped", body: "x"},
		entry{name: "a/../../escaped2", body: "x"},
		entry{name: "/etc/absolute", body: "stays inside"},
		entry{name: "up", typ: tar.TypeSymlink, link: "../../.."},
		entry{name: "up/escaped3", body: "x"},
		entry{name: "abs", typ: tar.TypeSymlink, link: "/"},
		entry{name: "abs/tmp/escaped4", body: "x"},
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
	kinds := map[string]int{}
	for _, is := range res.Issues {
		kinds[is.Kind]++
	}
	if kinds["escape"] != 4 || kinds["loop"] != 1 || kinds["special"] != 1 || kinds["toolong"] != 1 {
		t.Errorf("issues by kind %v: %+v", kinds, res.Issues)
	}
	if b, err := os.ReadFile(filepath.Join(res.Root, "etc/absolute")); err != nil || string(b) != "stays inside" {
		t.Errorf("absolute path not kept inside: %v", err)
	}
	// a path through a symlink to "/" lands where it would inside the container
	if f, ok := res.Files["tmp/escaped4"]; !ok || f.Layer != l.Digest {
		t.Errorf("abs/tmp/escaped4 was not resolved through abs -> / : %+v", res.Files)
	}
	if _, ok := res.Files["ok.txt"]; !ok || res.Incomplete {
		t.Errorf("the walk did not go on past hostile entries")
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
	if len(res.Issues) == 0 || res.Issues[0].Kind != "limit" {
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
	if !res.Incomplete || len(res.Issues) != 1 || res.Issues[0].Kind != "truncated" {
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
	if _, ok := res.Files["small"]; !ok || res.Incomplete {
		t.Error("the walk stopped at an over-limit file")
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
	l1 := layer(t, true, entry{name: "etc/secret.env", body: "TOKEN=abc"}, entry{name: "usr/bin/tool", body: "elf", mode: 0o755}, entry{name: "big.txt", body: strings.Repeat("x", 100)})
	l2 := layer(t, true, entry{name: "etc/secret.env", body: "TOKEN=def"}, entry{name: "link", typ: tar.TypeLink, link: "usr/bin/tool"})
	var seen []string
	opts := Options{
		Keep: func(p string, fi os.FileInfo) (bool, func([]byte) bool) {
			if strings.HasPrefix(p, "usr/bin/") {
				return false, func(b []byte) bool { return string(b) == "elf" }
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
	if _, err := os.Stat(filepath.Join(dir, "etc/secret.env")); err == nil {
		t.Error("a file not kept was written")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "usr/bin/tool")); err != nil || string(b) != "elf" {
		t.Errorf("kept file: %q %v", b, err)
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
