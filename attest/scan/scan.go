package scan

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// Version names this scanner's rules; a change re-scans nothing by itself but is recorded.
const Version = "gatehouse-builtin/1"

// Severities, as vulndb uses them.
const (
	Critical = "CRITICAL"
	High     = "HIGH"
	Medium   = "MEDIUM"
	Low      = "LOW"
)

// EICAR is the SHA-256 of the EICAR anti-malware test file, always on the known-bad list so the
// malware path can be tested without malware.
const EICAR = digest.Digest("sha256:275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f")

// TreePrefix begins the name of each scan's temporary tree.
const TreePrefix = "gatehouse-scan-"

// Image is what a scan reads: the image config and the layers in order.
type Image struct {
	Digest digest.Digest
	Config []byte
	Layers []layerfs.Layer
}

// Finding is one thing the scan found that is not a package vulnerability.
type Finding struct {
	Kind        string        `json:"kind"` // config, secret, malware, layer, scan (a file the inventory could not read)
	ID          string        `json:"id"`
	Severity    string        `json:"severity"`
	Title       string        `json:"title"`
	Path        string        `json:"path,omitempty"`
	Layer       digest.Digest `json:"layer,omitempty"`
	Fingerprint string        `json:"fingerprint,omitempty"` // secrets: never the value
}

// Result is one scan of one image.
type Result struct {
	Digest    digest.Digest        `json:"digest"`
	Scanner   string               `json:"scanner"`
	Started   time.Time            `json:"started"`
	Duration  time.Duration        `json:"duration"`
	Complete  bool                 `json:"complete"` // false: a limit, a broken layer or a file the inventory could not read
	Inventory *inventory.Inventory `json:"inventory"`
	Findings  []Finding            `json:"findings"`
	Read      int64                `json:"read"`     // layer bytes read as stored
	Expanded  int64                `json:"expanded"` // tar bytes read
	// Blobs are the blobs this scan read whole (the config and each layer read to its end), set
	// by whoever fed the scan; the gate serves no other blob of the image.
	Blobs []digest.Digest `json:"blobs,omitempty"`
}

// Scanner is the built-in scanner.
type Scanner struct {
	TempDir string                   // where trees are flattened (default: the system's)
	Limits  layerfs.Limits           // default: layerfs.DefaultLimits
	Malware map[digest.Digest]string // known-bad file digests and their names; EICAR is always added
	// FingerprintKey keys the fingerprints that stand for secrets' values in results (HMAC-SHA256,
	// see inventory.Fingerprinter): a per-installation secret of at least
	// inventory.MinFingerprintKey bytes. Without one, Scan fails (inventory.ErrNoFingerprintKey):
	// an unkeyed hash of a weak secret can be reversed by guessing.
	FingerprintKey []byte
	// Extract bounds what the extractors read (zero fields: inventory.DefaultLimits').
	Extract inventory.Limits
	// MaxFindings bounds the findings kept of one image (default DefaultMaxFindings); past it
	// the scan is incomplete, with a GH-SCAN-LIMIT finding saying how many were dropped.
	MaxFindings int
}

// DefaultMaxFindings is Scanner.MaxFindings's default.
const DefaultMaxFindings = 10_000

// TimeoutError is a scan that did not finish within Limits.Timeout. It fails the scan (what
// was not read is unknown, and the partial inventory is not kept): fail closed.
type TimeoutError struct{ Limit time.Duration }

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("the scan did not finish within its time limit of %s (scan.timeout)", e.Limit)
}

