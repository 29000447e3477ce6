package inventory

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/google/osv-scalibr/veles"
	"github.com/google/osv-scalibr/veles/secrets/anthropicapikey"
	"github.com/google/osv-scalibr/veles/secrets/awsaccesskey"
	"github.com/google/osv-scalibr/veles/secrets/azurestorageaccountaccesskey"
	"github.com/google/osv-scalibr/veles/secrets/cratesioapitoken"
	"github.com/google/osv-scalibr/veles/secrets/digitaloceanapikey"
	"github.com/google/osv-scalibr/veles/secrets/dockerhubpat"
	"github.com/google/osv-scalibr/veles/secrets/gcpapikey"
	"github.com/google/osv-scalibr/veles/secrets/gcpsak"
	"github.com/google/osv-scalibr/veles/secrets/gcshmackey"
	"github.com/google/osv-scalibr/veles/secrets/github"
	"github.com/google/osv-scalibr/veles/secrets/gitlabpat"
	"github.com/google/osv-scalibr/veles/secrets/hashicorpvault"
	"github.com/google/osv-scalibr/veles/secrets/huggingfaceapikey"
	"github.com/google/osv-scalibr/veles/secrets/npmjsaccesstoken"
	"github.com/google/osv-scalibr/veles/secrets/openai"
	"github.com/google/osv-scalibr/veles/secrets/privatekey"
	"github.com/google/osv-scalibr/veles/secrets/pypiapitoken"
	"github.com/google/osv-scalibr/veles/secrets/rubygemsapikey"
	"github.com/google/osv-scalibr/veles/secrets/sendgrid"
	"github.com/google/osv-scalibr/veles/secrets/slacktoken"
	"github.com/google/osv-scalibr/veles/secrets/stripeapikeys"
	"github.com/google/osv-scalibr/veles/secrets/telegrambotapitoken"
	"github.com/google/osv-scalibr/veles/secrets/urlcreds"
)

// MaxSecretFileSize bounds the files searched for secrets; larger ones are data, not config.
const MaxSecretFileSize = 1 << 20

var (
	engineOnce sync.Once
	engine     *veles.DetectionEngine
	detectors  []veles.Detector
	engineErr  error
	// wholeLen is the engine's buffer (its readLen plus retainLen, the defaults
	// NewDetectionEngine chooses): the engine reads shorter data in one piece and runs each
	// detector once over all of it (detectAll), so detectBytes does the same without the buffer.
	wholeLen int
)

// secretEngine is one osv-scalibr Veles engine over the detectors for credentials that matter in
// images: private keys, cloud keys, VCS, registry and package-index tokens, SaaS API keys, and
// credentials in URLs.
func secretEngine() (*veles.DetectionEngine, error) {
	engineOnce.Do(func() {
		detectors = []veles.Detector{
			privatekey.NewDetector(), awsaccesskey.NewDetector(), gcpsak.NewDetector(), gcpapikey.NewDetector(),
			gcshmackey.NewDetector(), azurestorageaccountaccesskey.NewDetector(), digitaloceanapikey.NewDetector(),
			github.NewClassicPATDetector(), github.NewFineGrainedPATDetector(), github.NewOAuthTokenDetector(), github.NewAppRefreshTokenDetector(),
			gitlabpat.NewDetector(), dockerhubpat.NewDetector(), npmjsaccesstoken.NewDetector(), pypiapitoken.NewDetector(),
			rubygemsapikey.NewDetector(), cratesioapitoken.NewDetector(), hashicorpvault.NewTokenDetector(), hashicorpvault.NewAppRoleDetector(),
			slacktoken.NewAppLevelTokenDetector(), slacktoken.NewAppConfigAccessTokenDetector(), slacktoken.NewAppConfigRefreshTokenDetector(),
			stripeapikeys.NewSecretKeyDetector(), stripeapikeys.NewRestrictedKeyDetector(), stripeapikeys.NewWebhookSecretDetector(),
			openai.NewDetector(), anthropicapikey.NewDetector(), huggingfaceapikey.NewDetector(), sendgrid.NewDetector(),
			telegrambotapitoken.NewDetector(), urlcreds.NewDetector(),
		}
		engine, engineErr = veles.NewDetectionEngine(detectors)
		maxLen := uint32(0)
		for _, d := range detectors {
			maxLen = max(maxLen, d.MaxSecretLen())
		}
		p := 1
		for p < int(maxLen) {
			p <<= 1
		}
		wholeLen = max(veles.MinReadLen, p) + max(veles.MinRetainLen, p)
	})
	return engine, engineErr
}

