package inventory

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

func tarLayer(t *testing.T, files map[string][]byte) layerfs.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, b := range files {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))})
		tw.Write(b)
	}
	tw.Close()
	b := buf.Bytes()
	return layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func TestExtract(t *testing.T) {
	status, err := os.ReadFile("/var/lib/dpkg/status")
	if err != nil {
		t.Fatalf("this machine's dpkg status is the test's Debian content: %v", err)
	}
	osRelease, _ := os.ReadFile("/etc/os-release")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})

	base := tarLayer(t, map[string][]byte{"var/lib/dpkg/status": status, "etc/os-release": osRelease})
	app := tarLayer(t, map[string][]byte{
		"app/node_modules/lodash/package.json": []byte(`{"name":"lodash","version":"4.17.15"}`),
		"app/package.json":                     []byte(`{"name":"app","version":"1.0.0","dependencies":{"lodash":"4.17.15"}}`),
		"root/.ssh/id_ecdsa":                   keyPEM,
	})
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	fp, err := NewFingerprinter([]byte("a test installation's key"))
	if err != nil {
		t.Fatal(err)
	}
	ex, err := Start(context.Background(), 2, fp)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := layerfs.Flatten(context.Background(), dir, []layerfs.Layer{base, app}, layerfs.DefaultLimits, ex.Options())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := ex.Finish(context.Background(), tree)
	if err != nil {
		t.Fatal(err)
	}
	var dpkg, lodash *Package
	for i, p := range inv.Packages {
		if p.Name == "dpkg" && strings.HasPrefix(p.Ecosystem, "Debian") {
			dpkg = &inv.Packages[i]
		}
		if p.Name == "lodash" && p.Ecosystem == "npm" {
			lodash = &inv.Packages[i]
		}
	}
	if dpkg == nil || dpkg.Ecosystem != "Debian:12" || dpkg.Layer != base.Digest || dpkg.Path != "var/lib/dpkg/status" || dpkg.Version == "" {
		t.Errorf("dpkg package: %+v (of %d packages)", dpkg, len(inv.Packages))
	}
	if lodash == nil || lodash.Version != "4.17.15" || lodash.Layer != app.Digest {
		t.Errorf("lodash: %+v", lodash)
	}
	if len(inv.Secrets) == 0 {
		t.Fatalf("the planted private key was not found")
	}
	s := inv.Secrets[0]
	if s.Path != "root/.ssh/id_ecdsa" || s.Layer != app.Digest || len(s.Fingerprint) != 16 {
		t.Errorf("secret: %+v", s)
	}
	if bytes.Contains([]byte(s.Fingerprint+s.Kind), keyPEM[30:60]) {
		t.Error("the secret's value leaked into the inventory")
	}
	t.Logf("%d packages, %d secrets (%s)", len(inv.Packages), len(inv.Secrets), inv.Scanner)
}

func TestFingerprints(t *testing.T) {
	k1, _ := NewFingerprinter([]byte("0123456789abcdef-one"))
	k1again, _ := NewFingerprinter([]byte("0123456789abcdef-one"))
	k2, _ := NewFingerprinter([]byte("0123456789abcdef-two"))
	const value = "hunter2"
	plain := sha256.Sum256([]byte(value))
	if k1.Of(value) != k1again.Of(value) || len(k1.Of(value)) != 16 {
		t.Errorf("the same key and value gave %s and %s", k1.Of(value), k1again.Of(value))
	}
	if k1.Of(value) == k2.Of(value) {
		t.Error("two keys gave the same fingerprint")
	}
	if k1.Of(value) == k1.Of("hunter3") {
		t.Error("two values gave the same fingerprint")
	}
	if k1.Of(value) == hex.EncodeToString(plain[:8]) {
		t.Error("the fingerprint is the value's plain SHA-256")
	}
	for _, key := range [][]byte{nil, {}, []byte("short")} {
		if _, err := NewFingerprinter(key); !errors.Is(err, ErrNoFingerprintKey) {
			t.Errorf("key %q: %v, want ErrNoFingerprintKey", key, err)
		}
	}
	if _, err := Start(context.Background(), 1, nil); !errors.Is(err, ErrNoFingerprintKey) {
		t.Errorf("Start without a fingerprinter: %v", err)
	}
	if _, err := DetectSecrets(context.Background(), nil, "x", "y"); !errors.Is(err, ErrNoFingerprintKey) {
		t.Errorf("DetectSecrets without a fingerprinter: %v", err)
	}
}
