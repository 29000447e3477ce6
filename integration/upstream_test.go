//go:build integration

package integration

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// upstreamRegistry is a real CNCF distribution registry process standing in for docker.io.
type upstreamRegistry struct {
	t      *testing.T
	addr   string // 127.0.0.1:port, fixed across restarts
	config string
	cmd    *exec.Cmd
	exited chan struct{}
	log    *lockedBuffer
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startUpstream starts the registry with extra YAML (e.g. an auth block).
func startUpstream(t *testing.T, extra string) *upstreamRegistry {
	t.Helper()
	dir := t.TempDir()
	u := &upstreamRegistry{t: t, addr: freeAddr(t), config: filepath.Join(dir, "registry.yml")}
	cfg := fmt.Sprintf(`version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: %s}
  delete: {enabled: true}
http: {addr: %s}
%s`, filepath.Join(dir, "data"), u.addr, extra)
	if err := os.WriteFile(u.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	u.start()
	t.Cleanup(u.kill)
	return u
}

func (u *upstreamRegistry) start() {
	u.t.Helper()
	u.log = &lockedBuffer{}
	u.cmd = exec.Command(tool(u.t, "registry"), "serve", u.config)
	u.cmd.Stdout, u.cmd.Stderr = u.log, u.log
	if err := u.cmd.Start(); err != nil {
		u.t.Fatal(err)
	}
	u.exited = make(chan struct{})
	go func() { u.cmd.Wait(); close(u.exited) }()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(30 * time.Millisecond) {
		resp, err := http.Get("http://" + u.addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			return
		}
	}
	u.t.Fatalf("upstream registry did not start:\n%s", u.log)
}

// kill stops the registry at once (SIGKILL).
func (u *upstreamRegistry) kill() {
	select {
	case <-u.exited:
		return
	default:
	}
	u.cmd.Process.Signal(syscall.SIGKILL)
	<-u.exited
}

// front is a counting, fault-injecting reverse proxy in front of the upstream registry: it
// counts each request by method and path, and can rate-limit, lie about a blob's bytes, or
// slow a blob down so the upstream can be killed mid-transfer, stream a blob without end or
// drip it, and answer paths with bodies of its own (manifests and referrers no registry takes).
type front struct {
	addr string
	mu   sync.Mutex
	seen map[string]int // "GET /v2/..." -> count
	// faults
	rateLimit bool
	lieAbout  string                    // blob digest whose bytes are replaced
	slow      string                    // blob digest streamed slowly
	slowStep  time.Duration             // pause per 64 KiB of the slow blob
	endless   string                    // blob digest streamed chunked, without end
	drip      string                    // blob digest sent one byte a second (its Content-Length kept)
	canned    map[string]cannedResponse // by path: answered by the front, for GET and HEAD
	sent      atomic.Int64              // bytes of endless and dripped bodies the front handed on
}

type cannedResponse struct {
	mediaType string
	body      []byte
}

// serve makes the front answer repo's refs (tags, or the body's digest) with body itself.
func (f *front) serve(repo, kind string, refs []string, mediaType string, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.canned == nil {
		f.canned = map[string]cannedResponse{}
	}
	for _, ref := range refs {
		f.canned["/v2/"+repo+"/"+kind+"/"+ref] = cannedResponse{mediaType, body}
	}
}

func startFront(t *testing.T, target string) *front {
	t.Helper()
	f := &front{seen: map[string]int{}}
	u, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		f.mu.Lock()
		lie, slow, step := f.lieAbout, f.slow, f.slowStep
		f.mu.Unlock()
		path := resp.Request.URL.Path
		if lie != "" && strings.HasSuffix(path, "/blobs/"+lie) && resp.Request.Method == http.MethodGet {
			resp.Body = &flipReader{rc: resp.Body}
		}
		if slow != "" && strings.HasSuffix(path, "/blobs/"+slow) && resp.Request.Method == http.MethodGet {
			resp.Body = &slowReader{rc: resp.Body, step: step}
		}
		f.mu.Lock()
		endless, drip := f.endless, f.drip
		f.mu.Unlock()
		if endless != "" && strings.HasSuffix(path, "/blobs/"+endless) && resp.Request.Method == http.MethodGet {
			resp.Body.Close()
			resp.Body, resp.ContentLength = &endlessBody{sent: &f.sent}, -1
			resp.Header.Del("Content-Length")
		}
		if drip != "" && strings.HasSuffix(path, "/blobs/"+drip) && resp.Request.Method == http.MethodGet {
			resp.Body = &dripBody{rc: resp.Body, sent: &f.sent}
		}
		return nil
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.seen[r.Method+" "+r.URL.Path]++
		limited := f.rateLimit
		c, isCanned := f.canned[r.URL.Path]
		f.mu.Unlock()
		if isCanned && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			w.Header().Set("Content-Type", c.mediaType)
			w.Header().Set("Docker-Content-Digest", sha(c.body))
			w.Header().Set("Content-Length", strconv.Itoa(len(c.body)))
			if r.Method == http.MethodGet {
				w.Write(c.body)
			}
			return
		}
		if limited && r.URL.Path != "/v2/" {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			io.WriteString(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"pull rate limit exceeded"}]}`)
			return
		}
		rp.ServeHTTP(w, r)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *front) count(method, path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen[method+" "+path]
}

func (f *front) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = map[string]int{}
}

func (f *front) set(fn func(f *front)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// flipReader flips one bit in every byte: same length, wrong digest.
type flipReader struct{ rc io.ReadCloser }

func (r *flipReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	for i := range p[:n] {
		p[i] ^= 1
	}
	return n, err
}

func (r *flipReader) Close() error { return r.rc.Close() }

type slowReader struct {
	rc   io.ReadCloser
	step time.Duration
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(p) > 64<<10 {
		p = p[:64<<10]
	}
	time.Sleep(r.step)
	return r.rc.Read(p)
}

func (r *slowReader) Close() error { return r.rc.Close() }

// endlessBody never ends.
type endlessBody struct{ sent *atomic.Int64 }

func (e *endlessBody) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.sent.Add(int64(len(p)))
	return len(p), nil
}

func (e *endlessBody) Close() error { return nil }

// dripBody hands on one byte of the real body a second.
type dripBody struct {
	rc   io.ReadCloser
	sent *atomic.Int64
}

func (d *dripBody) Read(p []byte) (int, error) {
	time.Sleep(time.Second)
	n, err := d.rc.Read(p[:1])
	d.sent.Add(int64(n))
	return n, err
}

func (d *dripBody) Close() error { return d.rc.Close() }

// proxyConfig is a gatehouse config whose docker.io route pulls from upstream (a host:port);
// routeYAML adds keys to that route (indented by four spaces).
func proxyConfig(upstream, routeYAML string) string {
	return fmt.Sprintf(`routes:
  - prefix: docker.io
    kind: pull
    upstream: {url: "http://%s", timeout: 5s}
%s
  - {prefix: "", kind: push}
`, upstream, routeYAML)
}
