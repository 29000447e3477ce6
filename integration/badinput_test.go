//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

type response struct {
	status int
	header http.Header
	body   []byte
}

// ociError is the first error of an OCI error body (zero when the body is not one).
func (r response) ociError() (code, message string) {
	var b struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(r.body, &b) != nil || len(b.Errors) == 0 {
		return "", ""
	}
	return b.Errors[0].Code, b.Errors[0].Message
}

func (r response) code() string { c, _ := r.ociError(); return c }

func (r response) message() string { _, m := r.ociError(); return m }

// do sends a request with the path exactly as given (no cleaning, encoding kept).
func do(t *testing.T, srv *server, method, path string, header map[string]string, body []byte) response {
	t.Helper()
	req, err := http.NewRequest(method, srv.url(path), bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, b}
}

func sha(b []byte) string { return "sha256:" + sha256hex(b) }

// pushBlob uploads a blob monolithically and returns its digest.
func pushBlob(t *testing.T, srv *server, repo string, b []byte) string {
	t.Helper()
	d := sha(b)
	r := do(t, srv, "POST", "/v2/"+repo+"/blobs/uploads/?digest="+d, map[string]string{"Content-Type": "application/octet-stream"}, b)
	if r.status != 201 {
		t.Fatalf("push blob: %d %s", r.status, r.body)
	}
	return d
}

