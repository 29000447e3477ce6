package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestFingerprintKeyCreatedOnceNeverOverwritten(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "fingerprint.key")
	log := slog.New(slog.DiscardHandler)
	k1, err := fingerprintKey(p, log)
	if err != nil || len(k1) != 32 {
		t.Fatalf("first start: %d bytes, %v", len(k1), err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := fingerprintKey(p, log)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Errorf("second start read another key (%v)", err)
	}
	other, _ := fingerprintKey(filepath.Join(t.TempDir(), "fingerprint.key"), log)
	if bytes.Equal(k1, other) {
		t.Errorf("two installations have the same key")
	}
	short := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(short, []byte("too short"), 0o600)
	if _, err := fingerprintKey(short, log); err == nil {
		t.Errorf("a 9-byte key was accepted")
	}
	if b, _ := os.ReadFile(short); string(b) != "too short" {
		t.Errorf("a short key file was overwritten")
	}
}
