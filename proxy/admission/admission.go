package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Bundle is a route's policy, or why it could not be loaded.
type Bundle struct {
	Source string // where it was loaded from
	Engine *policies.Engine
	Err    error
}

// engine picks the policy for a repository's route; a bundle that did not load fails closed.
func (a *Admitter) engine(repo string) (*policies.Engine, error) {
	if a.Routes != nil && len(a.RoutePolicies) > 0 {
		if rt, err := a.Routes.Resolve(repo, ""); err == nil {
			if b, ok := a.RoutePolicies[rt.Route.Prefix]; ok {
				if b.Err != nil {
					return nil, fmt.Errorf("route %q's policy (%s) does not compile, so nothing new is admitted on it until it is fixed: %w", rt.Route.Prefix, b.Source, b.Err)
				}
				return b.Engine, nil
			}
		}
	}
	if a.PolicyErr != nil || a.Policy == nil {
		return nil, fmt.Errorf("the admission policy does not compile, so nothing new is admitted until it is fixed: %v", a.PolicyErr)
	}
	return a.Policy, nil
}

// PolicyDigest names the policy a repository's images are decided under ("" when it did not load).
func (a *Admitter) PolicyDigest(repo string) string {
	if e, err := a.engine(repo); err == nil {
		return e.Digest()
	}
	return ""
}

// ErrNotScanned means the image has no scan result yet: no decision can be made (it is pending).
var ErrNotScanned = errors.New("the image has not been scanned yet")

// Metadata is what admission reads and records.
type Metadata interface {
	ManifestGet(ctx context.Context, repo string, d digest.Digest) (meta.Manifest, error)
	ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error)
	VerdictGet(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)
	VerdictSet(ctx context.Context, v meta.Verdict, actor, reason string) error
	VerdictsStale(ctx context.Context, policyDigest, dbVersion string, limit int) ([]meta.Verdict, error)
}

// Admitter decides on images.
type Admitter struct {
	Content *content.Store
	Meta    Metadata
	DB      *vulndb.DB
	Policy  *policies.Engine // the default bundle (nil when PolicyErr says why it did not load)
	// PolicyErr is why the default bundle did not load: nothing is admitted under it.
	PolicyErr error
	// RoutePolicies are the routes' own bundles, by route prefix.
	RoutePolicies map[string]Bundle
	Routes        *route.Table
	Settings      policies.Settings
	MaxAge        time.Duration // of the vulnerability database
	Now           func() time.Time
	// Revoked counts admitted digests that a later decision quarantines (may be nil).
	Revoked prometheus.Counter
}

func (a *Admitter) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Input gathers the policy input for a manifest of a repository from the stored evidence.
func (a *Admitter) Input(ctx context.Context, repo string, d digest.Digest) (policies.Input, error) {
	rec, err := a.Meta.ManifestGet(ctx, repo, d)
	if err != nil {
		return policies.Input{}, fmt.Errorf("manifest %s of %s: %w", d, repo, err)
	}
	sc, err := a.Meta.ScanGet(ctx, d)
	if errors.Is(err, meta.ErrNotFound) {
		return policies.Input{}, ErrNotScanned
	}
	if err != nil {
		return policies.Input{}, err
	}
	in := policies.Input{
		Image:           policies.Image{Digest: d.String(), MediaType: rec.MediaType, Repository: repo, Size: rec.Size, Annotations: rec.Annotations},
		Scan:            policies.Scan{Scanner: sc.Scanner, Complete: sc.Complete, Error: sc.Error},
		Findings:        []policies.Finding{},
		Vulnerabilities: []policies.Vulnerability{},
		Settings:        a.Settings,
		Provenance:      policies.Provenance{Evaluated: false, Facts: []any{}},
		Now:             a.now().UTC().Format(time.RFC3339),
	}
	if a.Routes != nil {
		if rt, err := a.Routes.Resolve(repo, ""); err == nil {
			in.Route = policies.Route{Prefix: rt.Route.Prefix, Kind: string(rt.Route.Kind)}
		}
	}
	if err := a.imageConfig(ctx, repo, d, &in.Image); err != nil {
		return policies.Input{}, err
	}
	if len(sc.Result) > 0 {
		var res scan.Result
		if err := json.Unmarshal(sc.Result, &res); err != nil {
			return policies.Input{}, fmt.Errorf("stored scan of %s: %w", d, err)
		}
		for _, f := range res.Findings {
			in.Findings = append(in.Findings, policies.Finding{Kind: f.Kind, ID: f.ID, Severity: f.Severity, Title: f.Title, Path: f.Path, Layer: f.Layer.String()})
		}
	}
	if len(sc.Vulns) > 0 {
		var found []vulndb.Finding
		if err := json.Unmarshal(sc.Vulns, &found); err != nil {
			return policies.Input{}, fmt.Errorf("stored vulnerabilities of %s: %w", d, err)
		}
		for _, v := range found {
			in.Vulnerabilities = append(in.Vulnerabilities, policies.Vulnerability{ID: v.ID, Aliases: v.Aliases, Severity: v.Severity, Score: v.Score, Ecosystem: v.Ecosystem,
				Package: v.Package, Installed: v.Installed, Fixed: v.Fixed, Path: v.Path, Layer: v.Layer.String(), Published: v.Published})
		}
	}
	// The database counts as present only if the image was matched with it (fail closed).
	in.Database.MaxAgeHours = a.MaxAge.Hours()
	if info, err := a.DB.Info(); err == nil && sc.DBVersion != "" {
		in.Database = policies.Database{Present: true, Version: sc.DBVersion, AgeHours: info.Age(a.now()).Hours(), MaxAgeHours: a.MaxAge.Hours()}
	}
	return in, nil
}

