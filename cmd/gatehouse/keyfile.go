package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// fingerprintKey reads this installation's secret-fingerprint key, creating it (32 random bytes,
// mode 0600) on first start. An existing file is never overwritten; one too short is an error.
func fingerprintKey(path string, log *slog.Logger) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, err
		}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			return fingerprintKey(path, log) // another process made it first
		}
		if err != nil {
			return nil, err
		}
		if _, err := f.Write(key); err != nil {
			f.Close()
			os.Remove(path)
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		log.Info("generated the key for secret fingerprints (keep it with the data: fingerprints in stored reports are made with it)", "path", path)
		return key, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) < 32 {
		return nil, fmt.Errorf("%s holds %d bytes; a fingerprint key needs at least 32", path, len(b))
	}
	return b, nil
}
