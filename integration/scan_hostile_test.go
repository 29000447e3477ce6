//go:build integration

package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestScanHostileLayers pushes images whose layers attack the scanner — path traversal out of
// the root, symlink loops and escapes, a hard link out, a decompression bomb, a truncated gzip
// stream — and checks each scan is bounded (bytes, time), reported, and wrote nothing outside
// its temporary tree, with the server still healthy.
func TestScanHostileLayers(t *testing.T) {
	scanTmp := t.TempDir()
	gh := startGatehouse(t, fmt.Sprintf("scan: {max_expanded: 32MiB, timeout: 30s, temp_dir: %s}\n", scanTmp))
	nonce := make([]byte, 6)
	rand.Read(nonce)
	escapee := "gatehouse-escape-" + hex.EncodeToString(nonce)

	// a layer of hostile entries followed by a 128 MiB run of zeros (a bomb: ~130 KiB gzipped)
	var tb bytes.Buffer
	zw := gzip.NewWriter(&tb)
	tw := tar.NewWriter(zw)
	entries := []tar.Header{
		{Name: "../../../../../../../../tmp/" + escapee, Typeflag: tar.TypeReg, Size: 1},
		{Name: "loop1", Typeflag: tar.TypeSymlink, Linkname: "loop2"},
		{Name: "loop2", Typeflag: tar.TypeSymlink, Linkname: "loop1"},
		{Name: "loop1/x", Typeflag: tar.TypeReg, Size: 1},
		{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../tmp"},
		{Name: "up/" + escapee + "-2", Typeflag: tar.TypeReg, Size: 1},
		{Name: "hard", Typeflag: tar.TypeLink, Linkname: "../../../../etc/passwd"},
	}
	for _, h := range entries {
		h.Mode = 0o644
		tw.WriteHeader(&h)
		if h.Size == 1 {
			tw.Write([]byte("x"))
		}
	}
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 128 << 20})
	zero := make([]byte, 1<<20)
	for range 128 {
		tw.Write(zero)
	}
	tw.Close()
	zw.Close()
	bomb := tb.Bytes()

	// a gzip stream cut in the middle
	var gb bytes.Buffer
	gz := gzip.NewWriter(&gb)
	tw = tar.NewWriter(gz)
	body := bytes.Repeat([]byte("truncated layer "), 1<<16)
	tw.WriteHeader(&tar.Header{Name: "big.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
	tw.Write(body)
	tw.Close()
	gz.Close()
	truncated := gb.Bytes()[:gb.Len()/2]

	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"User":"app"},"rootfs":{"type":"layers","diff_ids":[]}}`)
	push := func(repo string, layer []byte) string {
		cd, ld := pushBlob(t, gh, repo, cfg), pushBlob(t, gh, repo, layer)
		m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`, cd, len(cfg), ld, len(layer)))
		if r := do(t, gh, "PUT", "/v2/"+repo+"/manifests/v1", map[string]string{"Content-Type": ociManifest}, m); r.status != 201 {
			t.Fatalf("push %s: %d %s", repo, r.status, r.body)
		}
		return sha(m)
	}
	bombDigest := push("hostile/bomb", bomb)
	truncDigest := push("hostile/truncated", truncated)

	type report struct {
		Complete bool
		Duration string
		Result   struct {
			Expanded int64
			Findings []struct{ ID, Path, Title string }
		}
	}
	get := func(d string) report {
		_, body := waitScan(t, gh, d, func(scanReport) bool { return true })
		var r report
		json.Unmarshal(body, &r)
		return r
	}
	r := get(bombDigest)
	ids := map[string]int{}
	for _, f := range r.Result.Findings {
		ids[f.ID]++
	}
	// GH-LAYER-LOOP: loop1/x placed under the loop, and each of the symlinks loop1 and loop2
	if r.Complete || ids["GH-LAYER-ESCAPE"] != 3 || ids["GH-LAYER-LOOP"] != 3 || ids["GH-LAYER-LIMIT"] != 1 || ids["GH-LAYER-INCOMPLETE"] != 1 {
		t.Errorf("hostile layer report: complete %v, findings %v", r.Complete, r.Result.Findings)
	}
	if r.Result.Expanded > 33<<20 {
		t.Errorf("the bomb was read to %d expanded bytes; the limit is 32 MiB", r.Result.Expanded)
	}
	if d, err := time.ParseDuration(r.Duration); err != nil || d > 30*time.Second {
		t.Errorf("scan took %s", r.Duration)
	}
	r = get(truncDigest)
	if r.Complete || !strings.Contains(fmt.Sprint(r.Result.Findings), "GH-LAYER-TRUNCATED") {
		t.Errorf("truncated layer report: %+v", r)
	}

	for _, p := range []string{"/tmp/" + escapee, "/tmp/" + escapee + "-2", filepath.Join(filepath.Dir(scanTmp), escapee)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("the scan wrote %s outside its tree", p)
		}
	}
	left, _ := os.ReadDir(scanTmp)
	if len(left) != 0 {
		t.Errorf("the scan left %d entries in its temporary directory", len(left))
	}
	resp, err := http.Get(gh.url("/healthz"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("server unhealthy after hostile scans: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	gh.healthy(t)
}
