package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/api/rawhttp"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

func TestContentRange(t *testing.T) {
	tests := []struct {
		in         string
		start, end int64
		err        string // "" when it parses
	}{
		{"0-0", 0, 0, ""},
		{"0-99", 0, 99, ""},
		{"100-199", 100, 199, ""},
		{" 7-8 ", 7, 8, ""},
		{"bytes 0-9/10", 0, 9, ""},
		{"bytes=5-9", 5, 9, ""},
		{"bytes 5-9/*", 5, 9, ""},
		{"0-9223372036854775806", 0, 9223372036854775806, ""},
		{"9223372036854775806-9223372036854775806", 9223372036854775806, 9223372036854775806, ""},
		// end+1 would overflow
		{"0-9223372036854775807", 0, 0, "past the largest offset"},
		{"9223372036854775807-9223372036854775807", 0, 0, "past the largest offset"},
		// past int64
		{"0-99999999999999999999", 0, 0, "past the largest offset"},
		{"99999999999999999999-99999999999999999999", 0, 0, "past the largest offset"},
		{"18446744073709551616-1", 0, 0, "past the largest offset"},
		// end before start
		{"9-5", 0, 0, "before the start"},
		{"1-0", 0, 0, "before the start"},
		// negative, signs, junk
		{"-5", 0, 0, "start is missing"},
		{"-5-10", 0, 0, "start is missing"},
		{"5--10", 0, 0, "not a decimal"},
		{"+5-10", 0, 0, "not a decimal"},
		{"5-+10", 0, 0, "not a decimal"},
		{"0x10-0x20", 0, 0, "not a decimal"},
		{"a-b", 0, 0, "not a decimal"},
		{"1 -2", 0, 0, "not a decimal"},
		// missing parts
		{"", 0, 0, "no '-'"},
		{"10", 0, 0, "no '-'"},
		{"5-", 0, 0, "end is missing"},
		{"-", 0, 0, "start is missing"},
		{"bytes ", 0, 0, "no '-'"},
		{"bytes 0-9/", 0, 0, "size after '/'"},
		{"bytes 0-9/ten", 0, 0, "size after '/'"},
		{"bytes 0-9/-1", 0, 0, "size after '/'"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			start, end, err := parseContentRange(tt.in)
			if tt.err == "" {
				if err != nil || start != tt.start || end != tt.end {
					t.Errorf("got %d, %d, %v; want %d, %d", start, end, err, tt.start, tt.end)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("got %d, %d, %v; want an error saying %q", start, end, err, tt.err)
			}
		})
	}
}

// server is a handler on a filesystem store (linear in blob size, unlike distribution's
// inmemory driver) that a test can reach, restart, and look into.
type server struct {
	t     *testing.T
	store *content.Store
	srv   *httptest.Server
	h     *Handler
}

