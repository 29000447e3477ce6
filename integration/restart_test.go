//go:build integration

package integration

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startStreaming sends a request whose body is fed by the returned writer, so the test can kill
// the server while the body is half sent.
func startStreaming(t *testing.T, srv *server, method, path string, header map[string]string, length int64) (*io.PipeWriter, <-chan error) {
	t.Helper()
	pr, pw := io.Pipe()
	req, err := http.NewRequest(method, srv.url(path), pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = length
	for k, v := range header {
		req.Header.Set(k, v)
	}
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("request completed with %d", resp.StatusCode)
		}
		done <- err
	}()
	return pw, done
}

// killMidBody writes part of a body, gives the server time to take it in, and kills it -9.
func killMidBody(t *testing.T, srv *server, pw *io.PipeWriter, part []byte, done <-chan error) {
	t.Helper()
	if _, err := pw.Write(part); err != nil {
		t.Fatalf("writing the first part: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	srv.kill9()
	pw.CloseWithError(io.ErrUnexpectedEOF)
	if err := <-done; err == nil {
		t.Fatal("the interrupted request succeeded")
	}
}

func TestRestartDuringChunkedUpload(t *testing.T) {
	srv := startGatehouse(t, "")
	data := make([]byte, 3<<20)
	rand.Read(data)
	digest := sha(data)
	const chunk = 1 << 20

	start := do(t, srv, "POST", "/v2/crash/upload/blobs/uploads/", nil, nil)
	loc := start.header.Get("Location")
	if r := do(t, srv, "PATCH", loc, map[string]string{"Content-Range": fmt.Sprintf("0-%d", chunk-1)}, data[:chunk]); r.status != 202 {
		t.Fatalf("first chunk: %d %s", r.status, r.body)
	}
	// second chunk: half of it arrives, then the server dies
	pw, done := startStreaming(t, srv, "PATCH", loc, map[string]string{"Content-Range": fmt.Sprintf("%d-%d", chunk, 2*chunk-1)}, chunk)
	killMidBody(t, srv, pw, data[chunk:chunk+chunk/2], done)

	srv.start()
	// nothing half-written is served
	if r := do(t, srv, "HEAD", "/v2/crash/upload/blobs/"+digest, nil, nil); r.status != 404 {
		t.Fatalf("HEAD of the unfinished blob after restart = %d, want 404", r.status)
	}
	// a fresh upload of the same blob works
	fresh := do(t, srv, "POST", "/v2/crash/fresh/blobs/uploads/", nil, nil)
	floc := fresh.header.Get("Location")
	if r := do(t, srv, "PATCH", floc, nil, data); r.status != 202 {
		t.Fatalf("fresh upload PATCH: %d %s", r.status, r.body)
	}
	if r := do(t, srv, "PUT", floc+"?digest="+digest, nil, nil); r.status != 201 {
		t.Fatalf("fresh upload PUT: %d %s", r.status, r.body)
	}
	// and the interrupted session resumes from what it kept
	st := do(t, srv, "GET", loc, nil, nil)
	if st.status != 204 {
		t.Fatalf("upload status after restart: %d %s", st.status, st.body)
	}
	var last int64
	if _, err := fmt.Sscanf(st.header.Get("Range"), "0-%d", &last); err != nil || last < chunk-1 || last >= 2*chunk-1 {
		t.Fatalf("Range after restart = %q, want between 0-%d and 0-%d", st.header.Get("Range"), chunk-1, 2*chunk-2)
	}
	kept := last + 1
	if r := do(t, srv, "PATCH", loc, map[string]string{"Content-Range": fmt.Sprintf("%d-%d", kept, len(data)-1)}, data[kept:]); r.status != 202 {
		t.Fatalf("resuming PATCH: %d %s", r.status, r.body)
	}
	if r := do(t, srv, "PUT", loc+"?digest="+digest, nil, nil); r.status != 201 {
		t.Fatalf("resumed upload PUT: %d %s", r.status, r.body)
	}
	for _, repo := range []string{"crash/upload", "crash/fresh"} {
		if r := do(t, srv, "GET", "/v2/"+repo+"/blobs/"+digest, nil, nil); r.status != 200 || !bytes.Equal(r.body, data) {
			t.Fatalf("%s blob after restart: %d, %d bytes", repo, r.status, len(r.body))
		}
	}
	srv.healthy(t)
}

func TestRestartDuringMonolithicUpload(t *testing.T) {
	srv := startGatehouse(t, "")
	data := make([]byte, 2<<20)
	rand.Read(data)
	pw, done := startStreaming(t, srv, "POST", "/v2/crash/mono/blobs/uploads/?digest="+sha(data), nil, int64(len(data)))
	killMidBody(t, srv, pw, data[:len(data)/2], done)
	srv.start()
	if r := do(t, srv, "HEAD", "/v2/crash/mono/blobs/"+sha(data), nil, nil); r.status != 404 {
		t.Fatalf("HEAD of the interrupted blob = %d, want 404", r.status)
	}
	pushBlob(t, srv, "crash/mono", data)
	srv.healthy(t)
}

func TestRestartDuringManifestPut(t *testing.T) {
	srv := startGatehouse(t, "")
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	layer := []byte("restart layer")
	cfgD, layerD := pushBlob(t, srv, "crash/manifest", cfg), pushBlob(t, srv, "crash/manifest", layer)
	v1 := imageManifest(cfgD, len(cfg), [2]any{layerD, len(layer)})
	if r := do(t, srv, "PUT", "/v2/crash/manifest/manifests/v1", map[string]string{"Content-Type": ociManifest}, v1); r.status != 201 {
		t.Fatalf("v1: %d %s", r.status, r.body)
	}
	// v2 differs by an annotation; its PUT dies half-way through the body
	v2 := bytes.Replace(v1, []byte(`"layers"`), []byte(`"annotations":{"build":"2"},"layers"`), 1)
	pw, done := startStreaming(t, srv, "PUT", "/v2/crash/manifest/manifests/v2", map[string]string{"Content-Type": ociManifest}, int64(len(v2)))
	killMidBody(t, srv, pw, v2[:len(v2)/2], done)

	srv.start()
	if r := do(t, srv, "GET", "/v2/crash/manifest/manifests/v2", nil, nil); r.status != 404 || r.code() != "MANIFEST_UNKNOWN" {
		t.Fatalf("half-sent manifest served after restart: %d %s", r.status, r.body)
	}
	if r := do(t, srv, "GET", "/v2/crash/manifest/manifests/"+sha(v2), nil, nil); r.status != 404 {
		t.Fatalf("half-sent manifest served by digest: %d", r.status)
	}
	if r := do(t, srv, "GET", "/v2/crash/manifest/tags/list", nil, nil); !strings.Contains(string(r.body), `"tags":["v1"]`) {
		t.Fatalf("tags after restart: %s", r.body)
	}
	if r := do(t, srv, "GET", "/v2/crash/manifest/manifests/v1", nil, nil); !bytes.Equal(r.body, v1) {
		t.Fatalf("v1 changed across the crash: %s", r.body)
	}
	if r := do(t, srv, "PUT", "/v2/crash/manifest/manifests/v2", map[string]string{"Content-Type": ociManifest}, v2); r.status != 201 {
		t.Fatalf("re-PUT of v2: %d %s", r.status, r.body)
	}
	if r := do(t, srv, "GET", "/v2/crash/manifest/manifests/v2", nil, nil); !bytes.Equal(r.body, v2) {
		t.Fatalf("v2 after re-PUT: %s", r.body)
	}
	srv.healthy(t)
}
