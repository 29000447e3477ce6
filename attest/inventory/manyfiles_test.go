package inventory

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// manyFilesLayer is a gzip layer of n files of body each, a thousand to a directory: the
// adversarial round's layer of 500,000 tiny files (7 MB gzipped).
func manyFilesLayer(tb testing.TB, n int, body []byte) layerfs.Layer {
	tb.Helper()
	b := inventorytest.ManyFiles(n, body, "", nil)
	return layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

// peakRSS is this process's VmHWM in MiB; resetPeakRSS starts it again from the current RSS.
func peakRSS() float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// TestManyTinyFiles: a layer of 20,000 tiny files (GATEHOUSE_MANYFILES=500000 for the
// finding's 500,000) goes through the secret detectors and layerfs in bounded time; it prints
// the time, the peak RSS, the bytes allocated and the heap kept per entry.
func TestManyTinyFiles(t *testing.T) {
	n := 20_000
	if s := os.Getenv("GATEHOUSE_MANYFILES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	fp, _ := NewFingerprinter([]byte("a test installation's key"))
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"10-byte files", bytes.Repeat([]byte("x"), 10)},
		{"64-byte ELF heads", append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 57)...)},
		{"64-byte text files", bytes.Repeat([]byte("x"), 64)},
	} {
		t.Run(c.name, func(t *testing.T) {
			layer := manyFilesLayer(t, n, c.body)
			dir := filepath.Join(t.TempDir(), "root")
			os.Mkdir(dir, 0o755)
			runtime.GC()
			debug.FreeOSMemory()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			resetPeakRSS()
			start := time.Now()
			ex, err := Start(context.Background(), 2, fp)
			if err != nil {
				t.Fatal(err)
			}
			lim := layerfs.DefaultLimits
			lim.MaxEntries = 2 * n
			tree, err := layerfs.Flatten(context.Background(), dir, []layerfs.Layer{layer}, lim, ex.Options())
			if err != nil {
				t.Fatal(err)
			}
			inv, err := ex.Finish(context.Background(), tree)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			peak := peakRSS()
			runtime.GC()
			var kept runtime.MemStats
			runtime.ReadMemStats(&kept)
			t.Logf("%d files: %s, peak RSS %.0f MiB, %.0f MiB allocated (%.0f B/entry), %d GCs, heap kept with the tree %.0f B/entry, %d secrets",
				n, took.Round(time.Millisecond), peak, float64(after.TotalAlloc-before.TotalAlloc)/(1<<20),
				float64(after.TotalAlloc-before.TotalAlloc)/float64(n), after.NumGC-before.NumGC,
				float64(int64(kept.HeapAlloc)-int64(before.HeapAlloc))/float64(n), len(inv.Secrets))
			runtime.KeepAlive(tree)
			// the cost that made the finding: the engine's 4 MiB buffer a file (4.2 MB allocated
			// an entry); time is printed, not asserted (the race detector runs this too)
			if perEntry := float64(after.TotalAlloc-before.TotalAlloc) / float64(n); perEntry > 1<<20 {
				t.Errorf("%.0f bytes allocated an entry; want well under 1 MiB (the engine's buffer a file allocated 4.2 MB)", perEntry)
			}
		})
	}
}

// TestDetectBytesAsEngine: detectBytes finds in a file what the Veles engine's Detect finds.
func TestDetectBytesAsEngine(t *testing.T) {
	e, err := secretEngine()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	for _, text := range []string{
		"", "x", "Z2hzX", "a://b@c", "xxxxxxxxxx",
		keyPEM,
		"machine: " + keyPEM + "\nurl = https://user:hunter2@git.example.com/repo.git\n",
		"token=ghp_" + strings.Repeat("A", 36) + "\naws_access_key_id = AKIAABCDEFGHIJKLMNOP\naws_secret_access_key = " + strings.Repeat("a", 40) + "\n",
		strings.Repeat("filler line\n", 20000) + "npm_" + strings.Repeat("b", 36) + "\n" + keyPEM, // 240 KB
	} {
		want, err := e.Detect(context.Background(), strings.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		got, err := detectBytes(context.Background(), []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%.40q: detectBytes found %v, the engine %v", text, got, want)
		}
		if len(text) > 100 && len(want) == 0 {
			t.Errorf("%.40q: the engine found nothing", text)
		}
	}
}