// minSecretLen is the shortest text any of the detectors' patterns matches: github's base64
// prefixes ("Z2hzX", of up to 51 more characters), then urlcreds' "a://b@c"; the other tokens and
// keys are longer. Shorter data holds no secret they find.
const minSecretLen = 5

// detectBytes is the engine's Detect over data. The engine allocates a buffer of wholeLen
// (4 MiB: the private-key detector's MaxSecretLen) for every call, which for each of 500,000
// tiny files was 2 TB allocated and minutes of GC; data shorter than the buffer (every file
// detectFile sees, most texts) is what the engine would run each detector over once, so
// detectBytes does that on data itself. Longer data goes through the engine's chunked reading.
func detectBytes(ctx context.Context, data []byte) ([]veles.Secret, error) {
	e, err := secretEngine()
	if err != nil {
		return nil, err
	}
	if len(data) >= wholeLen {
		return e.Detect(ctx, bytes.NewReader(data))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(data) < minSecretLen {
		return nil, nil
	}
	var found []veles.Secret
	for _, d := range detectors {
		ss, _ := d.Detect(data)
		found = append(found, ss...)
	}
	return found, nil
}

// DetectSecrets searches a text (an environment variable, a label, a history line) for secrets
// and returns them with where as their path, fingerprinted with fp (required).
func DetectSecrets(ctx context.Context, fp *Fingerprinter, where, text string) ([]Secret, error) {
	if fp == nil {
		return nil, ErrNoFingerprintKey
	}
	found, err := detectBytes(ctx, []byte(text))
	if err != nil {
		return nil, err
	}
	var out []Secret
	for _, s := range found {
		out = append(out, Secret{Kind: kindOf(s), Path: where, Fingerprint: fp.of(s)})
	}
	return out, nil
}

// skipSecretDirs hold what an operating system's packages install (libraries, data, the
// package databases): public, large, and not where builds plant credentials. Configuration
// (etc/), home directories, applications and everything else is searched.
var skipSecretDirs = []string{
	"usr/share/", "usr/lib/", "usr/lib64/", "usr/libexec/", "lib/", "lib64/", "var/lib/dpkg/", "var/lib/apt/",
	"var/cache/debconf/", "var/cache/apt/", "lib/apk/", "var/lib/rpm/", "etc/ssl/certs/", "usr/include/",
}

// secretCandidate says whether a file is searched for secrets.
func secretCandidate(p string, size int64) bool {
	if size == 0 || size > MaxSecretFileSize {
		return false
	}
	for _, d := range skipSecretDirs {
		if strings.HasPrefix(p, d) {
			return false
		}
	}
	return true
}

// detectFile searches one file's bytes (text only) for secrets.
func detectFile(ctx context.Context, fp *Fingerprinter, p string, layer digest.Digest, data []byte) ([]Secret, error) {
	if bytes.IndexByte(data[:min(len(data), 8192)], 0) >= 0 {
		return nil, nil // binary
	}
	found, err := detectBytes(ctx, data)
	if err != nil {
		return nil, fmt.Errorf("secrets in %s: %w", p, err)
	}
	out := make([]Secret, 0, len(found))
	for _, s := range found {
		out = append(out, Secret{Kind: kindOf(s), Path: p, Layer: layer, Fingerprint: fp.of(s)})
	}
	return out, nil
}