// imageManifest returns an OCI image manifest over a config and layers already pushed.
func imageManifest(config string, configSize int, layers ...[2]any) []byte {
	var ls []string
	for _, l := range layers {
		ls = append(ls, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, l[0], l[1]))
	}
	return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		config, configSize, strings.Join(ls, ",")))
}

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func TestBadInput(t *testing.T) {
	srv := startGatehouse(t, "")
	// a good image first: it must survive everything below
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	layer := []byte("layer content")
	cfgD, layerD := pushBlob(t, srv, "good/app", cfg), pushBlob(t, srv, "good/app", layer)
	good := imageManifest(cfgD, len(cfg), [2]any{layerD, len(layer)})
	if r := do(t, srv, "PUT", "/v2/good/app/manifests/v1", map[string]string{"Content-Type": ociManifest}, good); r.status != 201 {
		t.Fatalf("good manifest: %d %s", r.status, r.body)
	}

	missing := sha([]byte("never pushed"))
	big := append([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"x":"`), bytes.Repeat([]byte("a"), 5<<20)...)
	big = append(big, []byte(`"}}`)...)
	schema1 := []byte(`{"schemaVersion":1,"name":"x","tag":"v1","fsLayers":[{"blobSum":"` + layerD + `"}]}`)
	index := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":%q,"digest":%q,"size":10}]}`, ociManifest, missing))

	// an upload session for the chunk tests
	start := do(t, srv, "POST", "/v2/good/app/blobs/uploads/", nil, nil)
	if start.status != 202 {
		t.Fatalf("start upload: %d", start.status)
	}
	loc := start.header.Get("Location")
	if r := do(t, srv, "PATCH", loc, map[string]string{"Content-Range": "0-4", "Content-Type": "application/octet-stream"}, []byte("01234")); r.status != 202 {
		t.Fatalf("first chunk: %d %s", r.status, r.body)
	}

	tests := []struct {
		name, method, path string
		header             map[string]string
		body               []byte
		wantStatus         int
		wantCode           string
	}{
		{"digest mismatch on monolithic upload", "POST", "/v2/good/app/blobs/uploads/?digest=" + missing, nil, []byte("other bytes"), 400, "DIGEST_INVALID"},
		{"digest of unsupported algorithm", "POST", "/v2/good/app/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e", nil, []byte(""), 400, "DIGEST_INVALID"},
		{"malformed digest", "GET", "/v2/good/app/blobs/sha256:nothex", nil, nil, 400, "DIGEST_INVALID"},
		{"manifest referencing a missing blob", "PUT", "/v2/good/app/manifests/broken", map[string]string{"Content-Type": ociManifest}, imageManifest(cfgD, len(cfg), [2]any{missing, 12}), 400, "MANIFEST_BLOB_UNKNOWN"},
		{"index referencing a missing manifest", "PUT", "/v2/good/app/manifests/idx", map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, index, 400, "MANIFEST_BLOB_UNKNOWN"},
		{"oversized manifest", "PUT", "/v2/good/app/manifests/big", map[string]string{"Content-Type": ociManifest}, big, 413, "SIZE_INVALID"},
		{"malformed JSON", "PUT", "/v2/good/app/manifests/bad", map[string]string{"Content-Type": ociManifest}, []byte(`{"schemaVersion":2,`), 400, "MANIFEST_INVALID"},
		{"wrong media type", "PUT", "/v2/good/app/manifests/bad", map[string]string{"Content-Type": "application/vnd.example.not-a-manifest"}, good, 400, "MANIFEST_INVALID"},
		{"Content-Type disagrees with mediaType", "PUT", "/v2/good/app/manifests/bad", map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, good, 400, "MANIFEST_INVALID"},
		{"schema1 manifest", "PUT", "/v2/good/app/manifests/old", map[string]string{"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"}, schema1, 400, "MANIFEST_INVALID"},
		{"manifest digest in URL does not match body", "PUT", "/v2/good/app/manifests/" + missing, map[string]string{"Content-Type": ociManifest}, good, 400, "DIGEST_INVALID"},
		{"invalid tag", "PUT", "/v2/good/app/manifests/-tag", map[string]string{"Content-Type": ociManifest}, good, 400, "TAG_INVALID"},
		{"upper-case repository name", "GET", "/v2/Good/App/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"repository name too long", "GET", "/v2/" + strings.Repeat("a", 300) + "/tags/list", nil, nil, 400, "NAME_INVALID"},
		{"out-of-order chunk", "PATCH", loc, map[string]string{"Content-Range": "10-14"}, []byte("abcde"), 416, "RANGE_INVALID"},
		{"chunk overlapping what was sent", "PATCH", loc, map[string]string{"Content-Range": "0-4"}, []byte("01234"), 416, "RANGE_INVALID"},
		{"unknown upload id", "PATCH", "/v2/good/app/blobs/uploads/6f1c2a1e-2c2b-4c55-9d7e-0a1b2c3d4e5f", nil, []byte("x"), 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload id of another repository", "PATCH", strings.Replace(loc, "/good/app/", "/other/app/", 1), nil, []byte("x"), 404, "BLOB_UPLOAD_UNKNOWN"},
		{"upload id that is a path", "GET", "/v2/good/app/blobs/uploads/..%2F..%2F..%2Fetc", nil, nil, 404, "BLOB_UPLOAD_UNKNOWN"},
		{"dot-dot in name", "GET", "/v2/../../etc/passwd/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"dot-dot inside name", "GET", "/v2/good/../app/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"encoded slash in name", "GET", "/v2/good%2Fapp/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"encoded dot-dot in name", "GET", "/v2/good/%2e%2e/app/manifests/v1", nil, nil, 400, "NAME_INVALID"},
		{"encoded traversal in upload", "POST", "/v2/..%2F..%2Ftmp/blobs/uploads/", nil, nil, 400, "NAME_INVALID"},
		{"unknown blob", "GET", "/v2/good/app/blobs/" + missing, nil, nil, 404, "BLOB_UNKNOWN"},
		{"unknown manifest", "GET", "/v2/good/app/manifests/nope", nil, nil, 404, "MANIFEST_UNKNOWN"},
		{"unknown repository tags", "GET", "/v2/nobody/here/tags/list", nil, nil, 404, "NAME_UNKNOWN"},
		{"bad page size", "GET", "/v2/good/app/tags/list?n=-1", nil, nil, 400, "PAGINATION_NUMBER_INVALID"},
		{"method not allowed", "POST", "/v2/good/app/manifests/v1", nil, nil, 405, "UNSUPPORTED"},
		{"delete when deletion is off", "DELETE", "/v2/good/app/manifests/v1", nil, nil, 405, "UNSUPPORTED"},
		{"closing upload without digest", "PUT", loc, nil, nil, 400, "DIGEST_INVALID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, srv, tt.method, tt.path, tt.header, tt.body)
			if r.status != tt.wantStatus || r.code() != tt.wantCode {
				t.Fatalf("%s %s = %d %s, want %d %s", tt.method, tt.path, r.status, r.body, tt.wantStatus, tt.wantCode)
			}
			if len(r.message()) < 10 {
				t.Errorf("message %q is too thin to act on", r.message())
			}
			if r.header.Get("Content-Type") != "application/json" {
				t.Errorf("error Content-Type = %q", r.header.Get("Content-Type"))
			}
			srv.healthy(t)
		})
	}

	// nothing of the refused input was kept
	for _, p := range []string{"/v2/good/app/blobs/" + missing, "/v2/good/app/manifests/broken", "/v2/good/app/manifests/big", "/v2/good/app/manifests/idx"} {
		if r := do(t, srv, "HEAD", p, nil, nil); r.status != 404 {
			t.Errorf("HEAD %s = %d after it was refused, want 404", p, r.status)
		}
	}
	if r := do(t, srv, "GET", "/v2/_catalog", nil, nil); strings.Contains(string(r.body), "etc") || strings.Contains(string(r.body), "tmp") {
		t.Errorf("catalog gained a traversal name: %s", r.body)
	}
	// the upload survived the out-of-order chunks and finishes
	if r := do(t, srv, "GET", loc, nil, nil); r.status != 204 || r.header.Get("Range") != "0-4" {
		t.Fatalf("upload status after refused chunks: %d Range %q", r.status, r.header.Get("Range"))
	}
	whole := []byte("0123456789")
	if r := do(t, srv, "PUT", loc+"?digest="+sha(whole), map[string]string{"Content-Range": "5-9"}, whole[5:]); r.status != 201 {
		t.Fatalf("finishing upload: %d %s", r.status, r.body)
	}
	// and the good image is intact, byte for byte
	r := do(t, srv, "GET", "/v2/good/app/manifests/v1", map[string]string{"Accept": ociManifest}, nil)
	if r.status != 200 || !bytes.Equal(r.body, good) || r.header.Get("Docker-Content-Digest") != sha(good) {
		t.Fatalf("good manifest changed: %d %s", r.status, r.body)
	}
	if r := do(t, srv, "GET", "/v2/good/app/blobs/"+layerD, nil, nil); !bytes.Equal(r.body, layer) {
		t.Fatalf("good layer changed: %q", r.body)
	}
	srv.healthy(t)
}
