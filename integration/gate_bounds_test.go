//go:build integration

package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs/tartest"
)

// zeroLayer is a gzipped tar holding one file of size zero bytes.
func zeroLayer(t *testing.T, name string, size int64, mode int64) []byte {
	t.Helper()
	return tartest.ZeroFile(name, size, mode)
}

// pushZeroImage pushes an image of the given layers to repo:tag over HTTP and returns its digest.
func pushZeroImage(t *testing.T, gh *server, repo, tag, note string, layers ...[]byte) (string, []byte) {
	t.Helper()
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"User":"app","Labels":{"note":%q}}}`, note))
	pushBlob(t, gh, repo, cfg)
	var ls []string
	for _, l := range layers {
		pushBlob(t, gh, repo, l)
		ls = append(ls, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, sha(l), len(l)))
	}
	m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		sha(cfg), len(cfg), strings.Join(ls, ",")))
	return sha(m), m
}

// putManifest pushes an image manifest; safe off the test's goroutine.
func putManifest(gh *server, repo, ref string, m []byte) (int, error) {
	req, _ := http.NewRequest("PUT", gh.url("/v2/"+repo+"/manifests/"+ref), bytes.NewReader(m))
	req.Header.Set("Content-Type", ociManifest)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// vmHWM is the peak resident set of a process, in MiB.
func vmHWM(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// TestZeroExecutablesBoundedMemory: a 1 GiB executable of zeros (about 1 MiB pushed), three
// images of it at once: every scan completes, at most scan.workers at a time, and the server's
// peak resident memory stays under 256 MiB.
func TestZeroExecutablesBoundedMemory(t *testing.T) {
	gh := startGatehouse(t, "scan: {workers: 2}\n")
	layer := zeroLayer(t, "usr/bin/huge", 1<<30, 0o755)
	var digests []string
	var wg sync.WaitGroup
	for i := range 3 {
		d, m := pushZeroImage(t, gh, fmt.Sprintf("team/huge%d", i), "v1", fmt.Sprint(i), layer)
		digests = append(digests, d)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, err := putManifest(gh, fmt.Sprintf("team/huge%d", i), "v1", m); err != nil || status != http.StatusCreated {
				t.Errorf("push: %d %v", status, err)
			}
		}()
	}
	wg.Wait()
	for _, d := range digests {
		waitScan(t, gh, d, func(r scanReport) bool { return r.Complete })
	}
	peak := vmHWM(t, gh.cmd.Process.Pid)
	t.Logf("peak RSS of the server after three concurrent scans of a 1 GiB zero executable: %.0f MiB (limit 256 MiB)", peak)
	if peak >= 256 {
		t.Errorf("peak RSS %.0f MiB, want < 256 MiB", peak)
	}
	if strings.Contains(metricsText(t, gh), "gatehouse_scans_running 3") {
		t.Errorf("three scans ran at once with scan.workers 2")
	}
	gh.healthy(t)
}

// TestScanKilledMidway: kill -9 while a scan runs, restart: the scan's tree is gone and the
// image is decided again on the next request.
func TestScanKilledMidway(t *testing.T) {
	scanTmp := t.TempDir()
	gh := startGatehouse(t, fmt.Sprintf("scan: {temp_dir: %s}\nadmission: {mode: enforce, hold: 5m}\nvulndb: {recheck: 200ms, max_age: 87600h}\n", scanTmp))
	gateDB(t, gh)
	// two layers of 768 MiB of zeros: the scan runs for a few seconds
	d, m := pushZeroImage(t, gh, "team/slow", "v1", "slow", zeroLayer(t, "data/zeros", 768<<20, 0o644), zeroLayer(t, "data/more", 768<<20, 0o644))
	go putManifest(gh, "team/slow", "v1", m) // admitted synchronously: it scans (and is cut off by the kill)
	deadline := time.Now().Add(30 * time.Second)
	for {
		trees, _ := filepath.Glob(filepath.Join(scanTmp, "gatehouse-scan-*"))
		if len(trees) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no scan tree appeared in %s", scanTmp)
		}
		time.Sleep(5 * time.Millisecond)
	}
	gh.kill9()
	if trees, _ := filepath.Glob(filepath.Join(scanTmp, "gatehouse-scan-*")); len(trees) == 0 {
		t.Fatal("the scan finished before the kill; the test proves nothing")
	}
	gh.start()
	if trees, _ := filepath.Glob(filepath.Join(scanTmp, "gatehouse-scan-*")); len(trees) != 0 {
		t.Errorf("scan trees left after the restart: %v", trees)
	}
	if !strings.Contains(gh.log.String(), "removed the scan trees a previous run left") {
		t.Errorf("the restart did not say it removed the old trees")
	}
	// the image is decided again: the next request admits it (a clean image of zeros)
	r := do(t, gh, "GET", "/v2/team/slow/manifests/"+d, nil, nil)
	if r.status != http.StatusOK {
		t.Errorf("after the restart, GET of the image: %d %s", r.status, tail(string(r.body), 3))
	}
	waitScan(t, gh, d, func(r scanReport) bool { return r.Verdict != nil && r.Verdict.State == "admitted" })
}

// TestPullRouteIndexBounded: one pull of one platform of a 300-child index through a pull route
// makes a bounded number of upstream requests and scans one image.
func TestPullRouteIndexBounded(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	f := startFront(t, up.addr)
	gh := startGatehouse(t, proxyConfig(f.addr, "")+enforcing)
	gateDB(t, gh)

	tarPath := tarDir(t, "", map[string][]byte{"etc/motd": []byte("one of many\n")})
	layer, _ := os.ReadFile(tarPath)
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"User":"app"}}`)
	upPushBlob(t, up.addr, "library/many", layer)
	upPushBlob(t, up.addr, "library/many", cfg)
	var children []string
	for i := range 300 {
		arch := fmt.Sprintf("arch%d", i)
		if i == 150 {
			arch = "amd64"
		}
		m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}],"annotations":{"n":"%d"}}`,
			sha(cfg), len(cfg), sha(layer), len(layer), i))
		upPutManifest(t, up.addr, "library/many", sha(m), m)
		children = append(children, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":{"os":"linux","architecture":%q}}`, sha(m), len(m), arch))
	}
	idx := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(children, ",") + `]}`)
	upPutManifest(t, up.addr, "library/many", "v1", idx)

	f.reset()
	scansBefore := metricSum(t, gh, "gatehouse_scans_total")
	run(t, nil, crane, "pull", "--insecure", "--platform", "linux/amd64", gh.addr+"/docker.io/library/many:v1", filepath.Join(t.TempDir(), "one.tar"))
	f.mu.Lock()
	total := 0
	for _, n := range f.seen {
		total += n
	}
	f.mu.Unlock()
	scans := metricSum(t, gh, "gatehouse_scans_total") - scansBefore
	t.Logf("one platform of a 300-child index: %d upstream requests, %.0f scan(s)", total, scans)
	if total > 40 {
		t.Errorf("%d upstream requests for one platform, want a bounded few (was 2,107 when every child was admitted)", total)
	}
	if scans != 1 {
		t.Errorf("%.0f scans for one platform, want 1", scans)
	}
}

