package scan

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
	"github.com/gatehouse-dev/gatehouse/policies"
)

func scanErr(s *Scanner, layers ...layerfs.Layer) (*Result, error) {
	cfg, _ := json.Marshal(v1.Image{Config: v1.ImageConfig{User: "app"}})
	return s.Scan(context.Background(), Image{Digest: "sha256:img", Config: cfg, Layers: layers})
}

// TestScanPanicsFail: a panic in an extractor or in the layer walk fails the scan, naming
// where, and the process goes on.
func TestScanPanicsFail(t *testing.T) {
	db, err := inventorytest.PanickingRPMDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := &Scanner{TempDir: t.TempDir(), FingerprintKey: testKey}
	t.Run("the crafted rpmdb", func(t *testing.T) {
		_, err := scanErr(s, layer(t, file{name: "var/lib/rpm/rpmdb.sqlite", body: string(db)}))
		var pe *inventory.PanicError
		if !errors.As(err, &pe) || pe.Extractor != "os/rpm" || pe.Path != "var/lib/rpm/rpmdb.sqlite" {
			t.Fatalf("err %v; want os/rpm's panic on var/lib/rpm/rpmdb.sqlite", err)
		}
		t.Logf("%v", err)
	})
	t.Run("a panic in the layer walk", func(t *testing.T) {
		l := layerfs.Layer{Digest: "sha256:bad", Open: func() (io.ReadCloser, error) { panic("the layer cannot be opened") }}
		_, err := scanErr(s, l)
		var pe *inventory.PanicError
		if !errors.As(err, &pe) || pe.Step != "the layer walk" || !strings.Contains(err.Error(), "the layer walk panicked: the layer cannot be opened") {
			t.Fatalf("err %v; want the layer walk's panic", err)
		}
	})
	t.Run("and the scanner still scans", func(t *testing.T) {
		if r := scan(t, s, layer(t, file{name: "etc/hostname", body: "x"})); !r.Complete {
			t.Fatalf("an ordinary image after the panics: %+v", r.Findings)
		}
	})
}

// TestScanTimeout: Limits.Timeout bounds the whole scan, extraction included: a scan still
// running then fails with a *TimeoutError, soon after the limit.
func TestScanTimeout(t *testing.T) {
	lim := layerfs.DefaultLimits
	lim.Timeout = 100 * time.Millisecond
	s := &Scanner{TempDir: t.TempDir(), FingerprintKey: testKey, Limits: lim}
	big := zeroExecutable("usr/bin/slow", 1<<30) // hashing 1 GiB takes longer than the limit
	start := time.Now()
	_, err := scanErr(s, big)
	took := time.Since(start)
	var te *TimeoutError
	if !errors.As(err, &te) || te.Limit != lim.Timeout {
		t.Fatalf("err %v; want a *TimeoutError of %s", err, lim.Timeout)
	}
	t.Logf("%v, after %s", err, took.Round(time.Millisecond))
	if took > lim.Timeout+2*time.Second {
		t.Errorf("the scan took %s; want it ended soon after %s", took, lim.Timeout)
	}
}

// TestScanFindingsCapped: past MaxFindings the gravest are kept and the scan is incomplete, so
// the default policy denies it.
func TestScanFindingsCapped(t *testing.T) {
	var files []file
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		files = append(files, file{name: "usr/bin/" + n, body: "x", mode: 0o4755}) // setuid: Low
	}
	files = append(files, file{name: "app/eicar.com", body: eicar}) // malware: Critical
	s := &Scanner{TempDir: t.TempDir(), FingerprintKey: testKey, MaxFindings: 3}
	r := scan(t, s, layer(t, files...))
	if len(r.Findings) != 3 || r.Complete || len(byID(r, "GH-MALWARE")) != 1 || len(byID(r, "GH-SCAN-LIMIT")) != 1 {
		t.Fatalf("complete %v, findings %+v; want the malware, one more and GH-SCAN-LIMIT", r.Complete, r.Findings)
	}
	if lim := byID(r, "GH-SCAN-LIMIT")[0]; !strings.Contains(lim.Title, "found 6 findings; the 2 gravest are kept") || lim.Kind != "scan" {
		t.Errorf("limit finding %+v", lim)
	}
	engine, err := policies.Load(context.Background(), policies.Default())
	if err != nil {
		t.Fatal(err)
	}
	in := policies.Input{Scan: policies.Scan{Scanner: r.Scanner, Complete: r.Complete}, Findings: []policies.Finding{}, Vulnerabilities: []policies.Vulnerability{},
		Database: policies.Database{Present: true, AgeHours: 1, MaxAgeHours: 72}, Provenance: policies.Provenance{Evaluated: true}, Now: "2026-01-01T00:00:00Z"}
	for _, f := range r.Findings {
		in.Findings = append(in.Findings, policies.Finding{Kind: f.Kind, ID: f.ID, Severity: f.Severity, Title: f.Title, Path: f.Path, Layer: f.Layer.String()})
	}
	d, err := engine.Eval(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range d.Deny {
		if reason.Rule == "GH-POL-SCAN-INCOMPLETE" && strings.Contains(reason.Message, "GH-SCAN-LIMIT") {
			return
		}
	}
	t.Errorf("denials %+v; want GH-POL-SCAN-INCOMPLETE naming GH-SCAN-LIMIT", d.Deny)
}