func newStore(t *testing.T) *content.Store {
	t.Helper()
	fs, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := content.New(context.Background(), fs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serve(t *testing.T, c *content.Store, opts ...Option) *server {
	t.Helper()
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	h, err := New(c, db, opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = WatchWrites(srv.Listener, h.opts.bodyIdle) // as serve.go does
	srv.Start()
	t.Cleanup(srv.Close)
	return &server{t: t, store: c, srv: srv, h: h}
}

type reply struct {
	status int
	header http.Header
	body   string
}

func (r reply) code() string {
	var b struct{ Errors []struct{ Code string } }
	if json.Unmarshal([]byte(r.body), &b) != nil || len(b.Errors) == 0 {
		return ""
	}
	return b.Errors[0].Code
}

func (s *server) do(method, path string, header map[string]string, body []byte) reply {
	s.t.Helper()
	req, _ := http.NewRequest(method, s.srv.URL+path, bytes.NewReader(body))
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(b)}
}

// open starts an upload session and returns its location.
func (s *server) open(repo string) string {
	s.t.Helper()
	r := s.do("POST", "/v2/"+repo+"/blobs/uploads/", nil, nil)
	if r.status != 202 {
		s.t.Fatalf("POST %s: %d %s", repo, r.status, r.body)
	}
	return r.header.Get("Location")
}

func TestContentRangeRefused(t *testing.T) {
	s := serve(t, newStore(t), WithMaxBlobSize(100))
	loc := s.open("a")
	tests := []struct {
		name   string
		header map[string]string
		body   []byte
		status int
		code   string
		msg    string
	}{
		{"end+1 overflows", map[string]string{"Content-Range": "0-9223372036854775807"}, []byte("x"), 416, "RANGE_INVALID", "past the largest offset"},
		{"past int64", map[string]string{"Content-Range": "0-99999999999999999999"}, []byte("x"), 416, "RANGE_INVALID", "past the largest offset"},
		{"end before start", map[string]string{"Content-Range": "5-2"}, []byte("x"), 416, "RANGE_INVALID", "before the start"},
		{"malformed", map[string]string{"Content-Range": "zero-nine"}, []byte("x"), 416, "RANGE_INVALID", "not a decimal"},
		{"past blob_size", map[string]string{"Content-Range": "0-100"}, bytes.Repeat([]byte("x"), 101), 416, "RANGE_INVALID", "limits.blob_size"},
		{"body past blob_size", nil, bytes.Repeat([]byte("x"), 101), 413, "SIZE_INVALID", "limits.blob_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.do("PATCH", loc, tt.header, tt.body)
			if r.status != tt.status || r.code() != tt.code || !strings.Contains(r.body, tt.msg) {
				t.Errorf("= %d %s, want %d %s saying %q", r.status, r.body, tt.status, tt.code, tt.msg)
			}
		})
	}
	// the session is intact: a chunk within the limit still lands
	if r := s.do("PATCH", loc, map[string]string{"Content-Range": "0-99"}, bytes.Repeat([]byte("y"), 100)); r.status != 202 || r.header.Get("Range") != "0-99" {
		t.Errorf("a chunk up to the limit = %d %s %v", r.status, r.body, r.header)
	}
	// a chunked body (no Content-Length) that runs past the limit is refused too
	req, _ := http.NewRequest("PATCH", s.srv.URL+s.open("a"), io.MultiReader(strings.NewReader(strings.Repeat("z", 150))))
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || !strings.Contains(string(b), "limits.blob_size") {
		t.Errorf("a chunked body past the limit = %d %s", resp.StatusCode, b)
	}
}

func TestUploadSessionCaps(t *testing.T) {
	s := serve(t, newStore(t), WithUploadSessions(3, 2, 0))
	a1, _ := s.open("a"), s.open("a")
	r := s.do("POST", "/v2/a/blobs/uploads/", nil, nil)
	if r.status != 429 || r.code() != "TOOMANYREQUESTS" || !strings.Contains(r.body, "uploads.max_sessions_per_repository") || r.header.Get("Retry-After") == "" {
		t.Fatalf("third session of a = %d %s %v", r.status, r.body, r.header)
	}
	s.open("b")
	r = s.do("POST", "/v2/c/blobs/uploads/", nil, nil)
	if r.status != 429 || r.code() != "TOOMANYREQUESTS" || !strings.Contains(r.body, "uploads.max_sessions ") {
		t.Fatalf("fourth session = %d %s", r.status, r.body)
	}
	// a monolithic upload needs a slot too
	blob := []byte("whole")
	if r := s.do("POST", "/v2/c/blobs/uploads/?digest="+digest.FromBytes(blob).String(), nil, blob); r.status != 429 {
		t.Errorf("monolithic upload past the cap = %d %s", r.status, r.body)
	}

	// finishing a session frees its slot at once
	if r := s.do("PUT", a1+"?digest="+digest.FromBytes(blob).String(), nil, blob); r.status != 201 {
		t.Fatalf("finish: %d %s", r.status, r.body)
	}
	c1 := s.open("c")
	// so does cancelling, and a failed finish
	if r := s.do("DELETE", c1, nil, nil); r.status != 204 {
		t.Fatalf("cancel: %d %s", r.status, r.body)
	}
	c2 := s.open("c")
	if r := s.do("PUT", c2+"?digest="+digest.FromString("other").String(), nil, blob); r.status != 400 {
		t.Fatalf("finish under a wrong digest: %d %s", r.status, r.body)
	}
	// a monolithic upload frees its slot when done
	if r := s.do("POST", "/v2/c/blobs/uploads/?digest="+digest.FromBytes(blob).String(), nil, blob); r.status != 201 {
		t.Fatalf("monolithic upload: %d %s", r.status, r.body)
	}
	s.open("c")
	if n := s.h.sessions.count(); n != 3 {
		t.Errorf("%d sessions counted, want 3", n)
	}
	if list, _ := s.store.UploadList(context.Background()); len(list) != 3 {
		t.Errorf("storage holds %d sessions, want 3", len(list))
	}
}

func TestUploadIdleTimeout(t *testing.T) {
	const idle = 500 * time.Millisecond
	s := serve(t, newStore(t), WithUploadSessions(10, 10, idle))
	quiet, busy := s.open("a"), s.open("a")
	stop := time.Now().Add(3 * idle)
	for time.Now().Before(stop) {
		if r := s.do("PATCH", busy, nil, []byte("x")); r.status != 202 {
			t.Fatalf("PATCH on a busy session: %d %s", r.status, r.body)
		}
		time.Sleep(idle / 4)
	}
	if r := s.do("PATCH", quiet, nil, []byte("late")); r.status != 404 || r.code() != "BLOB_UPLOAD_UNKNOWN" {
		t.Errorf("PATCH on a session idle past the timeout = %d %s", r.status, r.body)
	}
	if n := s.h.sessions.count(); n != 1 {
		t.Errorf("%d sessions counted, want 1 (the busy one)", n)
	}
	list, _ := s.store.UploadList(context.Background())
	if len(list) != 1 || !strings.HasSuffix(busy, list[0].ID) {
		t.Errorf("storage holds %+v, want only the busy session", list)
	}
	// a PATCH that runs longer than the timeout is activity to its end
	pr, pw := io.Pipe()
	done := make(chan reply, 1)
	go func() {
		req, _ := http.NewRequest("PATCH", s.srv.URL+busy, pr)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- reply{}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- reply{status: resp.StatusCode, body: string(b)}
	}()
	for range 8 {
		pw.Write([]byte("slow"))
		time.Sleep(idle / 2)
	}
	pw.Close()
	if r := <-done; r.status != 202 {
		t.Errorf("a long PATCH = %d %s", r.status, r.body)
	}
	if !eventually(10*idle, func() bool { return s.h.sessions.count() == 0 }) {
		t.Errorf("%d sessions counted after every one idled out", s.h.sessions.count())
	}
}

// eventually polls cond for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

func TestUploadCountSurvivesRestart(t *testing.T) {
	store := newStore(t)
	before := serve(t, store, WithUploadSessions(10, 2, 0))
	a1, _ := before.open("a"), before.open("a")
	before.srv.Close()

	after := serve(t, store, WithUploadSessions(10, 2, 0))
	if n := after.h.sessions.count(); n != 2 {
		t.Fatalf("a restarted server counts %d sessions, want 2", n)
	}
	if r := after.do("POST", "/v2/a/blobs/uploads/", nil, nil); r.status != 429 {
		t.Fatalf("past the cap after a restart: %d %s", r.status, r.body)
	}
	if r := after.do("DELETE", a1, nil, nil); r.status != 204 {
		t.Fatalf("cancel a session of the last run: %d %s", r.status, r.body)
	}
	after.open("a")

	// sessions of the last run idle out too, from their last write
	idled := serve(t, store, WithUploadSessions(10, 2, 200*time.Millisecond))
	if !eventually(5*time.Second, func() bool { return idled.h.sessions.count() == 0 }) {
		t.Errorf("%d sessions of the last run still counted after the idle timeout", idled.h.sessions.count())
	}
	if list, _ := store.UploadList(context.Background()); len(list) != 0 {
		t.Errorf("storage still holds %d idle sessions", len(list))
	}
}

// rawRequest sends a request's head on a fresh connection and returns it.
func rawRequest(t *testing.T, s *server, head string, rcvbuf int) net.Conn {
	return rawhttp.Dial(t, s.srv.Listener.Addr().String(), head, rcvbuf)
}

func TestSlowBodyTimedOut(t *testing.T) {
	const gap = 300 * time.Millisecond
	s := serve(t, newStore(t), WithBodyTimeouts(gap, 0))
	loc := s.open("a")
	// a few bytes, then nothing
	conn := rawRequest(t, s, "PATCH "+loc+" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabcde", 0)
	line, took := rawhttp.StatusLine(t, conn, gap+5*time.Second)
	if !strings.Contains(line, "408") || took > gap+2*time.Second {
		t.Errorf("a stalled PATCH: %q after %s (gap %s)", line, took, gap)
	}
	if r := s.do("GET", loc, nil, nil); r.status != 204 || r.header.Get("Range") != "0-4" {
		t.Errorf("the session after a stalled chunk: %d %v", r.status, r.header)
	}
	// the same with no session: a manifest body that stalls
	conn = rawRequest(t, s, "PUT /v2/a/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000\r\n\r\n{", 0)
	if _, took := rawhttp.StatusLine(t, conn, gap+5*time.Second); took > gap+2*time.Second {
		t.Errorf("a stalled manifest PUT held on %s", took)
	}
}

func TestDribbledBodyTimedOut(t *testing.T) {
	const gap = 500 * time.Millisecond
	s := serve(t, newStore(t), WithBodyTimeouts(gap, 1000))
	loc := s.open("a")
	conn := rawRequest(t, s, "PATCH "+loc+" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", 0)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a byte every tenth of the gap: never a gap, far under the rate
		for {
			select {
			case <-stop:
				return
			case <-time.After(gap / 10):
				if _, err := conn.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	line, took := rawhttp.StatusLine(t, conn, gap+5*time.Second)
	if !strings.Contains(line, "408") || took > gap+2*time.Second {
		t.Errorf("a dribbled PATCH: %q after %s (gap %s, min rate 1000 B/s)", line, took, gap)
	}
}

// steadyReader yields size bytes in pieces with a pause before each.
type steadyReader struct {
	left  int
	piece int
	pause time.Duration
}

func (r *steadyReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	time.Sleep(r.pause)
	n := min(len(p), r.piece, r.left)
	for i := range p[:n] {
		p[i] = 'x'
	}
	r.left -= n
	return n, nil
}

func TestSteadyTransfersNotCut(t *testing.T) {
	const gap = 200 * time.Millisecond
	s := serve(t, newStore(t), WithBodyTimeouts(gap, 64<<10))
	// an upload that lasts many gaps at a fair rate
	const size = 2 << 20
	req, _ := http.NewRequest("PATCH", s.srv.URL+s.open("a"), &steadyReader{left: size, piece: 64 << 10, pause: gap / 8})
	req.ContentLength = size
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 202 || resp.Header.Get("Range") != fmt.Sprintf("0-%d", size-1) {
		t.Fatalf("a steady %d-byte PATCH over %s = %d %s", size, time.Since(start), resp.StatusCode, b)
	}
	// a download read at a steady pace, lasting many gaps
	blob := make([]byte, 16<<20)
	rand.Read(blob)
	d := digest.FromBytes(blob)
	if r := s.do("POST", "/v2/a/blobs/uploads/?digest="+d.String(), nil, blob); r.status != 201 {
		t.Fatalf("push: %d %s", r.status, r.body)
	}
	resp, err = http.Get(s.srv.URL + "/v2/a/blobs/" + d.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := digest.SHA256.Digester()
	start = time.Now()
	buf := make([]byte, 256<<10)
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		got.Hash().Write(buf[:k])
		n += int64(k)
		if err != nil {
			break
		}
		time.Sleep(gap / 20)
	}
	if got.Digest() != d {
		t.Errorf("a steady reader got %d of %d bytes in %s", n, len(blob), time.Since(start))
	}
}

func TestStalledReaderCut(t *testing.T) {
	const gap = 300 * time.Millisecond
	s := serve(t, newStore(t), WithBodyTimeouts(gap, 0))
	blob := make([]byte, 64<<20) // more than the socket buffers hold
	rand.Read(blob)
	d := digest.FromBytes(blob)
	if r := s.do("POST", "/v2/a/blobs/uploads/?digest="+d.String(), nil, blob); r.status != 201 {
		t.Fatalf("push: %d %s", r.status, r.body)
	}
	// a small response first, on the same connection: the watch holds across requests
	conn := rawRequest(t, s, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/a/blobs/"+d.String()+" HTTP/1.1\r\nHost: x\r\n\r\n", 16<<10)
	head := make([]byte, 4<<10)
	if _, err := io.ReadFull(conn, head); err != nil || !bytes.HasPrefix(head, []byte("HTTP/1.1 200")) {
		t.Fatalf("GET: %q %v", head[:min(len(head), 40)], err)
	}
	time.Sleep(10 * gap) // stop reading
	conn.SetReadDeadline(time.Now().Add(20 * gap))
	n, err := io.Copy(io.Discard, conn)
	if int(n)+len(head) >= len(blob) {
		t.Errorf("a reader that stopped for %s still got the whole blob (%d bytes, %v)", 10*gap, n, err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("the server never hung up on a stalled reader (%d bytes read after it resumed)", n)
	}
	if r := s.do("GET", "/healthz", nil, nil); r.status != 200 {
		t.Errorf("healthz after a cut reader: %d", r.status)
	}
}

// TestSlowSteadyReaderNotCut: a reader far slower than the send queue drains per gap (a client
// on a slow link) is not cut as long as it keeps taking bytes (found by an adversarial session:
// one reading 200 KB/s was cut with a 2 s gap, since a blocked write returns only when half the
// send queue has drained). It reads 128 KiB every half gap (loopback's segments are 64 KiB: a
// reader taking less opens no window at all) for twelve gaps, then the rest at once: a cut
// connection would end short of the whole blob.
func TestSlowSteadyReaderNotCut(t *testing.T) {
	const gap = 300 * time.Millisecond
	s := serve(t, newStore(t), WithBodyTimeouts(gap, 0))
	blob := make([]byte, 32<<20)
	rand.Read(blob)
	d := digest.FromBytes(blob)
	if r := s.do("POST", "/v2/a/blobs/uploads/?digest="+d.String(), nil, blob); r.status != 201 {
		t.Fatalf("push: %d %s", r.status, r.body)
	}
	conn := rawRequest(t, s, "GET /v2/a/blobs/"+d.String()+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0)
	buf := make([]byte, 128<<10)
	var n int64
	for range 24 {
		conn.SetReadDeadline(time.Now().Add(5 * gap))
		k, err := io.ReadFull(conn, buf)
		n += int64(k)
		if err != nil {
			t.Fatalf("the slow reader's read failed after %d bytes: %v", n, err)
		}
		time.Sleep(gap / 2)
	}
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	rest, err := io.Copy(io.Discard, conn)
	if n += rest; n < int64(len(blob)) {
		t.Errorf("a reader that kept taking 128 KiB every half gap was cut: %d of %d bytes (%v)", n, len(blob), err)
	}
}
