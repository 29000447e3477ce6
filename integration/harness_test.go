//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var gatehouseBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gatehouse-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gatehouseBin = filepath.Join(dir, "gatehouse")
	build := exec.Command("go", "build", "-o", gatehouseBin, "../cmd/gatehouse")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building gatehouse:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tool returns the path of a test tool; a missing tool fails the test (never skips it):
// integration/tools/install.sh puts them in place.
func tool(t *testing.T, name string) string {
	t.Helper()
	if dir := os.Getenv("GATEHOUSE_TOOLS_BIN"); dir != "" {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run integration/tools/install.sh (or integration/run.sh)", name)
	}
	return p
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// server is a running `gatehouse serve` process.
type server struct {
	t       *testing.T
	dataDir string
	config  string
	addr    string
	cmd     *exec.Cmd
	log     *lockedBuffer
	exited  chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startGatehouse starts a server on a fresh data directory with the given extra YAML. Unless that
// YAML configures admission, the server runs in audit mode: tests of the registry and the proxy
// push and pull content no policy would admit (the gate's own tests enforce).
func startGatehouse(t *testing.T, extraYAML string) *server {
	t.Helper()
	if !strings.Contains(extraYAML, "admission:") {
		extraYAML = "admission: {mode: audit}\n" + extraYAML
	}
	// a test's server fetches no vulnerability database itself (there is no network here, and
	// each test imports the one it needs); a test of the feed sets its own update_interval
	if !strings.Contains(extraYAML, "update_interval") {
		if strings.Contains(extraYAML, "vulndb: {") {
			extraYAML = strings.Replace(extraYAML, "vulndb: {", "vulndb: {update_interval: 0, ", 1)
		} else {
			extraYAML += "vulndb: {update_interval: 0}\n"
		}
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gatehouse.yaml")
	body := fmt.Sprintf("listen: 127.0.0.1:0\ndata: %s\nlog: {format: json, level: debug}\n%s", filepath.Join(dir, "data"), extraYAML)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, dataDir: filepath.Join(dir, "data"), config: cfg}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	s.t.Helper()
	s.log = &lockedBuffer{}
	cmd := exec.Command(gatehouseBin, "serve", "--config", s.config)
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(s.log, pw)
	cmd.Stdout = s.log
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); pw.Close(); close(s.exited) }()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "gatehouse ready" {
				addr <- rec.Addr
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case s.addr = <-addr:
	case <-s.exited:
		s.t.Fatalf("gatehouse exited before it was ready:\n%s", s.log)
	case <-time.After(30 * time.Second):
		s.t.Fatalf("gatehouse not ready after 30s:\n%s", s.log)
	}
	s.waitReady()
}

func (s *server) waitReady() {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.url("/readyz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("gatehouse at %s never became ready:\n%s", s.addr, s.log)
}

// kill9 kills the process without letting it clean up.
func (s *server) kill9() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
}

// stop asks for a graceful shutdown and fails the test if it does not come.
func (s *server) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if code := s.cmd.ProcessState.ExitCode(); code != 0 {
			s.t.Errorf("gatehouse exited with %d after SIGTERM:\n%s", code, tail(s.log.String(), 40))
		}
	case <-time.After(40 * time.Second):
		s.cmd.Process.Kill()
		s.t.Errorf("gatehouse did not stop within 40s of SIGTERM")
	}
}

func (s *server) url(path string) string { return "http://" + s.addr + path }

// healthy asserts the server still answers and did not log a panic.
func (s *server) healthy(t *testing.T) {
	t.Helper()
	resp, err := http.Get(s.url("/healthz"))
	if err != nil {
		t.Fatalf("server unhealthy: %v\n%s", err, tail(s.log.String(), 30))
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz = %d", resp.StatusCode)
	}
	if strings.Contains(s.log.String(), "panic") {
		t.Fatalf("server log mentions a panic:\n%s", tail(s.log.String(), 30))
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run runs a tool and returns its stdout; failure fails the test with the tool's output.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	return runDir(t, "", env, name, args...)
}

// runDir is run in a working directory.
func runDir(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// tryRun runs a tool and returns its error (for commands that must fail).
func tryRun(env []string, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd.Run()
}

// runFail runs a tool that must fail and returns its combined output.
func runFail(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("%s %s succeeded; it should have failed:\n%s", filepath.Base(name), strings.Join(args, " "), out)
	}
	return string(out)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// waitMetric polls /metrics until a line contains want (10 s at most).
func waitMetric(t *testing.T, s *server, want string) {
	t.Helper()
	var body []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(s.url("/metrics"))
		if err != nil {
			continue
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), want) {
			return
		}
	}
	t.Fatalf("/metrics never showed %s; last:\n%s", want, body)
}
