package harbor

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// adapter is an in-test stand-in for a scanner adapter that follows the v1.1 spec's exchange:
// 202 with an id, 302 with Refresh-After while scanning, then the report.
func adapter(t *testing.T, polls int) (*httptest.Server, *atomic.Value) {
	var asked atomic.Int64
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer adapter-token" {
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":{"message":"no token"}}`)
			return
		}
		switch {
		case r.URL.Path == "/api/v1/metadata":
			io.WriteString(w, `{"scanner":{"name":"Trivy","vendor":"Aqua Security","version":"0.74.0"},"capabilities":[{"consumes_mime_types":["application/vnd.oci.image.manifest.v1+json"],"produces_mime_types":["application/vnd.security.vulnerability.report; version=1.1"]}]}`)
		case r.URL.Path == "/api/v1/scan" && r.Method == http.MethodPost:
			if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/vnd.scanner.adapter.scan.request+json") {
				w.WriteHeader(http.StatusUnsupportedMediaType)
				return
			}
			b, _ := io.ReadAll(r.Body)
			got.Store(string(b))
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"id":"scan-1"}`)
		case r.URL.Path == "/api/v1/scan/scan-1/report":
			if asked.Add(1) <= int64(polls) {
				w.Header().Set("Refresh-After", "1")
				w.Header().Set("Location", "/api/v1/scan/scan-1/report")
				w.WriteHeader(http.StatusFound)
				return
			}
			io.WriteString(w, `{"scanner":{"name":"Trivy","vendor":"Aqua Security","version":"0.74.0"},"vulnerabilities":[
				{"id":"CVE-2023-0286","package":"openssl","version":"3.0.7-1","fix_version":"3.0.8-1","severity":"High","description":"X.400 type confusion"},
				{"id":"CVE-2011-3374","package":"apt","version":"2.6.1","severity":"Negligible"}]}`)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &got
}

func TestScan(t *testing.T) {
	srv, got := adapter(t, 1)
	c := &Client{URL: srv.URL, Authorization: "Bearer adapter-token", MaxWait: 30 * time.Second}
	md, err := c.Metadata(context.Background())
	if err != nil || md.Scanner.Name != "Trivy" {
		t.Fatalf("metadata: %+v %v", md, err)
	}
	d := digest.FromString("image")
	start := time.Now()
	found, scanner, err := c.Scan(context.Background(), Image{RegistryURL: "http://gatehouse:5000", Repository: "team/app", Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json"})
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 900*time.Millisecond {
		t.Error("the client did not wait for Refresh-After")
	}
	if scanner != "Trivy 0.74.0" || len(found) != 2 || found[0].ID != "CVE-2023-0286" || found[0].Severity != "HIGH" || found[0].Fixed != "3.0.8-1" || found[1].Severity != "LOW" {
		t.Errorf("findings %+v from %q", found, scanner)
	}
	var req struct {
		Registry struct{ URL string }
		Artifact struct {
			Repository string
			Digest     string
			MimeType   string `json:"mime_type"`
		}
	}
	json.Unmarshal([]byte(got.Load().(string)), &req)
	if req.Registry.URL != "http://gatehouse:5000" || req.Artifact.Repository != "team/app" || req.Artifact.Digest != d.String() {
		t.Errorf("scan request %+v", req)
	}
}

func TestScanErrors(t *testing.T) {
	srv, _ := adapter(t, 1000)
	c := &Client{URL: srv.URL, Authorization: "wrong"}
	if _, _, err := c.Scan(context.Background(), Image{Digest: digest.FromString("x")}); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("unauthorized: %v", err)
	}
	c = &Client{URL: srv.URL, Authorization: "Bearer adapter-token", MaxWait: 1500 * time.Millisecond}
	if _, _, err := c.Scan(context.Background(), Image{Digest: digest.FromString("x")}); err == nil || !strings.Contains(err.Error(), "no report") {
		t.Errorf("slow adapter: %v", err)
	}
}
