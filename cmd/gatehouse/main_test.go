package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("listen: 127.0.0.1:6000\nstorage: {delete: true}\n"), 0o644)
	os.WriteFile(bad, []byte("listen: 127.0.0.1:6000\nstorage: {driver: tape}\nlimts: {}\n"), 0o644)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"config", "check", good}, &out, &errb); err != nil || !strings.Contains(out.String(), "ok") {
		t.Errorf("check good: %v %q", err, out.String())
	}
	err := run(context.Background(), []string{"config", "check", bad}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "limts") {
		t.Errorf("check bad = %v, want the unknown key named", err)
	}
	if err := run(context.Background(), []string{"frobnicate"}, &out, &errb); err == nil {
		t.Error("unknown command accepted")
	}
}

// TestServeEmbeddedDefault starts `gatehouse serve` with no config (only --listen moved to a
// free port), in a fresh working directory: content and metadata land under ./data, the API
// answers, and cancelling the context shuts it down cleanly.
func TestServeEmbeddedDefault(t *testing.T) {
	dir := t.TempDir()
	old, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(old)

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0"}, io.Discard, pw)
		pw.Close()
	}()
	addrRe := regexp.MustCompile(`msg="gatehouse ready" addr=(\S+)`)
	addr := make(chan string, 1)
	var log bytes.Buffer
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if m := addrRe.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("serve returned early: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("serve not ready in 20s")
	}
	resp, err := http.Get(base + "/v2/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /v2/: %v %v", resp, err)
	}
	resp.Body.Close()
	// a push puts content and metadata under ./data
	cfg := []byte(`{}`)
	resp, err = http.Post(base+"/v2/x/blobs/uploads/?digest=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "application/octet-stream", bytes.NewReader(cfg))
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	for _, p := range []string{"data/meta.db", "data/content/docker/registry/v2/blobs"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("%s missing under the working directory: %v", p, err)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve after shutdown: %v", err)
		}
	case <-time.After(35 * time.Second):
		t.Fatal("serve did not shut down")
	}
	<-scanned
	for _, want := range []string{"embedded default", "plain HTTP", "stopped"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

func TestPolicyTest(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"policy", "test"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), " 0 failed") {
		t.Fatalf("default policy tests: %v\n%s", err, out.String())
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package gatehouse\n\nimport rego.v1\n\ndecision := {\"allow\": true, \"deny\": [], \"warn\": []}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "p_test.rego"), []byte("package gatehouse_test\n\nimport rego.v1\n\ntest_denies_everything if {\n\tnot data.gatehouse.decision.allow\n}\n"), 0o644)
	out.Reset()
	err := run(context.Background(), []string{"policy", "test", "--dir", dir}, &out, io.Discard)
	if err == nil || !strings.Contains(out.String(), "FAIL") {
		t.Errorf("a failing policy test passed: %v\n%s", err, out.String())
	}
	os.WriteFile(filepath.Join(dir, "p.rego"), []byte("package gatehouse\n\ndecision := {"), 0o644)
	if err := run(context.Background(), []string{"policy", "test", "--dir", dir}, &out, io.Discard); err == nil || !strings.Contains(err.Error(), "does not compile") {
		t.Errorf("a broken policy: %v", err)
	}
}
