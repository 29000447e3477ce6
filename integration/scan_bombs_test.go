//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
)

// scanBombTimeout is the scan.timeout of the bomb tests: each scan must end within it.
const scanBombTimeout = 20 * time.Second

// resetHWM restarts a process's peak resident set (VmHWM) from its current size.
func resetHWM(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("resetting the peak RSS: %v", err)
	}
}

// measuredPush pushes a one-layer image to repo:v1 of gh (process pid) and returns the answer to
// its manifest PUT (which waits for the admission), how long that took and the server's peak RSS
// during it, printed.
func measuredPush(t *testing.T, gh *server, pid int, repo, note string, layer []byte) (r response, m []byte, took time.Duration, peak float64) {
	t.Helper()
	cfg, m := imageOf(note, layer)
	pushBlob(t, gh, repo, cfg)
	pushBlob(t, gh, repo, layer)
	resetHWM(t, pid)
	start := time.Now()
	r = do(t, gh, "PUT", "/v2/"+repo+"/manifests/v1", map[string]string{"Content-Type": ociManifest}, m)
	took = time.Since(start)
	peak = vmHWM(t, pid)
	t.Logf("push answered %d in %s; peak RSS %.0f MiB", r.status, took.Round(time.Millisecond), peak)
	return r, m, took, peak
}

// TestScanBombs: extractor bombs pushed as images end within scan.timeout with the server's
// peak RSS under 256 MiB, and are refused as incomplete scans naming the file: a 1 GiB "jar"
// of zeros nested in a 1 MB jar (osv-scalibr's java/archive took 2.7 GB), the same one level
// deeper (each is written beside the tree and read from there, not held in memory), twenty
// nested jars of 300 MiB of zeros (past the 4 GiB of nested archives a file may hold), and a
// pom.properties of 1 GiB of newlines (96 s of CPU).
func TestScanBombs(t *testing.T) {
	gh := startGatehouse(t, fmt.Sprintf("scan: {workers: 1, timeout: %s}\n", scanBombTimeout)+enforcing)
	gateDB(t, gh)
	pid := gh.cmd.Process.Pid
	t.Logf("RSS at start: %.0f MiB", vmHWM(t, pid))
	zeros := func() io.Reader { return inventorytest.Zeros(1 << 30) }
	pom := bytes.NewReader([]byte("groupId=org.example\nartifactId=app\nversion=1.0\n"))
	cases := []struct {
		name, want string
		jar        func() []byte
	}{
		{"a 1 GiB jar of zeros nested in a jar", "in BOOT-INF/lib/bomb.jar: zip: not a valid zip file", func() []byte {
			return inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/org.example/app/pom.properties", Body: pom},
				inventorytest.Entry{Name: "BOOT-INF/lib/bomb.jar", Body: zeros()})
		}},
		{"the same one level deeper", "in BOOT-INF/lib/mid.jar!/lib/bomb.jar: zip: not a valid zip file", func() []byte {
			return inventorytest.Jar(inventorytest.Entry{Name: "BOOT-INF/lib/mid.jar", Entries: []inventorytest.Entry{{Name: "lib/bomb.jar", Body: zeros()}}})
		}},
		{"twenty 300 MiB jars of zeros in a nested jar, over the total", "nested archives of more than 4294967296 bytes in all", func() []byte {
			var es []inventorytest.Entry
			for i := range 20 {
				es = append(es, inventorytest.Entry{Name: fmt.Sprintf("lib/z%02d.jar", i), Body: inventorytest.Zeros(300 << 20)})
			}
			return inventorytest.Jar(inventorytest.Entry{Name: "BOOT-INF/lib/mid.jar", Entries: es})
		}},
		{"a pom.properties of 1 GiB of newlines", "pom.properties of 1073741824 bytes", func() []byte {
			return inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/x/y/pom.properties", Body: inventorytest.Newlines(1 << 30)})
		}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			jar := c.jar()
			layer := hostileLayer(t, lfFile("app/app.jar", string(jar)))
			t.Logf("the jar: %d KiB; the layer: %d KiB", len(jar)>>10, len(layer)>>10)
			repo := fmt.Sprintf("ci/bomb%d", i)
			r, m, took, peak := measuredPush(t, gh, pid, repo, c.name, layer)
			if r.status != http.StatusForbidden || !strings.Contains(string(r.body), `"rule":"GH-POL-SCAN-INCOMPLETE"`) ||
				!strings.Contains(r.message(), "java/archive") || !strings.Contains(r.message(), c.want) {
				t.Errorf("push: %d %.800s; want 403, GH-POL-SCAN-INCOMPLETE naming java/archive: %s", r.status, r.body, c.want)
			}
			rep, _ := waitScan(t, gh, sha(m), func(r scanReport) bool { return r.Verdict != nil })
			d, _ := time.ParseDuration(rep.Duration)
			t.Logf("scan took %s", d)
			if took > scanBombTimeout || d > scanBombTimeout {
				t.Errorf("the scan took %s (the push %s); want within scan.timeout %s", d, took, scanBombTimeout)
			}
			if peak >= 256 {
				t.Errorf("peak RSS %.0f MiB; want under 256 MiB", peak)
			}
		})
	}
	if _, err := http.Get(gh.url("/healthz")); err != nil {
		t.Fatalf("the server is down: %v", err)
	}
}

