package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

// fakeVulnDB is a vulnerability database that is there (imported an hour ago) or not.
type fakeVulnDB struct{ err error }

func (f fakeVulnDB) Info() (vulndb.Info, error) {
	if f.err != nil {
		return vulndb.Info{}, f.err
	}
	return vulndb.Info{Version: "db-1", Imported: time.Now().Add(-time.Hour)}, nil
}

// reportHandler is an API handler serving scan reports from a real metadata store.
func reportHandler(t testing.TB, db VulnDB, opts ...Option) (*Handler, *sqlite.Store) {
	t.Helper()
	ctx := context.Background()
	c, err := content.New(ctx, inmemory.New())
	if err != nil {
		t.Fatal(err)
	}
	md, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	h, err := New(c, md, append([]Option{WithReports(md, db, nil, 24*time.Hour)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return h, md
}

func request(h http.Handler, method, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

// ociError reads an OCI error body: {"errors":[{"code":..., "message":...}]}.
func ociError(t *testing.T, rec *httptest.ResponseRecorder) (code, message string) {
	t.Helper()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 {
		t.Fatalf("%d %q: not one OCI error (%v)", rec.Code, rec.Body, err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q", ct)
	}
	return body.Errors[0].Code, body.Errors[0].Message
}

func compact(b []byte) []byte {
	var out bytes.Buffer
	_ = json.Compact(&out, b)
	return out.Bytes()
}

// TestScanReport: a stored scan is reported with its summary, its verdict, the database's state
// and a page of each list, with a Link to the next page; every refusal is an OCI error body, as
// the rest of the API's, and is counted.
func TestScanReport(t *testing.T) {
	h, md := reportHandler(t, fakeVulnDB{})
	ctx := context.Background()
	d := digest.FromString("an image")
	result := `{"digest":"` + d.String() + `","complete":true,"inventory":{"packages":[{"name":"a"},{"name":"b"},{"name":"c"}],"secrets":[{"kind":"aws"}],"unread":[]},"findings":[{"id":"F1"}]}`
	if err := md.ScanPut(ctx, meta.Scan{Digest: d, Repo: "team/app", Scanned: time.Now(), Scanner: "gatehouse/1", Duration: 1234567 * time.Microsecond, Complete: true, Result: []byte(result)}); err != nil {
		t.Fatal(err)
	}
	if err := md.ScanVulnsPut(ctx, d, "db-1", []byte(`[{"id":"CVE-1"},{"id":"CVE-2"}]`), time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := md.VerdictSet(ctx, meta.Verdict{Repo: "team/app", Digest: d, State: "admitted", Decision: []byte(`{"allow":true}`), PolicyDigest: "sha256:policy", DBVersion: "db-1", Decided: time.Now()}, "gatehouse", "test"); err != nil {
		t.Fatal(err)
	}

	rec := request(h, "GET", "/gatehouse/v1/scans/"+d.String()+"?page_size=2")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("report: %d %s %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	var rep struct {
		Report
		Result struct {
			Inventory struct {
				Packages []struct{ Name string }
				Secrets  []json.RawMessage
			}
			Findings []struct{ ID string }
		} `json:"result"`
		Vulnerabilities []struct{ ID string } `json:"vulnerabilities"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Digest != d || rep.Repo != "team/app" || rep.Scanner != "gatehouse/1" || rep.Duration != "1.235s" || !rep.Complete || rep.DBVersion != "db-1" {
		t.Errorf("summary %+v", rep.Report)
	}
	if rep.Database == nil || rep.Database.Version != "db-1" || rep.Database.Stale || rep.Database.Age != "1h0m0s" {
		t.Errorf("database %+v", rep.Database)
	}
	if rep.Verdict == nil || rep.Verdict.State != "admitted" || rep.Verdict.Policy != "sha256:policy" || !bytes.Equal(compact(rep.Verdict.Decision), []byte(`{"allow":true}`)) {
		t.Errorf("verdict %+v", rep.Verdict)
	}
	if rep.Page != (Page{Number: 1, Size: 2, Packages: 3, Secrets: 1, Unread: 0, Findings: 1, Vulnerabilities: 2}) {
		t.Errorf("page %+v", rep.Page)
	}
	if p := rep.Result.Inventory.Packages; len(p) != 2 || p[0].Name != "a" || p[1].Name != "b" || len(rep.Result.Inventory.Secrets) != 1 || len(rep.Result.Findings) != 1 || len(rep.Vulnerabilities) != 2 {
		t.Errorf("lists %+v %+v", rep.Result, rep.Vulnerabilities)
	}
	if link := rec.Header().Get("Link"); link != `</gatehouse/v1/scans/`+d.String()+`?page=2&page_size=2>; rel="next"` {
		t.Errorf("Link %q", link)
	}
	rec = request(h, "GET", "/gatehouse/v1/scans/"+d.String()+"?page=2&page_size=2")
	if !strings.Contains(rec.Body.String(), `"name": "c"`) || rec.Header().Get("Link") != "" {
		t.Errorf("page 2: Link %q\n%s", rec.Header().Get("Link"), rec.Body)
	}

	for _, c := range []struct {
		name, method, path string
		status             int
		code, message      string
	}{
		{"not scanned", "GET", "/gatehouse/v1/scans/" + digest.FromString("another").String(), 404, "MANIFEST_UNKNOWN", "has not been scanned (yet)"},
		{"not a digest", "GET", "/gatehouse/v1/scans/latest", 400, "DIGEST_INVALID", `"latest" is not a digest`},
		{"page_size too large", "GET", "/gatehouse/v1/scans/" + d.String() + "?page_size=1001", 400, "UNSUPPORTED", "page_size must be at most 1000"},
		{"page 0", "GET", "/gatehouse/v1/scans/" + d.String() + "?page=0", 400, "UNSUPPORTED", "page must be a whole number from 1"},
		{"POST", "POST", "/gatehouse/v1/scans/" + d.String(), 404, "UNSUPPORTED", "no such endpoint: the management API answers GET /gatehouse/v1/scans/<digest>"},
		{"DELETE", "DELETE", "/gatehouse/v1/scans/" + d.String(), 404, "UNSUPPORTED", "no such endpoint"},
		{"unknown path", "GET", "/gatehouse/v1/verdicts/" + d.String(), 404, "UNSUPPORTED", "no such endpoint"},
		{"the prefix itself", "GET", "/gatehouse/v1/", 404, "UNSUPPORTED", "no such endpoint"},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := request(h, c.method, c.path)
			if rec.Code != c.status {
				t.Errorf("status %d, want %d: %s", rec.Code, c.status, rec.Body)
			}
			if code, msg := ociError(t, rec); code != c.code || !strings.Contains(msg, c.message) {
				t.Errorf("%s %q; want %s naming %q", code, msg, c.code, c.message)
			}
			if rec.Header().Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id: the refusal did not go through the API's error path")
			}
		})
	}
	if rec := request(h, "HEAD", "/gatehouse/v1/scans/"+d.String()); rec.Code != 404 || rec.Body.Len() != 0 {
		t.Errorf("HEAD: %d %q; want 404 without a body", rec.Code, rec.Body)
	}

	// the refusals are counted as the rest of the API's
	metrics := request(h, "GET", "/metrics").Body.String()
	for _, want := range []string{
		`gatehouse_http_requests_total{method="GET",route="management",status="200"} 2`,
		`gatehouse_http_requests_total{method="GET",route="management",status="400"} 3`,
		`gatehouse_http_requests_total{method="GET",route="management",status="404"} 3`,
		`gatehouse_http_requests_total{method="POST",route="management",status="404"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestScanReportDatabaseAndStore: without a database the report says so (and stale); a metadata
// store that does not answer is 503 UNAVAILABLE.
func TestScanReportDatabaseAndStore(t *testing.T) {
	h, md := reportHandler(t, fakeVulnDB{err: fmt.Errorf("opening: %w", vulndb.ErrNoDatabase)})
	ctx := context.Background()
	d := digest.FromString("failed scan")
	if err := md.ScanPut(ctx, meta.Scan{Digest: d, Repo: "r", Scanned: time.Now(), Scanner: "external", Error: "the scanner crashed"}); err != nil {
		t.Fatal(err)
	}
	rec := request(h, "GET", "/gatehouse/v1/scans/"+d.String())
	var rep map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); rec.Code != 200 || err != nil {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	db, _ := rep["database"].(map[string]any)
	if db["stale"] != true || db["error"] != vulndb.ErrNoDatabase.Error() || rep["error"] != "the scanner crashed" {
		t.Errorf("report %s", rec.Body)
	}
	for _, k := range []string{"result", "vulnerabilities", "verdict"} {
		if _, ok := rep[k]; ok {
			t.Errorf("a report of a failed scan holds %q: %s", k, rec.Body)
		}
	}
	if rec.Header().Get("Link") != "" {
		t.Errorf("Link %q", rec.Header().Get("Link"))
	}

	md.Close()
	rec = request(h, "GET", "/gatehouse/v1/scans/"+d.String())
	if code, _ := ociError(t, rec); rec.Code != 503 || code != "UNAVAILABLE" {
		t.Errorf("a closed metadata store: %d %s", rec.Code, rec.Body)
	}
}

// TestNoReportsWithoutOption: without WithReports nothing is served under /gatehouse/v1/.
func TestNoReportsWithoutOption(t *testing.T) {
	ctx := context.Background()
	c, err := content.New(ctx, inmemory.New())
	if err != nil {
		t.Fatal(err)
	}
	md, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	h, err := New(c, md)
	if err != nil {
		t.Fatal(err)
	}
	rec := request(h, "GET", "/gatehouse/v1/scans/"+digest.FromString("x").String())
	if code, _ := ociError(t, rec); rec.Code != 404 || code == "" {
		t.Errorf("%d %s", rec.Code, rec.Body)
	}
	var rep Report
	if json.Unmarshal(rec.Body.Bytes(), &rep) == nil && rep.Digest != "" {
		t.Errorf("a report served without WithReports: %s", rec.Body)
	}
}
