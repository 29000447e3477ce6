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
	"strings"
	"sync"
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
// slow a blob down so the upstream can be killed mid-transfer.
type front struct {
	addr string
	mu   sync.Mutex
	seen map[string]int // "GET /v2/..." -> count
	// faults
	rateLimit bool
	lieAbout  string        // blob digest whose bytes are replaced
	slow      string        // blob digest streamed slowly
	slowStep  time.Duration // pause per 64 KiB of the slow blob
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
		return nil
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.seen[r.Method+" "+r.URL.Path]++
		limited := f.rateLimit
		f.mu.Unlock()
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
