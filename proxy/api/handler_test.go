package api

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

// countingMeta counts manifest and tag reads, and can be made to fail.
type countingMeta struct {
	Metadata
	manifestGets atomic.Int64
	fail         atomic.Bool
}

func (c *countingMeta) ManifestGet(ctx context.Context, repo string, d digest.Digest) (meta.Manifest, error) {
	c.manifestGets.Add(1)
	if c.fail.Load() {
		return meta.Manifest{}, errors.New("database is gone")
	}
	return c.Metadata.ManifestGet(ctx, repo, d)
}

func (c *countingMeta) Ping(ctx context.Context) error {
	if c.fail.Load() {
		return errors.New("database is gone")
	}
	return c.Metadata.Ping(ctx)
}

type fixture struct {
	t    testing.TB
	srv  *httptest.Server
	meta *countingMeta
}

func newFixture(t testing.TB, opts ...Option) *fixture {
	t.Helper()
	ctx := context.Background()
	c, err := content.New(ctx, inmemory.New(), content.WithDelete(true))
	if err != nil {
		t.Fatal(err)
	}
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	cm := &countingMeta{Metadata: db}
	h, err := New(c, cm, append([]Option{WithDelete(true)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{t: t, srv: srv, meta: cm}
}

func (f *fixture) do(method, path, ctype string, body []byte) *http.Response {
	f.t.Helper()
	req, _ := http.NewRequest(method, f.srv.URL+path, bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readBody(r *http.Response) string { b, _ := io.ReadAll(r.Body); return string(b) }

// pushImage pushes a config blob and a manifest over it, returning the manifest and its digest.
func (f *fixture) pushImage(repo, tag string) ([]byte, digest.Digest) {
	f.t.Helper()
	cfg := []byte(`{"os":"linux","tag":"` + tag + `"}`)
	cd := digest.FromBytes(cfg)
	if r := f.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+cd.String(), "", cfg); r.StatusCode != 201 {
		f.t.Fatalf("blob: %d %s", r.StatusCode, readBody(r))
	}
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cd.String() + `","size":` + strconv.Itoa(len(cfg)) + `},"layers":[]}`)
	if r := f.do("PUT", "/v2/"+repo+"/manifests/"+tag, manifest.OCIManifest, m); r.StatusCode != 201 {
		f.t.Fatalf("manifest: %d %s", r.StatusCode, readBody(r))
	}
	return m, digest.FromBytes(m)
}

func TestCachedPullReadsNoMetadata(t *testing.T) {
	f := newFixture(t)
	m, d := f.pushImage("a/b", "v1")
	for i := 0; i < 3; i++ {
		r := f.do("GET", "/v2/a/b/manifests/"+d.String(), "", nil)
		if got := readBody(r); r.StatusCode != 200 || got != string(m) {
			t.Fatalf("GET %d: %d %s", i, r.StatusCode, got)
		}
		if r.Header.Get("Content-Type") != manifest.OCIManifest || r.Header.Get("Docker-Content-Digest") != d.String() || r.Header.Get("Content-Length") != strconv.Itoa(len(m)) {
			t.Fatalf("headers %v", r.Header)
		}
	}
	if n := f.meta.manifestGets.Load(); n != 1 {
		t.Errorf("3 GETs by digest read the metadata store %d times, want 1 (then memory)", n)
	}
	// with the metadata store down, a cached manifest still serves; an uncached one fails closed
	f.meta.fail.Store(true)
	if r := f.do("GET", "/v2/a/b/manifests/"+d.String(), "", nil); r.StatusCode != 200 {
		t.Errorf("cached GET with metadata down = %d", r.StatusCode)
	}
	if r := f.do("GET", "/v2/a/c/manifests/"+d.String(), "", nil); r.StatusCode != 503 || !strings.Contains(readBody(r), "UNAVAILABLE") {
		t.Errorf("uncached GET with metadata down = %d, want 503 UNAVAILABLE", r.StatusCode)
	}
}

func TestManifestCacheDropsDeleted(t *testing.T) {
	f := newFixture(t)
	_, d := f.pushImage("a", "v1")
	f.do("GET", "/v2/a/manifests/"+d.String(), "", nil)
	if r := f.do("DELETE", "/v2/a/manifests/"+d.String(), "", nil); r.StatusCode != 202 {
		t.Fatalf("delete: %d", r.StatusCode)
	}
	if r := f.do("GET", "/v2/a/manifests/"+d.String(), "", nil); r.StatusCode != 404 {
		t.Errorf("deleted manifest still served (%d)", r.StatusCode)
	}
	if r := f.do("GET", "/v2/a/manifests/v1", "", nil); r.StatusCode != 404 {
		t.Errorf("tag of deleted manifest still resolves (%d)", r.StatusCode)
	}
}

func TestManifestIsRepositoryScoped(t *testing.T) {
	f := newFixture(t)
	_, d := f.pushImage("team/a", "v1")
	if r := f.do("GET", "/v2/team/b/manifests/"+d.String(), "", nil); r.StatusCode != 404 {
		t.Errorf("manifest of team/a served from team/b: %d", r.StatusCode)
	}
}

func TestTagPagination(t *testing.T) {
	f := newFixture(t)
	for _, tag := range []string{"c", "a", "b"} {
		f.pushImage("r", tag)
	}
	r := f.do("GET", "/v2/r/tags/list?n=2", "", nil)
	if body := readBody(r); body != `{"name":"r","tags":["a","b"]}` {
		t.Errorf("page 1 = %s", body)
	}
	if link := r.Header.Get("Link"); link != `</v2/r/tags/list?last=b&n=2>; rel="next"` {
		t.Errorf("Link = %q", link)
	}
	r = f.do("GET", "/v2/r/tags/list?n=2&last=b", "", nil)
	if body := readBody(r); body != `{"name":"r","tags":["c"]}` || r.Header.Get("Link") != "" {
		t.Errorf("page 2 = %s, Link %q", body, r.Header.Get("Link"))
	}
	if body := readBody(f.do("GET", "/v2/r/tags/list?n=0", "", nil)); body != `{"name":"r","tags":[]}` {
		t.Errorf("n=0 = %s", body)
	}
	if body := readBody(f.do("GET", "/v2/_catalog?n=1", "", nil)); body != `{"repositories":["r"]}` {
		t.Errorf("catalog = %s", body)
	}
}

func TestReferrers(t *testing.T) {
	f := newFixture(t)
	_, subject := f.pushImage("r", "v1")
	cfg := []byte(`{}`)
	cd := digest.FromBytes(cfg)
	f.do("POST", "/v2/r/blobs/uploads/?digest="+cd.String(), "", cfg)
	sig := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + cd.String() + `","size":2},"layers":[],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + subject.String() + `","size":1},"annotations":{"k":"v"}}`)
	r := f.do("PUT", "/v2/r/manifests/"+digest.FromBytes(sig).String(), manifest.OCIManifest, sig)
	if r.StatusCode != 201 || r.Header.Get("OCI-Subject") != subject.String() {
		t.Fatalf("PUT referrer: %d, OCI-Subject %q", r.StatusCode, r.Header.Get("OCI-Subject"))
	}
	r = f.do("GET", "/v2/r/referrers/"+subject.String(), "", nil)
	body := readBody(r)
	if r.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" || !strings.Contains(body, `"artifactType":"application/vnd.example.sig"`) || !strings.Contains(body, `"annotations":{"k":"v"}`) {
		t.Errorf("referrers = %s (%s)", body, r.Header.Get("Content-Type"))
	}
	r = f.do("GET", "/v2/r/referrers/"+subject.String()+"?artifactType=application/other", "", nil)
	if body := readBody(r); !strings.Contains(body, `"manifests":[]`) || r.Header.Get("OCI-Filters-Applied") != "artifactType" {
		t.Errorf("filtered referrers = %s, %v", body, r.Header)
	}
	if r := f.do("GET", "/v2/nowhere/referrers/"+subject.String(), "", nil); r.StatusCode != 200 {
		t.Errorf("referrers of an unknown repository = %d, want 200 with an empty index", r.StatusCode)
	}
}

func TestUploadExpiry(t *testing.T) {
	f := newFixture(t, WithUploadExpiry(50*time.Millisecond))
	loc := f.do("POST", "/v2/r/blobs/uploads/", "", nil).Header.Get("Location")
	time.Sleep(100 * time.Millisecond)
	r := f.do("PATCH", loc, "", []byte("late"))
	if body := readBody(r); r.StatusCode != 404 || !strings.Contains(body, "expired") {
		t.Errorf("PATCH on an expired upload = %d %s", r.StatusCode, body)
	}
}

func TestDeleteDisabled(t *testing.T) {
	f := newFixture(t, WithDelete(false))
	_, d := f.pushImage("r", "v1")
	for _, p := range []string{"/v2/r/manifests/" + d.String(), "/v2/r/manifests/v1", "/v2/r/blobs/" + d.String()} {
		if r := f.do("DELETE", p, "", nil); r.StatusCode != 405 {
			t.Errorf("DELETE %s with deletion off = %d", p, r.StatusCode)
		}
	}
	if r := f.do("GET", "/v2/r/manifests/v1", "", nil); r.StatusCode != 200 {
		t.Errorf("manifest gone after refused deletes: %d", r.StatusCode)
	}
}

func TestReadyzNamesTheFailure(t *testing.T) {
	f := newFixture(t)
	if r := f.do("GET", "/readyz", "", nil); r.StatusCode != 200 {
		t.Fatalf("readyz = %d", r.StatusCode)
	}
	f.meta.fail.Store(true)
	r := f.do("GET", "/readyz", "", nil)
	if body := readBody(r); r.StatusCode != 503 || !strings.Contains(body, `"metadata":"database is gone"`) || !strings.Contains(body, `"storage":"ok"`) {
		t.Errorf("readyz with metadata down = %d %s", r.StatusCode, body)
	}
	if r := f.do("GET", "/healthz", "", nil); r.StatusCode != 200 {
		t.Errorf("healthz = %d; the process is up", r.StatusCode)
	}
}

func TestMetricsCountRequests(t *testing.T) {
	f := newFixture(t)
	f.do("GET", "/v2/r/manifests/missing", "", nil)
	f.do("GET", "/v2/", "", nil)
	body := readBody(f.do("GET", "/metrics", "", nil))
	for _, want := range []string{
		`gatehouse_http_requests_total{method="GET",route="manifest",status="404"} 1`,
		`gatehouse_http_requests_total{method="GET",route="base",status="200"} 1`,
		`gatehouse_http_request_duration_seconds_count{method="GET",route="manifest"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestCommonHeaders(t *testing.T) {
	f := newFixture(t)
	r := f.do("GET", "/v2/", "", nil)
	if r.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" || r.Header.Get("X-Request-Id") == "" {
		t.Errorf("headers %v", r.Header)
	}
	req, _ := http.NewRequest("GET", f.srv.URL+"/v2/", nil)
	req.Header.Set("X-Request-Id", "ci-run-42")
	resp, _ := http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.Header.Get("X-Request-Id") != "ci-run-42" {
		t.Errorf("request id not echoed: %q", resp.Header.Get("X-Request-Id"))
	}
}

func TestStatusWriterKeepsReaderFrom(t *testing.T) {
	var w http.ResponseWriter = &statusWriter{ResponseWriter: httptest.NewRecorder()}
	if _, ok := w.(io.ReaderFrom); !ok {
		t.Fatal("statusWriter hides io.ReaderFrom: blob bodies would lose sendfile")
	}
}
