//go:build integration

package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/proxy/api/rawhttp"
)

// Hostile clients and the resources they may hold: upload sessions, request bodies that stall,
// readers that stop, and the pull-through fill they share with everyone else.

// rawConn opens a TCP connection to Gatehouse with a small receive buffer (so a client that
// stops reading stops the server's writes soon) and sends a request head on it.
func rawConn(t *testing.T, gh *server, head string) net.Conn {
	return rawhttp.Dial(t, gh.addr, head, 16<<10)
}

// Two clients read a few KiB of an uncached 64 MiB layer and stop reading, sockets open. A third
// client still gets the whole layer, and the image's scan (which needs the same layer) completes.
func TestSlowReadersDoNotHoldTheFill(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	manifestDigest, layer := pushBigImage(t, crane, up.addr+"/library/x:v1", 64<<20)
	gh := startGatehouse(t, proxyConfig(up.addr, ""))

	path := "/v2/docker.io/library/x/blobs/" + layer
	head := "GET " + path + " HTTP/1.1\r\nHost: " + gh.addr + "\r\n\r\n"
	for i := range 2 {
		conn := rawConn(t, gh, head)
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 8<<10)
		if _, err := io.ReadFull(conn, buf); err != nil || !strings.HasPrefix(string(buf), "HTTP/1.1 200") {
			t.Fatalf("stuck client %d: %q %v", i, buf[:min(len(buf), 60)], err)
		}
		// and now it reads no more
	}

	start := time.Now()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(gh.url(path))
	if err != nil {
		t.Fatalf("third client behind two stuck ones: %v\n%s", err, tail(gh.log.String(), 20))
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || "sha256:"+hex.EncodeToString(h.Sum(nil)) != layer {
		t.Fatalf("third client: %s, %d bytes in %s, err %v", resp.Status, n, time.Since(start), err)
	}
	t.Logf("third client got the %d-byte layer in %s while two clients held theirs", n, time.Since(start).Round(time.Millisecond))

	// background scanning goes on: the image is fetched and scanned, its layer included
	if status, _, body := get(t, gh.url("/v2/docker.io/library/x/manifests/v1"), map[string]string{"Accept": acceptAll}); status != 200 {
		t.Fatalf("manifest: %d %s", status, body)
	}
	start = time.Now()
	r, _ := waitScan(t, gh, manifestDigest, func(r scanReport) bool { return r.Complete || r.Error != "" })
	if !r.Complete {
		t.Fatalf("scan with two stuck readers of its layer: %+v", r)
	}
	t.Logf("scan complete %s after the manifest was pulled", time.Since(start).Round(time.Millisecond))
	gh.healthy(t)
}

