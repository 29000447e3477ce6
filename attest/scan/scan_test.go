package scan

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs/tartest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
	"github.com/gatehouse-dev/gatehouse/policies"
)

// The EICAR test file (not malware; every scanner is meant to flag it).
const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// testKey is the fingerprint key of the tests' scans.
var testKey = []byte("gatehouse scan tests' fingerprint key")

type file struct {
	name, body string
	mode       int64
	raw        []byte // a hand-made header and body, written as is
}

func layer(t *testing.T, files ...file) layerfs.Layer {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if f.raw != nil {
			tw.Flush()
			buf.Write(f.raw)
			continue
		}
		mode := f.mode
		if mode == 0 {
			mode = 0o644
		}
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(f.body))})
		io.WriteString(tw, f.body)
	}
	tw.Close()
	b := buf.Bytes()
	return layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func TestScanFindings(t *testing.T) {
	if digest.FromString(eicar) != EICAR {
		t.Fatalf("EICAR digest constant is wrong: %s", digest.FromString(eicar))
	}
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	cfg := v1.Image{Platform: v1.Platform{OS: "linux", Architecture: "amd64"}}
	cfg.Config.Env = []string{"PATH=/usr/bin", "DB_PASSWORD=hunter2-not-real", "HOME=/root"}
	cfg.Config.ExposedPorts = map[string]struct{}{"22/tcp": {}, "8080/tcp": {}}
	cfg.History = []v1.History{{CreatedBy: "RUN echo hello"}}
	cfgJSON, _ := json.Marshal(cfg)

	base := layer(t, file{name: "usr/bin/apt", body: "apt", mode: 0o755}, file{name: "usr/bin/passwd", body: "passwd", mode: 0o4755})
	app := layer(t, file{name: "app/eicar.com", body: eicar}, file{name: "app/deploy_key", body: keyPEM})
	s := &Scanner{Malware: map[digest.Digest]string{digest.FromString("bad tool"): "bad tool"}, FingerprintKey: testKey}
	r, err := s.Scan(context.Background(), Image{Digest: "sha256:img", Config: cfgJSON, Layers: []layerfs.Layer{base, app}})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Complete || r.Read == 0 {
		t.Errorf("complete %v read %d", r.Complete, r.Read)
	}
	want := map[string]struct {
		path  string
		layer digest.Digest
	}{
		"GH-CFG-ROOT":          {"config:User", ""},
		"GH-CFG-REMOTE-SHELL":  {"config:ExposedPorts", ""},
		"GH-CFG-ENV-SECRET":    {"config:Env[1] (DB_PASSWORD)", ""},
		"GH-CFG-SETUID":        {"usr/bin/passwd", base.Digest},
		"GH-CFG-PKG-MANAGER":   {"usr/bin/apt", base.Digest},
		"GH-MALWARE":           {"app/eicar.com", app.Digest},
		"GH-SECRET-PRIVATEKEY": {"app/deploy_key", app.Digest},
	}
	got := map[string]Finding{}
	for _, f := range r.Findings {
		got[f.ID] = f
	}
	for id, w := range want {
		f, ok := got[id]
		if !ok {
			t.Errorf("no %s finding; findings: %+v", id, r.Findings)
			continue
		}
		if f.Path != w.path || f.Layer != w.layer {
			t.Errorf("%s at %q in %s, want %q in %s", id, f.Path, f.Layer, w.path, w.layer)
		}
	}
	blob, _ := json.Marshal(r)
	for _, leaked := range []string{"hunter2", keyPEM[40:80]} {
		if strings.Contains(string(blob), leaked) {
			t.Errorf("the result holds a secret's value (%q)", leaked)
		}
	}
	if len(got) != len(want) {
		t.Errorf("unexpected findings: %+v", r.Findings)
	}
}

func TestScanBoundedOnHostileLayer(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../../../tmp/gatehouse-escape", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 32 << 20})
	tw.Write(make([]byte, 32<<20))
	tw.Close()
	b := buf.Bytes()
	l := layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
	cfg, _ := json.Marshal(v1.Image{Config: v1.ImageConfig{User: "app"}})
	s := &Scanner{Limits: layerfs.Limits{MaxBytes: 4 << 20, MaxEntries: 100, MaxFileSize: 1 << 20, MaxPathLen: 255}, FingerprintKey: testKey}
	r, err := s.Scan(context.Background(), Image{Digest: "sha256:x", Config: cfg, Layers: []layerfs.Layer{l}})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, f := range r.Findings {
		ids[f.ID] = true
	}
	if r.Complete || !ids["GH-LAYER-ESCAPE"] || !ids["GH-LAYER-INCOMPLETE"] || r.Expanded > 5<<20 {
		t.Errorf("complete %v expanded %d findings %+v", r.Complete, r.Expanded, r.Findings)
	}
}