// Scan flattens the image, extracts its inventory and checks it, all within Limits.Timeout: a
// scan still running then fails with a *TimeoutError. No image can take the process down: a
// panic anywhere in the scan, or in an extractor or secret detector it runs, fails the scan with
// an *inventory.PanicError naming where (and the file, when it was reading one).
func (s *Scanner) Scan(ctx context.Context, img Image) (r *Result, err error) {
	start := time.Now()
	lim := s.Limits
	if lim == (layerfs.Limits{}) {
		lim = layerfs.DefaultLimits
	}
	if lim.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, lim.Timeout, &TimeoutError{Limit: lim.Timeout})
		defer cancel()
	}
	step := "the scanner"
	defer func() {
		if v := recover(); v != nil {
			r, err = nil, fmt.Errorf("scan %s: %w", img.Digest, inventory.Recovered(v, step))
			return
		}
		var te *TimeoutError
		if errors.As(context.Cause(ctx), &te) {
			r, err = nil, fmt.Errorf("scan %s: %w", img.Digest, te)
		}
	}()
	fp, err := inventory.NewFingerprinter(s.FingerprintKey)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", img.Digest, err)
	}
	var cfg v1.Image
	if err := json.Unmarshal(img.Config, &cfg); err != nil {
		return nil, fmt.Errorf("scan %s: the image config is not JSON: %w", img.Digest, err)
	}
	dir, err := os.MkdirTemp(s.TempDir, TreePrefix)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ex, err := inventory.Start(ctx, runtime.GOMAXPROCS(0), fp, inventory.WithLimits(s.Extract), inventory.WithEnv(cfg.Config.Env, cfg.Config.WorkingDir))
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", img.Digest, err)
	}
	defer ex.Close() // Finish closes it; this is for a flattening that failed or panicked
	step = "the layer walk"
	tree, err := layerfs.Flatten(ctx, dir, img.Layers, lim, ex.Options())
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", img.Digest, err)
	}
	step = "the inventory"
	inv, err := ex.Finish(ctx, tree)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", img.Digest, err)
	}
	step = "the checks"
	r = &Result{
		Digest: img.Digest, Scanner: Version + " (" + inv.Scanner + ")", Started: start.UTC(),
		Complete: !tree.Incomplete, Inventory: inv, Findings: []Finding{},
		Read: tree.Compressed, Expanded: tree.Expanded,
	}
	r.Findings = append(r.Findings, layerFindings(tree)...)
	for _, u := range inv.Unread {
		title := u.Reason
		if u.Extractor != "" {
			title = u.Extractor + ": " + u.Reason
		}
		r.Findings = append(r.Findings, Finding{Kind: "scan", ID: "GH-SCAN-UNREAD", Severity: High, Title: title,
			Path: u.Path, Layer: tree.Files[strings.TrimPrefix(u.Path, "/")].Layer})
		r.Complete = false
	}
	for _, sec := range inv.Secrets {
		r.Findings = append(r.Findings, Finding{Kind: "secret", ID: secretID(sec.Kind), Severity: High,
			Title: fmt.Sprintf("%s in a file", sec.Kind), Path: sec.Path, Layer: sec.Layer, Fingerprint: sec.Fingerprint})
	}
	configFindings, err := checkConfig(ctx, fp, cfg)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", img.Digest, err)
	}
	r.Findings = append(r.Findings, configFindings...)
	r.Findings = append(r.Findings, s.fileFindings(tree)...)
	sort.SliceStable(r.Findings, func(a, b int) bool {
		if r.Findings[a].Kind != r.Findings[b].Kind {
			return r.Findings[a].Kind < r.Findings[b].Kind
		}
		return r.Findings[a].Path < r.Findings[b].Path
	})
	r.Findings = capFindings(r, cmp.Or(s.MaxFindings, DefaultMaxFindings))
	r.Duration = time.Since(start)
	return r, nil
}

// severityRank orders severities, gravest first.
var severityRank = map[string]int{Critical: 0, High: 1, Medium: 2, Low: 3}

// capFindings keeps at most max findings, the gravest, in their order; past it one more,
// GH-SCAN-LIMIT, says how many were dropped, and the scan is incomplete (a dropped finding may
// be one that denies the image). A report, an SBOM and a policy input are then bounded too.
func capFindings(r *Result, max int) []Finding {
	if len(r.Findings) <= max {
		return r.Findings
	}
	idx := make([]int, len(r.Findings))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		return severityRank[r.Findings[idx[a]].Severity] < severityRank[r.Findings[idx[b]].Severity]
	})
	keep := idx[:max-1]
	sort.Ints(keep)
	out := make([]Finding, 0, max)
	for _, i := range keep {
		out = append(out, r.Findings[i])
	}
	r.Complete = false
	return append(out, Finding{Kind: "scan", ID: "GH-SCAN-LIMIT", Severity: High,
		Title: fmt.Sprintf("the scan found %d findings; the %d gravest are kept (scan.max_findings), %d are not listed", len(r.Findings), max-1, len(r.Findings)-(max-1))})
}