func TestUploadCaps(t *testing.T) {
	gh := startGatehouse(t, "uploads: {max_sessions: 5, max_sessions_per_repository: 3, idle_timeout: 1m}\n")
	open := func(repo string) string {
		t.Helper()
		r := do(t, gh, "POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
		if r.status != 202 {
			t.Fatalf("POST %s: %d %s", repo, r.status, r.body)
		}
		return r.header.Get("Location")
	}
	var a []string
	for range 3 {
		a = append(a, open("caps/a"))
	}
	r := do(t, gh, "POST", "/v2/caps/a/blobs/uploads/", nil, nil)
	if r.status != 429 || r.code() != "TOOMANYREQUESTS" || !strings.Contains(r.message(), "uploads.max_sessions_per_repository") || r.header.Get("Retry-After") == "" {
		t.Fatalf("fourth session of caps/a = %d %s (Retry-After %q)", r.status, r.body, r.header.Get("Retry-After"))
	}
	t.Logf("past the per-repository cap: %d %s", r.status, r.message())
	open("caps/b")
	open("caps/b")
	r = do(t, gh, "POST", "/v2/caps/c/blobs/uploads/", nil, nil)
	if r.status != 429 || r.code() != "TOOMANYREQUESTS" || !strings.Contains(r.message(), "uploads.max_sessions ") {
		t.Fatalf("sixth session = %d %s", r.status, r.body)
	}
	t.Logf("past the total cap: %d %s", r.status, r.message())

	// finishing a session frees its slot at once
	blob := []byte("a finished upload")
	if r := do(t, gh, "PUT", a[0]+"?digest="+sha(blob), nil, blob); r.status != 201 {
		t.Fatalf("finish: %d %s", r.status, r.body)
	}
	open("caps/c")
	waitMetric(t, gh, "gatehouse_upload_sessions_open 5")

	// a restart counts the sessions storage holds
	gh.kill9()
	gh.start()
	waitMetric(t, gh, "gatehouse_upload_sessions_open 5")
	if r := do(t, gh, "POST", "/v2/caps/a/blobs/uploads/", nil, nil); r.status != 429 {
		t.Fatalf("past the cap after a restart: %d %s", r.status, r.body)
	}
	if r := do(t, gh, "DELETE", a[1], nil, nil); r.status != 204 {
		t.Fatalf("cancel a session of the last run: %d %s", r.status, r.body)
	}
	open("caps/a")

	// an idle session is closed after uploads.idle_timeout, a busy one is not
	const idle = 2 * time.Second
	cfg, err := os.ReadFile(gh.config)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(gh.config, []byte(strings.Replace(string(cfg), "idle_timeout: 1m", fmt.Sprintf("idle_timeout: %s", idle), 1)), 0o644)
	gh.stop()
	gh.start()
	waitMetric(t, gh, "gatehouse_upload_sessions_open 0") // the last run's sessions were idle long enough
	quiet, busy := open("caps/d"), open("caps/d")
	if r := do(t, gh, "PATCH", quiet, nil, []byte("some bytes")); r.status != 202 {
		t.Fatalf("PATCH: %d %s", r.status, r.body)
	}
	for stop := time.Now().Add(2 * idle); time.Now().Before(stop); time.Sleep(idle / 4) {
		if r := do(t, gh, "PATCH", busy, nil, []byte("x")); r.status != 202 {
			t.Fatalf("PATCH on a busy session: %d %s", r.status, r.body)
		}
	}
	if r := do(t, gh, "PATCH", quiet, nil, []byte("late")); r.status != 404 || r.code() != "BLOB_UPLOAD_UNKNOWN" {
		t.Errorf("PATCH on a session idle for %s = %d %s", 2*idle, r.status, r.body)
	}
	if r := do(t, gh, "GET", busy, nil, nil); r.status != 204 {
		t.Errorf("the busy session: %d %s", r.status, r.body)
	}
	waitMetric(t, gh, "gatehouse_upload_sessions_open 1")
	if !strings.Contains(gh.log.String(), "closed an idle upload session") {
		t.Error("the log does not say an idle session was closed")
	}
	gh.healthy(t)
}

func TestSlowBodyTimedOut(t *testing.T) {
	const gap = 2 * time.Second
	gh := startGatehouse(t, fmt.Sprintf("limits: {body_idle_timeout: %s}\n", gap))
	loc := do(t, gh, "POST", "/v2/slow/a/blobs/uploads/", nil, nil).header.Get("Location")

	// a few bytes, then nothing
	conn := rawConn(t, gh, "PATCH "+loc+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\nfirst bytes")
	line, took := rawhttp.StatusLine(t, conn, gap+10*time.Second)
	if !strings.Contains(line, "408") || took > gap+3*time.Second {
		t.Errorf("a PATCH that stalls: %q after %s (limits.body_idle_timeout %s)", line, took, gap)
	}
	t.Logf("stalled PATCH answered %q after %s", line, took.Round(time.Millisecond))
	if r := do(t, gh, "GET", loc, nil, nil); r.status != 204 || r.header.Get("Range") != "0-10" {
		t.Errorf("the session keeps what arrived: %d Range %q", r.status, r.header.Get("Range"))
	}

	// a byte every 200 ms: never a gap, far under limits.body_min_rate (1KiB/s)
	conn = rawConn(t, gh, "PATCH "+loc+" HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
				if _, err := conn.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	line, took = rawhttp.StatusLine(t, conn, gap+10*time.Second)
	close(stop)
	if !strings.Contains(line, "408") || took > gap+3*time.Second {
		t.Errorf("a PATCH that dribbles: %q after %s", line, took)
	}
	t.Logf("dribbled PATCH answered %q after %s", line, took.Round(time.Millisecond))

	// a reader that stops is cut too: it never gets the rest of a 64 MiB blob
	blob := make([]byte, 64<<20)
	for i := range blob {
		blob[i] = byte(i * 31 >> 7)
	}
	d := pushBlob(t, gh, "slow/a", blob)
	conn = rawConn(t, gh, "GET /v2/slow/a/blobs/"+d+" HTTP/1.1\r\nHost: x\r\n\r\n")
	first := make([]byte, 8<<10)
	if _, err := io.ReadFull(conn, first); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2*gap + time.Second)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("a reader that stopped for %s was never hung up on", 2*gap)
	}
	if int(n)+len(first) >= len(blob) {
		t.Errorf("a reader that stopped for %s still got the whole blob", 2*gap)
	}
	t.Logf("a reader that stopped got %d of %d bytes before it was cut", int(n)+len(first), len(blob))

	// large transfers at a fair rate are not cut: a 64 MiB GET and PUT
	status, _, body := get(t, gh.url("/v2/slow/a/blobs/"+d), nil)
	if status != 200 || sha(body) != d {
		t.Errorf("a full GET: %d, %d bytes", status, len(body))
	}
	if r := do(t, gh, "POST", "/v2/slow/b/blobs/uploads/?digest="+d, nil, blob); r.status != 201 {
		t.Errorf("a full upload: %d %s", r.status, r.body)
	}
	gh.healthy(t)
}

func TestContentRangeOverflow(t *testing.T) {
	gh := startGatehouse(t, "")
	loc := do(t, gh, "POST", "/v2/range/a/blobs/uploads/", nil, nil).header.Get("Location")
	for _, cr := range []string{"0-9223372036854775807", "0-99999999999999999999", "bytes 9223372036854775807-9223372036854775807/*", "10-2", "-1-5"} {
		r := do(t, gh, "PATCH", loc, map[string]string{"Content-Range": cr}, []byte("x"))
		if r.status != 416 || r.code() != "RANGE_INVALID" {
			t.Errorf("Content-Range %q = %d %s, want 416 RANGE_INVALID", cr, r.status, r.body)
		}
	}
	if r := do(t, gh, "PATCH", loc, map[string]string{"Content-Range": "0-4"}, []byte("01234")); r.status != 202 {
		t.Errorf("a good chunk after refused ones: %d %s", r.status, r.body)
	}
	gh.healthy(t)
}