// TestScanManyPackagesReport: an image listing a million packages (a thousand go.mod files of
// a thousand requirements) is scanned within scan.timeout and peak RSS under 256 MiB: past
// scan.max_packages (20,000) the rest are not listed and the scan is incomplete, so refused.
// Its report is one page; four concurrent GETs of it stay small. A dpkg status of a million
// stanzas (osv-scalibr's reader took 7.2 GB) is refused too, within the same bounds.
func TestScanManyPackagesReport(t *testing.T) {
	var entries []diffEntry
	for f := range 1000 {
		var b strings.Builder
		fmt.Fprintf(&b, "module example.com/app%d\n\ngo 1.22\n\nrequire (\n", f)
		for p := range 1000 {
			fmt.Fprintf(&b, "\texample.com/m%04d/p%04d v1.0.%d\n", f, p, p)
		}
		b.WriteString(")\n")
		entries = append(entries, lfFile(fmt.Sprintf("src/m%04d/go.mod", f), b.String()))
	}
	gomods := hostileLayer(t, entries...)
	var status strings.Builder
	for i := range 1_000_000 {
		fmt.Fprintf(&status, "Package: p%07d\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0-%d\nDescription: a package of a million, padded past the bound for files read whole\n\n", i, i)
	}
	dpkg := hostileLayer(t, lfFile("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"), lfFile("var/lib/dpkg/status", status.String()))
	t.Logf("go.mod layer %d KiB; dpkg status %d MiB, layer %d KiB", len(gomods)>>10, status.Len()>>20, len(dpkg)>>10)

	for _, c := range []struct {
		name, repo string
		layer      []byte
		want       string
	}{
		{"a million Go requirements", "ci/many", gomods, "more than the 20000 packages a scan keeps"},
		{"a dpkg status of a million stanzas", "ci/dpkgbomb", dpkg, "var/lib/dpkg/status"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// a server of its own: the heap one scan leaves is not the next one's peak
			gh := startGatehouse(t, fmt.Sprintf("scan: {workers: 1, timeout: %s}\n", scanBombTimeout)+enforcing)
			gateDB(t, gh)
			pid := gh.cmd.Process.Pid
			r, m, _, peak := measuredPush(t, gh, pid, c.repo, c.name, c.layer)
			if r.status != http.StatusForbidden || !strings.Contains(string(r.body), `"rule":"GH-POL-SCAN-INCOMPLETE"`) || !strings.Contains(r.message(), c.want) {
				t.Errorf("push: %d %.800s; want 403, GH-POL-SCAN-INCOMPLETE naming %q", r.status, r.body, c.want)
			}
			if peak >= 256 {
				t.Errorf("peak RSS %.0f MiB; want under 256 MiB", peak)
			}
			// the report: one page, and four at once stay small
			d := sha(m)
			scanned, _ := waitScan(t, gh, d, func(r scanReport) bool { return r.Verdict != nil })
			if took, _ := time.ParseDuration(scanned.Duration); took > scanBombTimeout {
				t.Errorf("the scan took %s; want within scan.timeout %s", took, scanBombTimeout)
			}
			t.Logf("the scan took %s (the rest of the push: storing, SBOMs, matching, the decision)", scanned.Duration)
			resetHWM(t, pid)
			var wg sync.WaitGroup
			sizes := make([]int, 4)
			for i := range sizes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := http.Get(gh.url("/gatehouse/v1/scans/" + d))
					if err != nil {
						t.Error(err)
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					sizes[i] = len(b)
				}()
			}
			wg.Wait()
			var page struct {
				Page   struct{ Packages, Findings int }
				Result struct {
					Inventory struct{ Packages []struct{ Name string } }
				}
			}
			rep := do(t, gh, "GET", "/gatehouse/v1/scans/"+d, nil, nil)
			jsonUnmarshal(rep.body, &page)
			peak = vmHWM(t, pid)
			t.Logf("report: %d packages listed of %d, %d findings; four concurrent GETs of %v bytes; peak RSS %.0f MiB; next: %s",
				len(page.Result.Inventory.Packages), page.Page.Packages, page.Page.Findings, sizes, peak, rep.header.Get("Link"))
			for _, n := range sizes {
				if n == 0 || n > 2<<20 {
					t.Errorf("a report of %d bytes; want one page, under 2 MiB", n)
				}
			}
			if len(page.Result.Inventory.Packages) > 1000 {
				t.Errorf("the report lists %d packages; want a page of at most 1000", len(page.Result.Inventory.Packages))
			}
			if peak >= 256 {
				t.Errorf("peak RSS %.0f MiB during the GETs; want under 256 MiB", peak)
			}
		})
	}
}