// imageConfig fills what the image config says (platform, user, ports, labels).
func (a *Admitter) imageConfig(ctx context.Context, repo string, d digest.Digest, img *policies.Image) error {
	body, err := a.Content.ManifestGet(ctx, d)
	if err != nil {
		return err
	}
	var m v1.Manifest
	if err := json.Unmarshal(body, &m); err != nil || m.Config.Digest == "" {
		return nil // an index: its children are judged on their own
	}
	desc, err := a.Content.BlobStat(ctx, repo, m.Config.Digest)
	if err != nil {
		return fmt.Errorf("config %s of %s: %w", m.Config.Digest, d, err)
	}
	rc, err := a.Content.BlobReader(ctx, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	var cfg v1.Image
	if err := json.NewDecoder(io.LimitReader(rc, 4<<20)).Decode(&cfg); err != nil {
		return nil // an artifact's config: nothing to say
	}
	img.Platform = policies.Platform{OS: cfg.OS, Architecture: cfg.Architecture}
	img.User, img.Labels = cfg.Config.User, cfg.Config.Labels
	for p := range cfg.Config.ExposedPorts {
		img.Ports = append(img.Ports, p)
	}
	sort.Strings(img.Ports)
	return nil
}

// Explain evaluates the policy on an image without recording anything.
func (a *Admitter) Explain(ctx context.Context, repo string, d digest.Digest) (policies.Input, policies.Decision, error) {
	eng, err := a.engine(repo)
	if err != nil {
		return policies.Input{}, policies.Decision{}, err
	}
	in, err := a.Input(ctx, repo, d)
	if err != nil {
		return policies.Input{}, policies.Decision{}, err
	}
	dec, err := eng.Eval(ctx, in)
	return in, dec, err
}

// Decide evaluates the policy on an image and records the verdict: admitted when the policy
// allows, quarantined otherwise, under this policy and database version.
func (a *Admitter) Decide(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, policies.Decision, error) {
	eng, err := a.engine(repo)
	if err != nil {
		return meta.Verdict{}, policies.Decision{}, err
	}
	in, dec, err := a.Explain(ctx, repo, d)
	if err != nil {
		return meta.Verdict{}, policies.Decision{}, err
	}
	body, err := json.Marshal(dec)
	if err != nil {
		return meta.Verdict{}, policies.Decision{}, err
	}
	v := meta.Verdict{Repo: repo, Digest: d, State: meta.Quarantined, Decision: body, PolicyDigest: eng.Digest(),
		DBVersion: in.Database.Version, Decided: a.now().UTC()}
	reason := "policy allows"
	if dec.Allow {
		v.State = meta.Admitted
	} else if len(dec.Deny) > 0 {
		reason = dec.Deny[0].Message
		if n := len(dec.Deny); n > 1 {
			reason += fmt.Sprintf(" (and %d more)", n-1)
		}
	}
	prev, perr := a.Meta.VerdictGet(ctx, repo, d)
	if err := a.Meta.VerdictSet(ctx, v, "gatehouse", reason); err != nil {
		return meta.Verdict{}, policies.Decision{}, err
	}
	if perr == nil && prev.State == meta.Admitted && v.State != meta.Admitted && a.Revoked != nil {
		a.Revoked.Inc()
	}
	return v, dec, nil
}

// Reevaluate re-decides, from stored evidence, every policy verdict that was not decided under its
// route's current policy (the policy changed since), and tells after of each new verdict.
// Reviewers' decisions stand; indexes follow their children when next requested.
func (a *Admitter) Reevaluate(ctx context.Context, after func(meta.Verdict)) (int, error) {
	cur := a.PolicyDigest("")
	// listing by the default digest finds every verdict of another policy, including the
	// routes' own; those still current are skipped below
	stale, err := a.Meta.VerdictsStale(ctx, cur, "\x00", 1<<20)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, v := range stale {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		if v.State == meta.Released || v.State == meta.Rejected || v.State == meta.Pending {
			continue
		}
		want := a.PolicyDigest(v.Repo)
		if want == "" || v.PolicyDigest == want {
			continue
		}
		nv, _, err := a.Decide(ctx, v.Repo, v.Digest)
		if errors.Is(err, ErrNotScanned) {
			continue
		}
		if err != nil {
			// fail closed: not served under the old policy's verdict; the next request retries
			nv = meta.Verdict{Repo: v.Repo, Digest: v.Digest, State: meta.Pending, PolicyDigest: want, Decided: a.now().UTC()}
			if serr := a.Meta.VerdictSet(ctx, nv, "gatehouse", "could not be re-decided under the current policy: "+err.Error()); serr != nil {
				return n, serr
			}
		}
		n++
		if after != nil {
			after(nv)
		}
	}
	return n, nil
}
