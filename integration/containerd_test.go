//go:build integration

package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startContainerd runs a private containerd (CRI off) under dir and returns its socket.
func startContainerd(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "containerd.sock")
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")), 0o644)
	var log bytes.Buffer
	cmd := exec.Command(tool(t, "containerd"), "--config", cfg)
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
	}
	t.Fatalf("containerd did not start:\n%s", log.String())
	return ""
}

// mirrorHosts writes deploy's docker.io hosts.toml, pointed at gh, under dir and returns the
// directory to pass to ctr --hosts-dir.
func mirrorHosts(t *testing.T, dir string, gh *server) string {
	t.Helper()
	example, err := os.ReadFile("../deploy/containerd/certs.d/docker.io/hosts.toml")
	if err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(dir, "certs.d", "docker.io")
	os.MkdirAll(hosts, 0o755)
	os.WriteFile(filepath.Join(hosts, "hosts.toml"), bytes.ReplaceAll(example, []byte("127.0.0.1:5000"), []byte(gh.addr)), 0o644)
	return filepath.Join(dir, "certs.d")
}

// TestContainerdMirror pulls docker.io/library/<name>:<tag> with containerd's ctr through
// Gatehouse configured as its registry mirror with the hosts.toml shipped in deploy/, the local
// upstream registry standing in for docker.io.
func TestContainerdMirror(t *testing.T) {
	crane, ctr := tool(t, "crane"), tool(t, "ctr")
	up := startUpstream(t, "")
	digest, _ := pushImage(t, crane, up.addr+"/library/mirrored:v1")
	gh := startGatehouse(t, proxyConfig(up.addr, ""))

	dir := t.TempDir()
	sock := startContainerd(t, dir)
	run(t, nil, ctr, "--address", sock, "images", "pull", "--hosts-dir", mirrorHosts(t, dir, gh), "docker.io/library/mirrored:v1")
	list := run(t, nil, ctr, "--address", sock, "images", "ls")
	if !strings.Contains(list, "docker.io/library/mirrored:v1") || !strings.Contains(list, digest) {
		t.Fatalf("ctr images ls does not show the image with digest %s:\n%s", digest, list)
	}
	// Gatehouse saw containerd's mirror requests (ns=docker.io) and served them
	served := 0
	for _, line := range strings.Split(gh.log.String(), "\n") {
		if strings.Contains(line, `"msg":"request"`) && strings.Contains(line, `ns=docker.io`) && strings.Contains(line, `"repo":"docker.io/library/mirrored"`) {
			served++
		}
	}
	if served < 3 { // the manifest and at least its config and layer
		t.Fatalf("gatehouse served %d ns=docker.io requests for the image; log:\n%s", served, tail(gh.log.String(), 40))
	}
	t.Logf("containerd pulled docker.io/library/mirrored:v1 (%s) through gatehouse: %d ns=docker.io requests served", digest, served)
	gh.healthy(t)
}
