//go:build integration

package integration

import (
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestConformance runs the OCI distribution-spec conformance suite against a real gatehouse
// process with every API and data option on (sparse manifests excepted: they contradict the
// refusal of manifests that reference missing blobs), and fails on any failure, error or skip.
func TestConformance(t *testing.T) {
	bin := tool(t, "conformance")
	srv := startGatehouse(t, "storage: {delete: true}\n")
	results := t.TempDir()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"OCI_REGISTRY="+srv.addr,
		"OCI_TLS=disabled",
		"OCI_VERSION=1.1",
		"OCI_REPO1=conformance/repo1",
		"OCI_REPO2=conformance/repo2",
		"OCI_RESULTS_DIR="+results,
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		"OCI_API_BLOBS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_TAG_PARAM=true",
		"OCI_LOG=warn",
	)
	out, runErr := cmd.CombinedOutput()

	// Keep the HTML report where a person can open it.
	keep := filepath.Join("results")
	if err := os.MkdirAll(keep, 0o755); err == nil {
		for _, f := range []string{"report.html", "junit.xml", "results.yaml"} {
			if b, err := os.ReadFile(filepath.Join(results, f)); err == nil {
				os.WriteFile(filepath.Join(keep, "conformance-"+f), b, 0o644)
			}
		}
	}

	junit, err := os.ReadFile(filepath.Join(results, "junit.xml"))
	if err != nil {
		t.Fatalf("conformance wrote no junit.xml (%v); output:\n%s", err, out)
	}
	var suites struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Errors   int `xml:"errors,attr"`
		Skipped  int `xml:"skipped,attr"`
	}
	if err := xml.Unmarshal(junit, &suites); err != nil {
		t.Fatalf("junit.xml: %v", err)
	}
	passed := suites.Tests - suites.Failures - suites.Errors - suites.Skipped
	t.Logf("OCI conformance (v1.1, all options on): %d passed, %d failed, %d errors, %d skipped of %d; report kept in integration/results/conformance-report.html",
		passed, suites.Failures, suites.Errors, suites.Skipped, suites.Tests)
	if suites.Tests < 950 {
		t.Errorf("only %d conformance tests ran; expected the full suite (986 at the pinned version)", suites.Tests)
	}
	if suites.Skipped != 0 {
		t.Errorf("%d conformance tests were skipped (the registry answered with a fallback); every one should pass", suites.Skipped)
	}
	if suites.Failures != 0 || suites.Errors != 0 || runErr != nil {
		var failed []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, "FAIL") || strings.Contains(line, "Fail") || strings.Contains(line, "Error") {
				failed = append(failed, line)
			}
		}
		t.Fatalf("conformance failures (exit %v):\n%s\nserver log tail:\n%s", runErr, strings.Join(failed, "\n"), tail(srv.log.String(), 30))
	}
	srv.healthy(t)
}