// scan runs a scan of layers under an image config running as a user, with no other findings.
func scan(t *testing.T, s *Scanner, layers ...layerfs.Layer) *Result {
	t.Helper()
	cfg, _ := json.Marshal(v1.Image{Config: v1.ImageConfig{User: "app"}})
	r, err := s.Scan(context.Background(), Image{Digest: "sha256:img", Config: cfg, Layers: layers})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func byID(r *Result, id string) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.ID == id {
			out = append(out, f)
		}
	}
	return out
}

// TestMalwareInEveryLayer: a known-bad file is found in the layer that wrote it, even when a
// later layer removes or replaces it (the first layer's blob, served, still holds it).
func TestMalwareInEveryLayer(t *testing.T) {
	bad := layer(t, file{name: "app/eicar.com", body: eicar})
	tests := []struct {
		name  string
		later []layerfs.Layer
		fate  string // what the title says happened
	}{
		{"left in place", nil, ""},
		{"whited out", []layerfs.Layer{layer(t, file{name: "app/.wh.eicar.com"})}, "a later layer removed it"},
		{"opaque directory", []layerfs.Layer{layer(t, file{name: "app/.wh..wh..opq"})}, "a later layer removed it"},
		{"overwritten", []layerfs.Layer{layer(t, file{name: "app/eicar.com", body: "harmless"})}, "it was replaced later"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := scan(t, &Scanner{FingerprintKey: testKey}, append([]layerfs.Layer{bad}, tt.later...)...)
			got := byID(r, "GH-MALWARE")
			if len(got) != 1 || got[0].Path != "app/eicar.com" || got[0].Layer != bad.Digest || got[0].Severity != Critical {
				t.Fatalf("malware findings %+v; want one at app/eicar.com in %s", got, bad.Digest)
			}
			if tt.fate == "" && strings.Contains(got[0].Title, "later") || !strings.Contains(got[0].Title, tt.fate) {
				t.Errorf("title %q; want it to say %q", got[0].Title, tt.fate)
			}
		})
	}
}

// TestDeletedSecretReported: a private key a later layer deletes is still reported, with the
// layer that holds it.
func TestDeletedSecretReported(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	with := layer(t, file{name: "root/.ssh/id_rsa", body: keyPEM})
	without := layer(t, file{name: "root/.ssh/.wh.id_rsa"})
	r := scan(t, &Scanner{FingerprintKey: testKey}, with, without)
	got := byID(r, "GH-SECRET-PRIVATEKEY")
	if len(got) != 1 || got[0].Path != "root/.ssh/id_rsa" || got[0].Layer != with.Digest || got[0].Fingerprint == "" {
		t.Errorf("secret findings %+v; want the deleted key in %s", got, with.Digest)
	}
}

// TestFingerprintsKeyed: fingerprints are keyed; no key, no scan.
func TestFingerprintsKeyed(t *testing.T) {
	cfg := v1.Image{Config: v1.ImageConfig{User: "app", Env: []string{"DB_PASSWORD=hunter2"}}}
	cfgJSON, _ := json.Marshal(cfg)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	img := Image{Digest: "sha256:img", Config: cfgJSON, Layers: []layerfs.Layer{layer(t, file{name: "app/key.pem", body: keyPEM})}}
	prints := func(k []byte) (env, file string, report []byte) {
		t.Helper()
		r, err := (&Scanner{FingerprintKey: k}).Scan(context.Background(), img)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range r.Findings {
			switch f.ID {
			case "GH-CFG-ENV-SECRET":
				env = f.Fingerprint
			case "GH-SECRET-PRIVATEKEY":
				file = f.Fingerprint
			}
		}
		if env == "" || file == "" {
			t.Fatalf("findings without fingerprints: %+v", r.Findings)
		}
		report, _ = json.Marshal(r)
		return env, file, report
	}
	env1, file1, report := prints([]byte("installation one's fingerprint key"))
	env1again, file1again, _ := prints([]byte("installation one's fingerprint key"))
	env2, file2, _ := prints([]byte("installation two's fingerprint key"))
	if env1 != env1again || file1 != file1again {
		t.Errorf("the same key gave different fingerprints: %s %s, %s %s", env1, env1again, file1, file1again)
	}
	if env1 == env2 || file1 == file2 {
		t.Errorf("two keys gave the same fingerprint: %s %s", env1, file1)
	}
	for _, v := range []string{"hunter2", "DB_PASSWORD=hunter2", keyPEM, strings.TrimSpace(keyPEM)} {
		sum := sha256.Sum256([]byte(v))
		if plain := hex.EncodeToString(sum[:8]); bytes.Contains(report, []byte(plain)) {
			t.Errorf("the report holds the plain SHA-256 prefix of %.20q", v)
		}
	}
	for _, k := range [][]byte{nil, {}} {
		if _, err := (&Scanner{FingerprintKey: k}).Scan(context.Background(), img); !errors.Is(err, inventory.ErrNoFingerprintKey) {
			t.Errorf("a scan with the key %q: %v; want inventory.ErrNoFingerprintKey", k, err)
		}
	}
}

