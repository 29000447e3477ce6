package layerfs_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"io/fs"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs/tartest"
)

// FuzzFlatten: no layer (a pushed blob, gzip, zstd or plain tar, read by the scan) makes Flatten
// panic or write outside its directory; what it cannot read as containerd would is an issue.
// go test runs the seeds; `go test -fuzz FuzzFlatten ./attest/layerfs/` searches further.
func FuzzFlatten(f *testing.F) {
	tarOf := func(hdrs ...*tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hdrs {
			tw.WriteHeader(h)
			if h.Typeflag == tar.TypeReg {
				tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			}
		}
		tw.Close()
		return b.Bytes()
	}
	plain := tarOf(
		&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Size: 3, Mode: 0o644},
		&tar.Header{Name: "usr/bin/tool", Typeflag: tar.TypeReg, Size: 4, Mode: 0o4755},
		&tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "../../../usr/lib"},
		&tar.Header{Name: "lib/x.so", Typeflag: tar.TypeReg, Size: 1},
		&tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: "etc/os-release"},
		&tar.Header{Name: "etc/.wh.os-release", Typeflag: tar.TypeReg},
		&tar.Header{Name: "var/.wh..wh..opq", Typeflag: tar.TypeReg},
		&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3},
	)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	for _, seed := range [][]byte{plain, gz.Bytes(), tartest.OldGNUSparse("a/s", "hello", 10), tartest.PaxSparse("a/p", "hi", 8),
		tartest.RawHeader("../../escape", '0', 0, false, nil), []byte("not a layer"), {0x28, 0xb5, 0x2f, 0xfd}} {
		f.Add(seed)
	}
	lim := layerfs.Limits{MaxBytes: 1 << 20, MaxEntries: 200, MaxFileSize: 64 << 10, MaxPathLen: 256, Timeout: 5 * time.Second}
	f.Fuzz(func(t *testing.T, b []byte) {
		outside := t.TempDir()
		dir := outside + "/root"
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		l := layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
		keep := layerfs.Options{Keep: func(string, fs.FileInfo) (bool, layerfs.Check) { return true, nil }}
		if _, err := layerfs.Flatten(context.Background(), dir, []layerfs.Layer{l, l}, lim, keep); err != nil {
			return
		}
		if es, _ := os.ReadDir(outside); len(es) != 1 {
			t.Fatalf("Flatten wrote beside its directory: %v", es)
		}
	})
}