func layerFindings(tree *layerfs.Result) []Finding {
	var out []Finding
	for _, is := range tree.Issues {
		sev := Medium
		switch is.Kind {
		case layerfs.Escape, layerfs.Invalid, layerfs.Ambiguous:
			sev = High
		}
		out = append(out, Finding{Kind: "layer", ID: "GH-LAYER-" + strings.ToUpper(string(is.Kind)), Severity: sev,
			Title: is.Detail, Path: is.Path, Layer: is.Layer})
	}
	if tree.Incomplete {
		out = append(out, Finding{Kind: "layer", ID: "GH-LAYER-INCOMPLETE", Severity: High,
			Title: "the scan could not read all of the image as a runtime would (see the other layer findings); what it did not read is unknown"})
	}
	return out
}

// remoteShellPorts are ports whose exposure means a way in that is not the application.
var remoteShellPorts = map[string]string{"22/tcp": "ssh", "23/tcp": "telnet", "3389/tcp": "RDP", "5900/tcp": "VNC", "5901/tcp": "VNC"}

// secretEnvNames are environment variable names that announce a secret.
var secretEnvNames = []string{"PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "APIKEY", "PRIVATE_KEY", "ACCESS_KEY"}

func checkConfig(ctx context.Context, fp *inventory.Fingerprinter, cfg v1.Image) ([]Finding, error) {
	var out []Finding
	switch u := strings.TrimSpace(cfg.Config.User); u {
	case "", "root", "0", "0:0", "root:root":
		who := "no USER is set"
		if u != "" {
			who = "USER is " + u
		}
		out = append(out, Finding{Kind: "config", ID: "GH-CFG-ROOT", Severity: Medium, Title: "the image runs as root (" + who + ")", Path: "config:User"})
	}
	ports := make([]string, 0, len(cfg.Config.ExposedPorts))
	for p := range cfg.Config.ExposedPorts {
		ports = append(ports, p)
	}
	sort.Strings(ports)
	for _, p := range ports {
		if name, ok := remoteShellPorts[p]; ok {
			out = append(out, Finding{Kind: "config", ID: "GH-CFG-REMOTE-SHELL", Severity: High, Title: fmt.Sprintf("port %s (%s) is exposed", p, name), Path: "config:ExposedPorts"})
		}
	}
	for i, kv := range cfg.Config.Env {
		name, value, _ := strings.Cut(kv, "=")
		where := fmt.Sprintf("config:Env[%d] (%s)", i, name)
		found, err := inventory.DetectSecrets(ctx, fp, where, kv)
		if err != nil {
			return nil, err
		}
		for _, sec := range found {
			out = append(out, Finding{Kind: "config", ID: "GH-CFG-ENV-SECRET", Severity: High, Title: sec.Kind + " in the environment variable " + name, Path: where, Fingerprint: sec.Fingerprint})
		}
		if len(found) == 0 && value != "" && !strings.HasPrefix(value, "/") && secretName(name) {
			out = append(out, Finding{Kind: "config", ID: "GH-CFG-ENV-SECRET", Severity: Medium, Title: "the environment variable " + name + " looks like it holds a secret", Path: where, Fingerprint: fp.Of(value)})
		}
	}
	labels := make([]string, 0, len(cfg.Config.Labels))
	for k := range cfg.Config.Labels {
		labels = append(labels, k)
	}
	sort.Strings(labels)
	for _, k := range labels {
		found, err := inventory.DetectSecrets(ctx, fp, "config:Labels."+k, cfg.Config.Labels[k])
		if err != nil {
			return nil, err
		}
		for _, sec := range found {
			out = append(out, Finding{Kind: "secret", ID: secretID(sec.Kind), Severity: High, Title: sec.Kind + " in the label " + k, Path: sec.Path, Fingerprint: sec.Fingerprint})
		}
	}
	for i, h := range cfg.History {
		found, err := inventory.DetectSecrets(ctx, fp, fmt.Sprintf("config:history[%d]", i), h.CreatedBy)
		if err != nil {
			return nil, err
		}
		for _, sec := range found {
			out = append(out, Finding{Kind: "secret", ID: secretID(sec.Kind), Severity: High, Title: sec.Kind + " in the build history", Path: sec.Path, Fingerprint: sec.Fingerprint})
		}
	}
	return out, nil
}

// secretID is the finding id of a secret kind: GH-SECRET-PRIVATEKEY, GH-SECRET-AWSACCESSKEY, ...
func secretID(kind string) string { return "GH-SECRET-" + strings.ToUpper(kind) }

func secretName(name string) bool {
	up := strings.ToUpper(name)
	for _, s := range secretEnvNames {
		if strings.Contains(up, s) {
			return true
		}
	}
	return false
}

// packageManagers are the tools that install more software at run time.
var packageManagers = map[string]bool{
	"usr/bin/apt": true, "usr/bin/apt-get": true, "usr/bin/dpkg": true, "sbin/apk": true, "usr/bin/yum": true,
	"usr/bin/dnf": true, "usr/bin/microdnf": true, "usr/bin/rpm": true, "usr/bin/zypper": true,
}

// fileFindings checks the files: every layer's writes against the known-bad digests (a layer's
// blob holds its files whatever later layers do, and it is served), and the final filesystem
// for setuid/setgid bits and package managers.
func (s *Scanner) fileFindings(tree *layerfs.Result) []Finding {
	bad := map[digest.Digest]string{EICAR: "EICAR test file"}
	for d, n := range s.Malware {
		bad[d] = n
	}
	var out []Finding
	type write struct {
		path  string
		layer digest.Digest
		sum   digest.Digest
	}
	reported := map[write]bool{}
	malware := func(p string, l, sum digest.Digest, name, fate string) {
		if reported[write{p, l, sum}] {
			return
		}
		reported[write{p, l, sum}] = true
		out = append(out, Finding{Kind: "malware", ID: "GH-MALWARE", Severity: Critical, Title: "known-bad file: " + name + " (" + sum.String() + ")" + fate, Path: p, Layer: l})
	}
	for _, w := range tree.Written {
		name, ok := bad[w.SHA256]
		if !ok {
			continue
		}
		fate := ""
		switch f, there := tree.Files[w.Path]; {
		case !there:
			fate = "; a later layer removed it, but this layer's blob still holds it"
		case f.SHA256 != w.SHA256 || f.Layer != w.Layer:
			fate = "; it was replaced later, but this layer's blob still holds it"
		}
		malware(w.Path, w.Layer, w.SHA256, name, fate)
	}
	paths := make([]string, 0, len(tree.Files))
	for p := range tree.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		f := tree.Files[p]
		if name, ok := bad[f.SHA256]; ok && f.SHA256 != "" {
			malware(p, f.Layer, f.SHA256, name, "") // hard links land here too
		}
		if f.Mode.IsRegular() && f.Mode&(os.ModeSetuid|os.ModeSetgid) != 0 {
			bits := "setuid"
			if f.Mode&os.ModeSetuid == 0 {
				bits = "setgid"
			}
			out = append(out, Finding{Kind: "config", ID: "GH-CFG-SETUID", Severity: Low, Title: "a " + bits + " file", Path: p, Layer: f.Layer})
		}
		if packageManagers[p] {
			out = append(out, Finding{Kind: "config", ID: "GH-CFG-PKG-MANAGER", Severity: Low, Title: "the package manager " + path.Base(p) + " is left in the image", Path: p, Layer: f.Layer})
		}
	}
	return out
}

// LoadDigestList reads a known-bad list: one "sha256:<hex> name" per line; blank lines and lines
// starting with # are skipped.
func LoadDigestList(path string) (map[digest.Digest]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[digest.Digest]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		d, name, _ := strings.Cut(line, " ")
		dg, err := digest.Parse(d)
		if err != nil || dg.Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("%s:%d: %q is not a sha256 digest", path, i+1, d)
		}
		out[dg] = strings.TrimSpace(name)
	}
	return out, nil
}