// TestIncompleteScanDenied: what the scan could not read makes it incomplete, and the default
// policy's denial names it.
func TestIncompleteScanDenied(t *testing.T) {
	sparse := tartest.OldGNUSparse("app/x", "hello", 10)
	long := strings.Repeat("d/", 40) + "f"
	tests := []struct {
		name   string
		layer  layerfs.Layer
		id     string
		path   string
		limits layerfs.Limits
	}{
		{"a GNU sparse entry", layer(t, file{raw: sparse}), "GH-LAYER-SPARSE", "app/x", layerfs.DefaultLimits},
		{"a file over the size limit", layer(t, file{name: "app/big", body: strings.Repeat("x", 100)}), "GH-LAYER-LIMIT", "app/big",
			layerfs.Limits{MaxBytes: 1 << 20, MaxEntries: 10, MaxFileSize: 64, MaxPathLen: 64}},
		{"a path still too long once cleaned", layer(t, file{name: "./" + long, body: "x"}), "GH-LAYER-TOOLONG", long,
			layerfs.Limits{MaxBytes: 1 << 20, MaxEntries: 10, MaxFileSize: 64, MaxPathLen: 64}},
		{"a whiteout of its own layer's file", layer(t, file{name: "app/x", body: eicar}, file{name: "app/.wh.x"}), "GH-LAYER-AMBIGUOUS", "app/x", layerfs.DefaultLimits},
	}
	engine, err := policies.Load(context.Background(), policies.Default())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := scan(t, &Scanner{FingerprintKey: testKey, Limits: tt.limits}, tt.layer)
			got := byID(r, tt.id)
			if r.Complete || len(got) != 1 || got[0].Path != tt.path || got[0].Layer != tt.layer.Digest || len(byID(r, "GH-LAYER-INCOMPLETE")) != 1 {
				t.Fatalf("complete %v, findings %+v; want an incomplete scan with %s at %s", r.Complete, r.Findings, tt.id, tt.path)
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
			want := fmt.Sprintf("%s %s at %s (layer %s)", tt.id, got[0].Title, tt.path, tt.layer.Digest)
			var msgs []string
			for _, reason := range d.Deny {
				msgs = append(msgs, reason.Rule+": "+reason.Message)
				if reason.Rule == "GH-POL-SCAN-INCOMPLETE" && strings.HasPrefix(reason.Message, "the scan could not read everything: ") && strings.Contains(reason.Message, want) {
					return
				}
			}
			t.Errorf("no GH-POL-SCAN-INCOMPLETE naming %q; denials:\n%s", want, strings.Join(msgs, "\n"))
		})
	}
}

// zeroExecutable is a gzipped layer of one executable of size zero bytes.
func zeroExecutable(name string, size int64) layerfs.Layer {
	b := tartest.ZeroFile(name, size, 0o755)
	return layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

// peakRSS is this process's peak resident set (VmHWM) in bytes; resetPeakRSS restarts it.
func peakRSS(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// TestScanZeroExecutableBoundedMemory: a 1 GiB executable of zeros (1 MiB gzipped) is streamed,
// not read into memory to decide whether it is a Go program: the scan allocates a few MiB and the
// process's peak RSS stays well under 256 MiB.
func TestScanZeroExecutableBoundedMemory(t *testing.T) {
	size, race := int64(1<<30), tartest.RaceOn()
	if testing.Short() || race {
		size = 256 << 20 // the race detector slows byte loops tenfold and adds shadow memory
	}
	l := zeroExecutable("usr/bin/huge", size)
	s := &Scanner{TempDir: t.TempDir(), FingerprintKey: testKey}
	scan(t, s, layer(t, file{name: "warm/up", body: "x", mode: 0o755})) // load the extractors and detectors first
	runtime.GC()
	resetPeakRSS()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := scan(t, s, l)
	runtime.ReadMemStats(&after)
	alloc := int64(after.TotalAlloc - before.TotalAlloc)
	peak := peakRSS(t)
	t.Logf("one scan of a %d MiB executable of zeros: %.1f MiB allocated, peak RSS %.0f MiB (heap in use after: %.1f MiB; race detector %v)",
		size>>20, float64(alloc)/(1<<20), float64(peak)/(1<<20), float64(after.HeapInuse)/(1<<20), race)
	if !r.Complete || r.Expanded < size {
		t.Errorf("complete %v, expanded %d", r.Complete, r.Expanded)
	}
	if alloc > 64<<20 {
		t.Errorf("the scan allocated %d MiB; want < 64 MiB", alloc>>20)
	}
	if peak > 256<<20 && !race {
		t.Errorf("peak RSS %d MiB; want < 256 MiB", peak>>20)
	}
}