// metricsText is the server's /metrics page.
func metricsText(t *testing.T, gh *server) string {
	t.Helper()
	return string(do(t, gh, "GET", "/metrics", nil, nil).body)
}

// metricSum adds up every sample of a metric family.
func metricSum(t *testing.T, gh *server, name string) float64 {
	t.Helper()
	sum := 0.0
	for _, line := range strings.Split(metricsText(t, gh), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// TestSlowUpstreamDoesNotHoldScanSlots: a pull-route image whose layer the upstream drips out
// (slowly enough that no stall timeout fires) does not hold a scan slot while it is fetched, so
// other images are admitted meanwhile (found by an adversarial session: two such pulls stopped
// every admission, push routes included, for minutes).
func TestSlowUpstreamDoesNotHoldScanSlots(t *testing.T) {
	up := startUpstream(t, "")
	f := startFront(t, up.addr)
	gh := startGatehouse(t, proxyConfig(f.addr, "")+"scan: {workers: 1}\n"+enforcing)
	gateDB(t, gh)
	noise := make([]byte, 2<<20) // incompressible: dripped at 64 KiB a second, it takes half a minute
	rand.Read(noise)
	slow := hostileLayer(t, lfFile("data/noise", string(noise)))
	cfg, m := imageOf("slow", slow)
	upPushBlob(t, up.addr, "library/slow", cfg)
	upPushBlob(t, up.addr, "library/slow", slow)
	upPutManifest(t, up.addr, "library/slow", "v1", m)
	f.set(func(f *front) { f.slow, f.slowStep = sha(slow), time.Second })
	go func() {
		if resp, err := http.Get(gh.url("/v2/docker.io/library/slow/manifests/v1")); err == nil {
			resp.Body.Close()
		}
	}()
	for deadline := time.Now().Add(10 * time.Second); f.count("GET", "/v2/library/slow/blobs/"+sha(slow)) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the slow layer was never asked for")
		}
	}
	// meanwhile a CI push of another image is admitted at once
	start := time.Now()
	d, body := pushZeroImage(t, gh, "ci/other", "v1", "other", zeroLayer(t, "etc/motd", 10, 0o644))
	status, err := putManifest(gh, "ci/other", "v1", body)
	took := time.Since(start)
	t.Logf("a push admitted in %s while a pull-route layer was dripping in", took.Round(time.Millisecond))
	if err != nil || status != http.StatusCreated {
		t.Fatalf("push of %s: %d %v", d, status, err)
	}
	if took > 10*time.Second {
		t.Errorf("the push took %s: the slow fetch held the only scan slot", took)
	}
	if f.count("GET", "/v2/library/slow/blobs/"+sha(slow)) != 1 {
		t.Errorf("the slow layer was asked for %d times", f.count("GET", "/v2/library/slow/blobs/"+sha(slow)))
	}
}
