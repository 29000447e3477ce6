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
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
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

// elf64 is a little-endian ELF64 header followed by two section headers (the second the section
// name table, at offset 256 and claiming strtabSize bytes) and the table's bytes.
func elf64(shnum uint16, strtabSize uint64, table string, fileSize int) []byte {
	b := make([]byte, max(fileSize, 512))
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint64(b[0x28:], 64) // e_shoff
	le.PutUint16(b[0x3a:], 64) // e_shentsize
	le.PutUint16(b[0x3c:], shnum)
	le.PutUint16(b[0x3e:], 1) // e_shstrndx
	le.PutUint32(b[64:], 1)   // section 0's name: the table's first name
	sh := b[128:]
	le.PutUint32(sh[4:], 3) // SHT_STRTAB
	le.PutUint64(sh[24:], 256)
	le.PutUint64(sh[32:], strtabSize)
	copy(b[256:], table)
	return b
}

func TestHasBuildInfo(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	goBinary, err := os.ReadFile(self) // this test is a Go program
	if err != nil {
		t.Fatal(err)
	}
	extended := elf64(0, 16, "\x00.go.buildinfo\x00", 0)
	binary.LittleEndian.PutUint64(extended[64+32:], 1<<40) // section 0's size: the section count
	tests := []struct {
		name    string
		data    []byte
		want    bool
		wantErr bool
	}{
		{"a Go program", goBinary, true, false},
		{"a small ELF naming .go.buildinfo", elf64(2, 16, "\x00.go.buildinfo\x00", 0), true, false},
		{"a small ELF without it", elf64(2, 8, "\x00.text\x00", 0), false, false},
		{"zeros", make([]byte, 1<<20), false, false},
		{"a script", []byte("#!/bin/sh\necho hi\n"), false, false},
		{"a name table past the end of the file", elf64(2, 1<<20, "\x00.go.buildinfo\x00", 4096), false, false},
		{"a name table claiming 32 MiB", elf64(2, 32<<20, "\x00.go.buildinfo\x00", 33<<20), false, true},
		{"2^40 sections", extended, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			got, err := hasBuildInfo(bytes.NewReader(tt.data), int64(len(tt.data)))
			runtime.ReadMemStats(&after)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("hasBuildInfo = %v, %v; want %v (error %v)", got, err, tt.want, tt.wantErr)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 2<<20 {
				t.Errorf("allocated %d bytes to judge a %d-byte file", alloc, len(tt.data))
			}
		})
	}
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
