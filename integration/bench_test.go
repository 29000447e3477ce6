//go:build integration

package integration

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestBenchCommandRuns keeps the benchmark command working: a tiny run must print the full
// comparison table with a figure for every server. (The figures themselves are not judged here;
// see README "Benchmarks".)
func TestBenchCommandRuns(t *testing.T) {
	tool(t, "registry")
	tool(t, "wrk")
	cmd := exec.Command("go", "run", "./integration/bench", "-blob-size", "4MiB", "-duration", "1s", "-rounds", "1", "-streams", "2", "-connections", "8",
		"-image-size", "4MiB", "-proxy-rounds", "1", "-upstream-rate", "64MiB")
	cmd.Dir = ".."
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	for _, row := range []string{"direct from the upstream", "gatehouse, cold", "distribution proxy, cold", "gatehouse, cached", "distribution proxy, cached"} {
		re := regexp.MustCompile(regexp.QuoteMeta(row) + `\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x`)
		if m := re.FindAllStringSubmatch(string(out), -1); len(m) != 2 {
			t.Errorf("bench output has %d %q rows, want 2 (loopback and limited link):\n%s", len(m), row, out)
		}
	}
	if !regexp.MustCompile(`(?m)^\s*req/s\s+[1-9][\d.]*\s+[1-9][\d.]*\s+[1-9][\d.]*\s+[\d.]+x`).Match(out) || !strings.Contains(string(out), "gate cost") {
		t.Errorf("bench output lacks the gate's row:\n%s", out)
	}
	for _, row := range []string{"manifest GET req/s", "manifest GET p99 ms", "blob GET MiB/s, 1 stream", "blob GET MiB/s, 2 streams", "peak RSS MiB"} {
		re := regexp.MustCompile(regexp.QuoteMeta(row) + `\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+[\d.]+x\s+[\d.]+x`)
		m := re.FindStringSubmatch(string(out))
		if m == nil {
			t.Errorf("bench output lacks a full %q row:\n%s", row, out)
			continue
		}
		for _, v := range m[1:4] {
			if strings.Trim(v, "0.") == "" {
				t.Errorf("row %q has a zero figure: %v", row, m[1:4])
			}
		}
	}
}
