package upstream

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
)

const body = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`

// fakeRegistry answers /v2/ and whatever handler says for the rest, counting requests.
func fakeRegistry(t *testing.T, h http.HandlerFunc) (*Client, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	c, err := New(Options{URL: srv.URL, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c, &n
}

func TestManifestGetVerifiesDigest(t *testing.T) {
	good := digest.FromString(body)
	c, _ := fakeRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		if strings.HasSuffix(r.URL.Path, "/lying") {
			w.Header().Set("Docker-Content-Digest", digest.FromString("other").String())
		} else {
			w.Header().Set("Docker-Content-Digest", good.String())
		}
		io.WriteString(w, body)
	})
	ctx := context.Background()
	m, err := c.ManifestGet(ctx, "r", good.String())
	if err != nil || m.Digest != good || m.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Fatalf("by digest: %+v %v", m, err)
	}
	if m, err := c.ManifestGet(ctx, "r", "v1"); err != nil || m.Digest != good {
		t.Fatalf("by tag: %+v %v", m, err)
	}
	if _, err := c.ManifestGet(ctx, "r", digest.FromString("asked for").String()); err == nil {
		t.Error("accepted a body that does not hash to the requested digest")
	}
	if _, err := c.ManifestGet(ctx, "r", "lying"); err == nil {
		t.Error("accepted a body that does not hash to the Docker-Content-Digest sent with it")
	}
}

func TestRateLimitBacksOff(t *testing.T) {
	c, n := fakeRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`)
	})
	_, err := c.ManifestHead(context.Background(), "r", "v1")
	e, ok := AsError(err)
	if !ok || e.Status != 429 || e.RetryAfter != 30*time.Second || !e.Temporary() {
		t.Fatalf("err = %#v", err)
	}
	_, err = c.ManifestGet(context.Background(), "r", "v1")
	if e, ok := AsError(err); !ok || e.Status != 429 || e.RetryAfter <= 0 {
		t.Fatalf("second call err = %v", err)
	}
	if n.Load() != 1 {
		t.Errorf("upstream asked %d times during its Retry-After, want 1", n.Load())
	}
}

func TestErrors(t *testing.T) {
	c, _ := fakeRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such tag"}]}`)
	})
	_, err := c.ManifestGet(context.Background(), "r", "v9")
	e, ok := AsError(err)
	if !ok || !e.NotFound() || e.Temporary() || e.Code != "MANIFEST_UNKNOWN" || strings.Contains(e.Error(), "no such tag") {
		t.Fatalf("err = %#v", err)
	}
	down, _ := New(Options{URL: "http://127.0.0.1:1", Timeout: time.Second})
	_, err = down.ManifestHead(context.Background(), "r", "v1")
	if e, ok := AsError(err); !ok || e.Status != 0 || !e.Temporary() {
		t.Fatalf("unreachable: %#v", err)
	}
	if refs, err := c.Referrers(context.Background(), "r", digest.FromString("x")); err != nil || refs != nil {
		t.Errorf("404 referrers = %v, %v; want an empty list", refs, err)
	}
}

func TestStalledBlobFails(t *testing.T) {
	release := make(chan struct{})
	c, _ := fakeRegistry(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.Write([]byte("partial"))
		w.(http.Flusher).Flush()
		<-release
	})
	defer close(release)
	c.opts.Timeout = 300 * time.Millisecond
	rc, size, err := c.BlobGet(context.Background(), "r", digest.FromString("x"))
	if err != nil || size != 100 {
		t.Fatalf("BlobGet: %d %v", size, err)
	}
	start := time.Now()
	_, err = io.ReadAll(rc)
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("a stalled body read returned %v after %s", err, time.Since(start))
	}
}

func TestNewRefuses(t *testing.T) {
	for _, u := range []string{"registry.example", "ftp://x", "https://x/v2/", ""} {
		if _, err := New(Options{URL: u}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	if d := retryAfter("5"); d != 5*time.Second {
		t.Errorf("5 -> %s", d)
	}
	if d := retryAfter(""); d != time.Minute {
		t.Errorf("empty -> %s", d)
	}
	if d := retryAfter("99999"); d != 10*time.Minute {
		t.Errorf("cap -> %s", d)
	}
	if d := retryAfter(time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)); d < 80*time.Second || d > 91*time.Second {
		t.Errorf("date -> %s", d)
	}
}

func TestCredentials(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "creds.json")
	os.WriteFile(f, []byte(`{"username":"u","password":"s3cret"}`), 0o600)
	a, err := CredentialsFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, _ := a.Authorization(); cfg.Username != "u" || cfg.Password != "s3cret" {
		t.Errorf("got %+v", cfg)
	}
	os.WriteFile(f, []byte(`{"username":"u"}`), 0o600)
	if _, err := CredentialsFile(f); err == nil {
		t.Error("accepted a file without a password")
	}
	os.WriteFile(f, []byte(`not json s3cret`), 0o600)
	if _, err := CredentialsFile(f); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("bad file error leaks or is missing: %v", err)
	}

	dc := filepath.Join(dir, "config.json")
	auth := base64.StdEncoding.EncodeToString([]byte("hubuser:hubpass"))
	os.WriteFile(dc, []byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"`+auth+`"},"ghcr.io":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("gh:tok"))+`"}}}`), 0o600)
	for host, want := range map[string]string{"registry-1.docker.io": "hubuser", "ghcr.io": "gh"} {
		a, err := DockerConfig(dc, host)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		if cfg, _ := authn.Authorization(context.Background(), a); cfg.Username != want {
			t.Errorf("%s: user %q, want %q", host, cfg.Username, want)
		}
	}
	if _, err := DockerConfig(dc, "quay.io"); err == nil {
		t.Error("found credentials for a host the config does not have")
	}
}
