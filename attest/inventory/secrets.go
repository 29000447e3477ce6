package inventory

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"

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

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// MaxSecretFileSize bounds the files searched for secrets; larger ones are data, not config.
const MaxSecretFileSize = 1 << 20

// skipSecretDirs hold documentation and locale data: large, public, and noisy.
var skipSecretDirs = []string{"usr/share/doc/", "usr/share/man/", "usr/share/info/", "usr/share/locale/", "usr/share/i18n/", "usr/share/zoneinfo/"}

var (
	engineOnce sync.Once
	engine     *veles.DetectionEngine
	engineErr  error
)

// secretEngine is one osv-scalibr Veles engine over the detectors for credentials that matter in
// images: private keys, cloud keys, VCS, registry and package-index tokens, SaaS API keys, and
// credentials in URLs.
func secretEngine() (*veles.DetectionEngine, error) {
	engineOnce.Do(func() {
		engine, engineErr = veles.NewDetectionEngine([]veles.Detector{
			privatekey.NewDetector(), awsaccesskey.NewDetector(), gcpsak.NewDetector(), gcpapikey.NewDetector(),
			gcshmackey.NewDetector(), azurestorageaccountaccesskey.NewDetector(), digitaloceanapikey.NewDetector(),
			github.NewClassicPATDetector(), github.NewFineGrainedPATDetector(), github.NewOAuthTokenDetector(), github.NewAppRefreshTokenDetector(),
			gitlabpat.NewDetector(), dockerhubpat.NewDetector(), npmjsaccesstoken.NewDetector(), pypiapitoken.NewDetector(),
			rubygemsapikey.NewDetector(), cratesioapitoken.NewDetector(), hashicorpvault.NewTokenDetector(), hashicorpvault.NewAppRoleDetector(),
			slacktoken.NewAppLevelTokenDetector(), slacktoken.NewAppConfigAccessTokenDetector(), slacktoken.NewAppConfigRefreshTokenDetector(),
			stripeapikeys.NewSecretKeyDetector(), stripeapikeys.NewRestrictedKeyDetector(), stripeapikeys.NewWebhookSecretDetector(),
			openai.NewDetector(), anthropicapikey.NewDetector(), huggingfaceapikey.NewDetector(), sendgrid.NewDetector(),
			telegrambotapitoken.NewDetector(), urlcreds.NewDetector(),
		})
	})
	return engine, engineErr
}

// DetectSecrets searches a text (an environment variable, a label, a history line) for secrets
// and returns them with where as their path.
func DetectSecrets(ctx context.Context, where, text string) ([]Secret, error) {
	e, err := secretEngine()
	if err != nil {
		return nil, err
	}
	found, err := e.Detect(ctx, strings.NewReader(text))
	if err != nil {
		return nil, err
	}
	var out []Secret
	for _, s := range found {
		out = append(out, Secret{Kind: kindOf(s), Path: where, Fingerprint: fingerprint(s)})
	}
	return out, nil
}

// fileSecrets searches the tree's text files (up to MaxSecretFileSize) for secrets.
func fileSecrets(ctx context.Context, tree *layerfs.Result) ([]Secret, error) {
	e, err := secretEngine()
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(tree.Root)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var paths []string
	for p, f := range tree.Files {
		if f.SHA256 == "" || f.Size == 0 || f.Size > MaxSecretFileSize || f.Mode.IsDir() || f.Link != "" {
			continue
		}
		skip := false
		for _, d := range skipSecretDirs {
			if strings.HasPrefix(p, d) {
				skip = true
				break
			}
		}
		if !skip {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var out []Secret
	buf := make([]byte, MaxSecretFileSize)
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		f, err := root.Open(p)
		if err != nil {
			continue // replaced by a later entry in the same walk; nothing to read
		}
		n, _ := io.ReadFull(f, buf)
		f.Close()
		data := buf[:n]
		if bytes.IndexByte(data[:min(n, 8192)], 0) >= 0 {
			continue // binary
		}
		found, err := e.Detect(ctx, bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("secrets in %s: %w", p, err)
		}
		for _, s := range found {
			out = append(out, Secret{Kind: kindOf(s), Path: p, Layer: tree.Files[p].Layer, Fingerprint: fingerprint(s)})
		}
	}
	return out, nil
}
