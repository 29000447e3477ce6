package inventory

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// MinFingerprintKey is the shortest fingerprint key taken, in bytes (32 random bytes is usual).
const MinFingerprintKey = 16

// ErrNoFingerprintKey says no fingerprint key (or too short a one) was given: secrets cannot be
// reported without one, so nothing is scanned.
var ErrNoFingerprintKey = errors.New("no secret fingerprint key")

// Fingerprinter names a secret's value in a report without giving it away: the first 16 hex
// digits of HMAC-SHA256 under a key of this installation. A plain hash of a value would let
// anyone holding a report try guesses offline (a weak password is found in seconds); without
// the key, a fingerprint says only whether two findings hold the same value.
type Fingerprinter struct{ key []byte }

// NewFingerprinter keys fingerprints; a key shorter than MinFingerprintKey is refused.
func NewFingerprinter(key []byte) (*Fingerprinter, error) {
	if len(key) < MinFingerprintKey {
		return nil, fmt.Errorf("%w: a key of %d bytes; at least %d are needed", ErrNoFingerprintKey, len(key), MinFingerprintKey)
	}
	return &Fingerprinter{key: append([]byte(nil), key...)}, nil
}

// Of is the fingerprint of a value.
func (f *Fingerprinter) Of(value string) string {
	m := hmac.New(sha256.New, f.key)
	m.Write([]byte(value))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// of is the fingerprint of a detected secret: of its value as the detector reported it.
func (f *Fingerprinter) of(secret any) string { return f.Of(fmt.Sprintf("%#v", secret)) }
