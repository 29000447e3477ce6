//go:build integration

package integration

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// osvBucket serves OSV's bucket layout (<Ecosystem>/all.zip) as osv.dev's bucket does (ETag,
// If-None-Match), can be taken down, and counts the archive bodies it sends.
type osvBucket struct {
	mu     sync.Mutex
	files  map[string][]byte
	down   bool
	bodies map[string]int
}

func (b *osvBucket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	body, ok := b.files[r.URL.Path]
	down := b.down
	b.mu.Unlock()
	switch {
	case down:
		http.Error(w, "the bucket is down", http.StatusServiceUnavailable)
		return
	case !ok:
		http.NotFound(w, r)
		return
	}
	etag := `"` + sha(body) + `"`
	w.Header().Set("ETag", etag)
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	b.mu.Lock()
	b.bodies[r.URL.Path]++
	b.mu.Unlock()
	w.Write(body)
}

func (b *osvBucket) set(f func(b *osvBucket)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(b)
}

func (b *osvBucket) sent(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.bodies[path]
}

// TestVulnFeed: a fresh Gatehouse whose only source is an OSV bucket keeps refusing to admit
// (503, saying the database is being fetched and why it is not there yet) while the source is
// down, recovers on its own when it comes back, then admits a clean image and refuses a
// vulnerable one; `gatehouse db update` sends no archive again while none changed, and a changed
// archive is fetched and re-matched.
func TestVulnFeed(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	clean, bad, _, _ := gateImages(t, crane, up.addr)
	bucket := &osvBucket{files: map[string][]byte{
		"/npm/all.zip": zipDir(t, "../attest/vulndb/testdata/osv"),
		"/Go/all.zip":  zipDir(t, "../attest/vulndb/testdata/osv"),
	}, bodies: map[string]int{}, down: true}
	srv := httptest.NewServer(bucket)
	defer srv.Close()
	gh := startGatehouse(t, proxyConfig(up.addr, "")+"admission: {mode: enforce, hold: 4s}\nvulndb: {sources: ["+srv.URL+"], ecosystems: [npm, Go], update_interval: 1h, recheck: 200ms, max_age: 87600h}\n")
	cleanPath, badPath := "/v2/docker.io/library/clean/manifests/"+clean, "/v2/docker.io/library/bad/manifests/"+bad

	for range 2 {
		r := do(t, gh, "GET", cleanPath, nil, nil)
		if r.status != 503 || r.header.Get("Retry-After") == "" || !strings.Contains(r.message(), "being fetched from 2 sources") || !strings.Contains(r.message(), "503") {
			t.Fatalf("a clean image while the only source is down: %d %s", r.status, r.body)
		}
	}
	if r := do(t, gh, "GET", "/gatehouse/v1/scans/"+clean, nil, nil); r.status == 200 && strings.Contains(string(r.body), `"state"`) {
		t.Errorf("a verdict was recorded without a database: %s", r.body)
	}

	bucket.set(func(b *osvBucket) { b.down = false })
	var r response
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if r = do(t, gh, "GET", cleanPath, nil, nil); r.status != 503 {
			break
		}
	}
	if r.status != 200 {
		t.Fatalf("the clean image after the source came back: %d %s", r.status, r.body)
	}
	if r := do(t, gh, "GET", badPath, nil, nil); r.status != 403 || !strings.Contains(r.message(), "CVE-2020-8203") {
		t.Errorf("the vulnerable image: %d %s", r.status, r.body)
	}
	if !strings.Contains(gh.log.String(), "vulnerability database updated") {
		t.Errorf("the server did not log its update")
	}
	var st struct {
		Database struct{ Version string }
		Records  int
		Sources  []struct {
			Name, URL   string
			LastError   string `json:"last_error"`
			LastSuccess string `json:"last_success"`
			Records     int
		}
	}
	if r := do(t, gh, "GET", "/gatehouse/v1/vulndb", nil, nil); r.status != 200 || json.Unmarshal(r.body, &st) != nil {
		t.Errorf("GET /gatehouse/v1/vulndb: %d %s", r.status, r.body)
	}
	if st.Database.Version == "" || st.Records != 4 || len(st.Sources) != 2 || st.Sources[0].Name != "npm" || st.Sources[0].LastSuccess == "" || st.Sources[0].LastError != "" || st.Sources[0].Records != 4 {
		t.Errorf("the database's status: %+v", st)
	}
	if v := metricValue(t, gh, "gatehouse_vulndb_last_update_success"); v != 1 {
		t.Errorf("gatehouse_vulndb_last_update_success = %v", v)
	}
	if v := metricValue(t, gh, "gatehouse_vulndb_records"); v != 4 {
		t.Errorf("gatehouse_vulndb_records = %v, want 4 (the same four records in both archives)", v)
	}

	// an update with nothing changed sends no archive body; a changed archive is fetched
	sentBefore := bucket.sent("/npm/all.zip") + bucket.sent("/Go/all.zip")
	out := run(t, nil, gatehouseBin, "db", "update", "--config", gh.config)
	if !strings.Contains(out, "unchanged") || bucket.sent("/npm/all.zip")+bucket.sent("/Go/all.zip") != sentBefore {
		t.Errorf("an update with no archive changed: %s (bodies sent %d, before %d)", out, bucket.sent("/npm/all.zip")+bucket.sent("/Go/all.zip"), sentBefore)
	}
	bucket.set(func(b *osvBucket) {
		b.files["/npm/all.zip"] = zipDir(t, "../attest/vulndb/testdata/osv", "testdata/osv-gate")
	})
	npmBefore, goBefore := bucket.sent("/npm/all.zip"), bucket.sent("/Go/all.zip")
	out = run(t, nil, gatehouseBin, "db", "update", "--config", gh.config)
	if !strings.Contains(out, "updated") || bucket.sent("/npm/all.zip") != npmBefore+1 || bucket.sent("/Go/all.zip") != goBefore {
		t.Errorf("an update with one archive changed: %s (npm %d→%d, Go %d→%d)", out, npmBefore, bucket.sent("/npm/all.zip"), goBefore, bucket.sent("/Go/all.zip"))
	}
	// re-matching follows: lodash 4.17.20 has an advisory in the changed archive
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if r = do(t, gh, "GET", cleanPath, nil, nil); r.status == 403 {
			break
		}
	}
	if r.status != 403 || !strings.Contains(r.message(), "CVE-2021-23337") {
		t.Errorf("the formerly clean image after the changed archive: %d %s", r.status, r.body)
	}
	info := run(t, nil, gatehouseBin, "db", "info", "--config", gh.config)
	for _, want := range []string{"source   npm  " + srv.URL + "/npm/all.zip", "source   Go  ", "last success"} {
		if !strings.Contains(info, want) {
			t.Errorf("db info does not say %q:\n%s", want, info)
		}
	}
	if _, err := os.Stat(filepath.Join(gh.dataDir, "vulndb-sources", "sources.json")); err != nil {
		t.Errorf("the feed's state is not kept: %v", err)
	}

	// an air-gapped site: the export, imported on another data directory, is the same database
	export := filepath.Join(t.TempDir(), "osv-export.zip")
	run(t, nil, gatehouseBin, "db", "export", "--config", gh.config, export)
	elsewhere := t.TempDir()
	run(t, nil, gatehouseBin, "db", "update", "--data", elsewhere, "--from", export)
	database := func(info string) string { // the database's lines (not its sources, nor its age, which moves)
		var keep []string
		for _, l := range strings.Split(info, "\n") {
			for _, k := range []string{"version ", "records ", "imported ", "newest ", "source "} {
				if strings.HasPrefix(l, k) && !strings.HasPrefix(l, "source   ") {
					keep = append(keep, l)
				}
			}
		}
		return strings.Join(keep, "\n")
	}
	here, there := database(run(t, nil, gatehouseBin, "db", "info", "--config", gh.config)), database(run(t, nil, gatehouseBin, "db", "info", "--data", elsewhere))
	if here == "" || here != there {
		t.Errorf("db info after importing the export:\n%s\nwant:\n%s", there, here)
	}
}
