//go:build integration

package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
)

// manyFilesTimeout is TestScanManyFiles' scan.timeout: the scan must end within it.
const manyFilesTimeout = 40 * time.Second

// TestScanManyFiles: an image of one layer of 150,000 tiny files (the secret detectors ran once
// a file through a 4 MiB buffer: 500,000 took 4m42s and 1.27 GB) is scanned within scan.timeout
// with the server's peak RSS under 256 MiB, and the private key among them is still found: the
// push is refused for it. The server stays healthy.
func TestScanManyFiles(t *testing.T) {
	gh := startGatehouse(t, fmt.Sprintf("scan: {workers: 1, timeout: %s}\n", manyFilesTimeout)+enforcing)
	gateDB(t, gh)
	pid := gh.cmd.Process.Pid
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	const n = 149_000 // with their 149 directories and the key, within the default scan.max_entries (150,000)
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"10-byte files", bytes.Repeat([]byte("x"), 10)},
		{"64-byte text files", bytes.Repeat([]byte("y"), 64)},
	} {
		t.Run(c.name, func(t *testing.T) {
			layer := inventorytest.ManyFiles(n, c.body, "d7/id_ecdsa", keyPEM)
			t.Logf("%d files of %d bytes: a layer of %d KiB", n, len(c.body), len(layer)>>10)
			repo := "ci/many" + strings.ReplaceAll(strings.Fields(c.name)[0], "-", "")
			r, m, took, peak := measuredPush(t, gh, pid, repo, c.name, layer)
			if r.status != http.StatusForbidden || !strings.Contains(string(r.body), `"rule":"GH-POL-SECRET"`) {
				t.Errorf("push: %d %.800s; want 403 for GH-POL-SECRET (the key in d7/id_ecdsa)", r.status, r.body)
			}
			rep, _ := waitScan(t, gh, sha(m), func(r scanReport) bool { return r.Verdict != nil })
			d, _ := time.ParseDuration(rep.Duration)
			t.Logf("scan took %s (complete %v)", d, rep.Complete)
			found := false
			for _, f := range rep.Result.Findings {
				found = found || f.ID == "GH-SECRET-PRIVATEKEY" && f.Path == "d7/id_ecdsa"
			}
			if !found || !rep.Complete || rep.Error != "" {
				t.Errorf("report: complete %v, error %q, findings %+v; want complete, GH-SECRET-PRIVATEKEY at d7/id_ecdsa", rep.Complete, rep.Error, rep.Result.Findings)
			}
			if took > manyFilesTimeout || d > manyFilesTimeout {
				t.Errorf("the scan took %s (the push %s); want within scan.timeout %s", d, took, manyFilesTimeout)
			}
			if peak >= 256 {
				t.Errorf("peak RSS %.0f MiB; want under 256 MiB", peak)
			}
		})
	}
	if r, err := http.Get(gh.url("/healthz")); err != nil || r.StatusCode != http.StatusOK {
		t.Fatalf("the server is not healthy: %v %v", r, err)
	}
}
