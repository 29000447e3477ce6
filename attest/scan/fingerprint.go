package scan

import (
	"crypto/sha256"
	"encoding/hex"
)

// fingerprint identifies a value without keeping it (the first 16 hex digits of its SHA-256).
func fingerprint(v string) string {
	sum := sha256.Sum256([]byte(v))
	return hex.EncodeToString(sum[:8])
}
