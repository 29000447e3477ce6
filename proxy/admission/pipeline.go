package admission

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/proxy/scanning"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Content is what admission reads and writes in the content store: manifest bytes, the image
// config, and the SBOM referrers it attaches.
type Content interface {
	ManifestGet(ctx context.Context, d digest.Digest) ([]byte, error)
	ManifestPut(ctx context.Context, d digest.Digest, body []byte) error
	BlobStat(ctx context.Context, repo string, d digest.Digest) (v1.Descriptor, error)
	BlobOpen(ctx context.Context, repo string, d digest.Digest) (io.ReadSeekCloser, int64, error)
	UploadCreate(ctx context.Context, repo string) (content.Upload, error)
	BlobCommit(ctx context.Context, u content.Upload, d digest.Digest) (v1.Descriptor, error)
}

// Metadata is what admission reads and records in the metadata store.
type Metadata interface {
	ManifestGet(ctx context.Context, repo string, d digest.Digest) (meta.Manifest, error)
	ManifestPut(ctx context.Context, m meta.Manifest, tags ...string) error
	ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error)
	ScansToMatch(ctx context.Context, dbVersion string, limit int) ([]digest.Digest, error)
	VerdictGet(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)
	VerdictSet(ctx context.Context, v meta.Verdict, actor, reason string) error
	VerdictsStale(ctx context.Context, policyDigest, dbVersion string, limit int) ([]meta.Verdict, error)
	VerdictRepos(ctx context.Context, d digest.Digest) ([]string, error)
}

// Fill fetches a pull route's manifest and blobs from its upstream, once (proxy/pull).
type Fill interface {
	Manifest(ctx context.Context, rt route.Resolved, d digest.Digest) error
	EnsureBlob(ctx context.Context, rt route.Resolved, d digest.Digest, size int64) error
}

// Scans scans images and matches their inventories, storing the evidence (proxy/scanning).
type Scans interface {
	Evidence(ctx context.Context, rt route.Resolved, d digest.Digest) (scanning.Evidence, error)
	Match(ctx context.Context, ev scanning.Evidence) (scanning.Evidence, error)
}

// Database is the vulnerability database in place.
type Database interface {
	Info() (vulndb.Info, error)
}

// Feed is what keeps the vulnerability database current (attest/vulndb.Feed): while it fetches
// the first one, admissions wait for it instead of refusing images for lack of it.
type Feed interface {
	Fetching() (fetching bool, why string)
}

// Gate is where a verdict reached outside a request (a database update) is admitted again, so
// that what is served follows it (proxy/gate).
type Gate interface {
	Reconsider(ctx context.Context, rt route.Resolved, d digest.Digest) error
}

// Pipeline is admission: it takes one manifest digest of one repository from "asked for" to a
// recorded verdict. Its fields are set once, before the first Admit.
type Pipeline struct {
	Content  Content
	Meta     Metadata
	Fill     Fill // nil when no route pulls from an upstream
	Scans    Scans
	DB       Database
	Routes   *route.Table // resolves the repositories of stored verdicts (re-evaluation, re-matching)
	Settings policies.Settings
	MaxAge   time.Duration // of the vulnerability database: older is stale to the policy
	// MaxIndexChildren refuses larger indexes (0: 1024).
	MaxIndexChildren int
	// Feed, when set, is fetching the database; an admission with none in place waits for it up
	// to DBWait (0: 30s), then answers 503 saying so (nil: it is refused for lack of one).
	Feed   Feed
	DBWait time.Duration
	// Revoked counts admitted digests that a later verdict refuses (may be nil).
	Revoked prometheus.Counter
	Log     *slog.Logger // nil: slog.Default()
	Now     func() time.Time

	flights singleflight.Group // one admission at a time per repository and digest
}

// Admit returns the verdict on manifest d of the route's repository: the stored one while it
// stands (it was reached on the current evidence under the route's current policy, or by a
// reviewer), else a new one. It runs once at a time per repository and digest however many
// ask; the gate learns the verdict from its answer, and nothing else tells it.
func (p *Pipeline) Admit(ctx context.Context, rt route.Resolved, d digest.Digest) (meta.Verdict, error) {
	if rt.Route == nil {
		return meta.Verdict{}, fmt.Errorf("%s@%s: no route serves it, so nothing admits it", rt.Name, d)
	}
	v, err, _ := p.flights.Do(rt.Name+"@"+d.String(), func() (any, error) {
		v, err := p.admit(ctx, rt, d)
		if err != nil {
			p.failClosed(ctx, rt, d, err)
		}
		return v, err
	})
	if err != nil {
		return meta.Verdict{}, err
	}
	return v.(meta.Verdict), nil
}

// failClosed sends a stored verdict that no longer stands back to pending when admitting the
// digest again failed (its manifest or config went away, the store did not answer): a verdict
// reached on old evidence or under an old policy is not served while a new one cannot be had.
func (p *Pipeline) failClosed(ctx context.Context, rt route.Resolved, d digest.Digest, cause error) {
	if ctx.Err() != nil {
		return // stopped (a shutdown), not failed: admitted again when next asked for
	}
	v, err := p.Meta.VerdictGet(ctx, rt.Name, d)
	if err != nil || !v.State.Serves() || v.State.Reviewed() {
		return
	}
	sc, err := p.Meta.ScanGet(ctx, d)
	if err == nil && rt.Route.Admission.Stands(v, sc.DBVersion) {
		return // what is recorded holds: this failure changes nothing about it
	}
	pv := meta.Verdict{Repo: rt.Name, Digest: d, State: meta.Pending, PolicyDigest: v.PolicyDigest, DBVersion: v.DBVersion, Decided: p.now().UTC()}
	if err := p.Meta.VerdictSet(ctx, pv, "gatehouse", "could not be admitted again: "+cause.Error()); err != nil {
		p.log().Error("could not send a verdict that no longer stands back to pending; it stays served until it is admitted again", "repo", rt.Name, "digest", d, "err", err)
	}
}

// admit is admission, in the order its steps run.
func (p *Pipeline) admit(ctx context.Context, rt route.Resolved, d digest.Digest) (meta.Verdict, error) {
	// 1. Obtain the manifest: a pull route fetches it, and the image config the policy reads,
	//    from its upstream on first use.
	m, err := p.obtain(ctx, rt, d)
	if err != nil {
		return meta.Verdict{}, err
	}
	// 2. An index is judged by its children, each admitted on its own.
	if m.Index() {
		return p.judgeIndex(ctx, rt, d, m)
	}
	// 3. Scan the image, or reuse its stored scan. A failed scan is evidence too (the policy
	//    refuses it, saying why); an error with nothing recorded leaves nothing to evaluate.
	ev, err := p.Scans.Evidence(ctx, rt, d)
	if err != nil && ev.Scan.Digest == "" {
		return meta.Verdict{}, err
	}
	if ev.Result != nil && ev.Result.Inventory != nil {
		// a fresh scan's SBOMs are attached as referrers of the image
		if err := p.attachSBOM(ctx, rt.Name, d, ev.Result); err != nil {
			p.log().Error("could not attach the SBOM", "repo", rt.Name, "digest", d, "err", err)
		}
	}
	// 4. Match the inventory against the vulnerability database in place (once per version);
	//    while a first database is being fetched, wait for it rather than refuse for lack of it.
	if err := p.awaitDatabase(ctx, ev); err != nil {
		return meta.Verdict{}, err
	}
	if ev, err = p.Scans.Match(ctx, ev); err != nil {
		return meta.Verdict{}, fmt.Errorf("matching %s against the vulnerability database: %w", d, err)
	}
	if v, err := p.Meta.VerdictGet(ctx, rt.Name, d); err == nil && rt.Route.Admission.Stands(v, ev.Scan.DBVersion) {
		return v, nil
	} else if err != nil && !errors.Is(err, meta.ErrNotFound) {
		return meta.Verdict{}, err
	}
	// 5–7. Build the policy input, evaluate the route's policy, record the verdict.
	return p.evaluate(ctx, rt, d, m, ev)
}

// evaluate builds the policy input from the evidence, evaluates the route's policy on it and
// records the verdict with its audit record.
func (p *Pipeline) evaluate(ctx context.Context, rt route.Resolved, d digest.Digest, m manifest.Stored, ev scanning.Evidence) (meta.Verdict, error) {
	eng, err := engine(rt)
	if err != nil {
		return meta.Verdict{}, err
	}
	// 5. Build the policy input.
	in, err := p.input(ctx, rt, d, m, ev)
	if err != nil {
		return meta.Verdict{}, err
	}
	// Provenance (issue 12) is verified here: the image's signatures and attestations, checked
	// against the route's trust policy, become in.Provenance. Until then it says "not evaluated".

	// 6. Evaluate.
	dec, err := eng.Eval(ctx, in)
	if err != nil {
		return meta.Verdict{}, err
	}
	// 7. Record the verdict and its audit record.
	v := meta.Verdict{Repo: rt.Name, Digest: d, State: meta.Quarantined, PolicyDigest: eng.Digest(), DBVersion: in.Database.Version, Decided: p.now().UTC()}
	reason := "policy allows"
	if dec.Allow {
		v.State = meta.Admitted
	} else if len(dec.Deny) > 0 {
		reason = dec.Reasons(1)
	}
	if v, err = p.record(ctx, v, dec, reason); err != nil {
		return meta.Verdict{}, err
	}
	// Signing (issue 13) comes here: an admitted digest gets Gatehouse's signature and its
	// verification summary attached before the verdict is returned to the gate.
	return v, nil
}

// awaitDatabase waits, while the feed fetches a first database, until one is in place (or
// DBWait passes: then 503, saying why, and the admission is tried again when next asked for).
// An image whose scan failed needs no database to be refused.
func (p *Pipeline) awaitDatabase(ctx context.Context, ev scanning.Evidence) error {
	if p.Feed == nil || ev.Scan.Error != "" {
		return nil
	}
	wait := p.DBWait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		fetching, why := p.Feed.Fetching()
		if !fetching {
			return nil
		}
		if time.Now().After(deadline) {
			return apierr.New(apierr.Unavailable, "%s; nothing is admitted without it, so retry in a few seconds", why).WithHeader("Retry-After", "10")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// obtain reads the manifest, fetching it first on a pull route (with the config of an image, so
// the policy can read it from this repository even when the digest was scanned through another).
func (p *Pipeline) obtain(ctx context.Context, rt route.Resolved, d digest.Digest) (manifest.Stored, error) {
	pull := rt.Route != nil && rt.Route.Kind == route.Pull && p.Fill != nil
	if pull {
		if err := p.Fill.Manifest(ctx, rt, d); err != nil {
			return manifest.Stored{}, err
		}
	}
	m, err := p.stored(ctx, d)
	if err != nil {
		return manifest.Stored{}, err
	}
	if pull && !m.Index() && m.Config != nil && m.Config.Digest != "" {
		if err := p.Fill.EnsureBlob(ctx, rt, m.Config.Digest, m.Config.Size); err != nil {
			return manifest.Stored{}, err
		}
	}
	return m, nil
}

func (p *Pipeline) stored(ctx context.Context, d digest.Digest) (manifest.Stored, error) {
	body, err := p.Content.ManifestGet(ctx, d)
	if err != nil {
		return manifest.Stored{}, err
	}
	m, err := manifest.Read(body)
	if err != nil {
		return manifest.Stored{}, fmt.Errorf("stored manifest %s: %w", d, err)
	}
	return m, nil
}

// engine is the route's policy; one that did not load admits nothing new (fail closed).
func engine(rt route.Resolved) (*policies.Engine, error) {
	b := rt.Route.Admission.Policy
	switch {
	case b == nil:
		return nil, fmt.Errorf("route %q has no admission policy, so nothing is admitted on it", rt.Route.Prefix)
	case b.Err != nil || b.Engine == nil:
		return nil, fmt.Errorf("route %q's policy (%s) does not compile, so nothing new is admitted on it until it is fixed: %v", rt.Route.Prefix, b.Source, b.Err)
	}
	return b.Engine, nil
}

// record stores a verdict and its audit record (the decision's first reason).
func (p *Pipeline) record(ctx context.Context, v meta.Verdict, dec policies.Decision, reason string) (meta.Verdict, error) {
	body, err := json.Marshal(dec)
	if err != nil {
		return meta.Verdict{}, err
	}
	v.Decision = body
	prev, perr := p.Meta.VerdictGet(ctx, v.Repo, v.Digest)
	if err := p.Meta.VerdictSet(ctx, v, "gatehouse", reason); err != nil {
		return meta.Verdict{}, err
	}
	if perr == nil && prev.State == meta.Admitted && v.State != meta.Admitted && p.Revoked != nil {
		p.Revoked.Inc()
	}
	attrs := []any{"repo", v.Repo, "digest", v.Digest, "verdict", v.State}
	if v.State != meta.Admitted {
		attrs = append(attrs, "reason", reason)
	}
	p.log().Info("verdict recorded", attrs...)
	return v, nil
}

// judgeIndex admits an index when none of its platform children is refused. On a push route
// every child is admitted first (an index is pushed after its children); a pull route fetches
// and admits a child only when a client asks for it, so there the index is refused only for
// children already known to be refused.
func (p *Pipeline) judgeIndex(ctx context.Context, rt route.Resolved, d digest.Digest, m manifest.Stored) (meta.Verdict, error) {
	limit := p.MaxIndexChildren
	if limit <= 0 {
		limit = 1024
	}
	return p.judgeTree(ctx, rt, d, m, &tree{root: d, seen: map[digest.Digest]*judged{d: {done: make(chan struct{})}}, limit: limit})
}

// tree bounds the judging of one index and the indexes it lists: each distinct manifest in it is
// judged once (a manifest listed again waits for that verdict), and at most limit of them are, so
// an index of indexes cannot multiply the work.
type tree struct {
	root  digest.Digest
	mu    sync.Mutex
	seen  map[digest.Digest]*judged
	limit int
	over  bool // a visit found the tree past its limit (the other children's errors are its echoes)
}

type judged struct {
	done chan struct{}
	v    meta.Verdict
	err  error
}

// visit returns d's entry and whether the caller judges it (the first to visit it), or false
// when the tree has grown past its limit.
func (t *tree) visit(d digest.Digest) (j *judged, first, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if j := t.seen[d]; j != nil {
		return j, false, true
	}
	if len(t.seen) >= t.limit+1 { // the root is in seen too
		t.over = true
		return nil, false, false
	}
	j = &judged{done: make(chan struct{})}
	t.seen[d] = j
	return j, true, true
}

// judge returns a child's verdict: an image's admission, or an index's judgment in the same tree.
func (p *Pipeline) judge(ctx context.Context, rt route.Resolved, d digest.Digest, t *tree) (meta.Verdict, error) {
	cm, err := p.stored(ctx, d)
	if err != nil {
		return meta.Verdict{}, err
	}
	if cm.Index() {
		return p.judgeTree(ctx, rt, d, cm, t)
	}
	return p.Admit(ctx, rt, d)
}

// errTreeTooLarge stops judging a tree that lists more distinct manifests than its limit.
var errTreeTooLarge = errors.New("the index tree is too large")

func (p *Pipeline) judgeTree(ctx context.Context, rt route.Resolved, d digest.Digest, m manifest.Stored, t *tree) (meta.Verdict, error) {
	dec := policies.Decision{Allow: true, Deny: []policies.Reason{}, Warn: []policies.Reason{}}
	v := meta.Verdict{Repo: rt.Name, Digest: d, State: meta.Admitted, PolicyDigest: meta.IndexPolicy, Decided: p.now().UTC()}
	refuse := func(rule, msg string, evidence any) (meta.Verdict, error) {
		dec.Allow = false
		dec.Deny = append(dec.Deny, policies.Reason{Rule: rule, Message: msg, Evidence: evidence})
		v.State = meta.Quarantined
		return p.record(ctx, v, dec, msg)
	}
	if n := len(m.Manifests); n > t.limit {
		return refuse("index.children", fmt.Sprintf("the index lists %d manifests; the limit is %d (admission.max_index_children)", n, t.limit),
			map[string]int{"children": n, "limit": t.limit})
	}
	lazy := rt.Route.Kind == route.Pull
	type child struct {
		desc v1.Descriptor
		v    meta.Verdict
	}
	var children []*child
	listed := map[digest.Digest]bool{}
	for _, c := range m.Manifests {
		if listed[c.Digest] {
			continue // listed twice: judged once
		}
		listed[c.Digest] = true
		if !lazy && p.attestation(ctx, c) {
			continue // buildx attestations ride in indexes; they are referrers, not platforms
		}
		children = append(children, &child{desc: c})
	}
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(4)
	for _, c := range children {
		eg.Go(func() error {
			if err := ectx.Err(); err != nil {
				return err // a child failed, or the admission was stopped: no more children are judged
			}
			var err error
			if lazy {
				c.v, err = p.Meta.VerdictGet(ectx, rt.Name, c.desc.Digest)
				if errors.Is(err, meta.ErrNotFound) {
					c.v, err = meta.Verdict{State: meta.Pending}, nil
				}
				return err
			}
			j, first, ok := t.visit(c.desc.Digest)
			if !ok {
				return errTreeTooLarge
			}
			if first {
				j.v, j.err = p.judge(ectx, rt, c.desc.Digest, t)
				close(j.done)
			}
			select {
			case <-j.done:
			case <-ectx.Done():
				return ectx.Err()
			}
			c.v = j.v
			return j.err
		})
	}
	err := eg.Wait()
	t.mu.Lock()
	over := t.over
	t.mu.Unlock()
	if err != nil && over && t.root == d && ctx.Err() == nil {
		// whichever child's error came first (one waiting on a judgment the overflow cancelled
		// says "context canceled"), the tree is too large
		// refused at the root only: an index inside the tree is not at fault for its parent's size
		return refuse("index.children", fmt.Sprintf("the index and the indexes it lists name more than %d distinct manifests (admission.max_index_children)", t.limit),
			map[string]int{"limit": t.limit})
	}
	if err != nil {
		return meta.Verdict{}, err
	}
	for _, c := range children {
		if c.v.State.Serves() || (lazy && c.v.State == meta.Pending) {
			continue
		}
		dec.Allow = false
		plat := "unknown platform"
		if pl := c.desc.Platform; pl != nil {
			plat = pl.OS + "/" + pl.Architecture
			if pl.Variant != "" {
				plat += "/" + pl.Variant
			}
		}
		dec.Deny = append(dec.Deny, policies.Reason{Rule: "index.child", Message: fmt.Sprintf("%s child %s is %s: %s", plat, c.desc.Digest, c.v.State, policies.ReasonsOf(c.v.Decision, 1)),
			Evidence: map[string]string{"digest": c.desc.Digest.String(), "platform": plat, "state": string(c.v.State)}})
	}
	why := "every platform child is admitted"
	if lazy {
		why = "no child is known to be refused; each child is fetched and admitted when it is asked for"
	}
	if !dec.Allow {
		v.State, why = meta.Quarantined, dec.Deny[0].Message
	}
	return p.record(ctx, v, dec, why)
}

// attestation says whether an index child is an attestation, not a platform: buildx marks them
// (vnd.docker.reference.type), but only a child whose platform is unknown/unknown and whose
// layers are all in-toto or DSSE statements is one. Anything else is judged as an image.
func (p *Pipeline) attestation(ctx context.Context, c v1.Descriptor) bool {
	if c.Annotations["vnd.docker.reference.type"] != "attestation-manifest" {
		return false
	}
	if c.Platform == nil || c.Platform.OS != "unknown" || c.Platform.Architecture != "unknown" {
		return false
	}
	m, err := p.stored(ctx, c.Digest)
	if err != nil || len(m.Layers) == 0 || m.Index() {
		return false // not at hand: judged as a child, which fails closed
	}
	for _, l := range m.Layers {
		if !statementTypes[l.MediaType] {
			return false
		}
	}
	return true
}

// statementTypes are the layer media types of attestations (in-toto statements, DSSE envelopes).
var statementTypes = map[string]bool{
	"application/vnd.in-toto+json":                  true,
	"application/vnd.dsse.envelope.v1+json":         true,
	"application/vnd.dev.sigstore.bundle.v0.3+json": true,
}

// Reevaluate admits again, from stored evidence only (no fetch, no scan), every verdict not
// reached under its route's current policy: run before serving, so no verdict of an old policy
// is served under a new one (the gate has learned nothing yet). Reviewers' verdicts stand;
// pending ones are admitted when next asked for; an index follows its children when next asked
// for. A verdict that cannot be evaluated again goes back to pending (fail closed).
func (p *Pipeline) Reevaluate(ctx context.Context) (int, error) {
	all, err := p.Meta.VerdictsStale(ctx, "", "\x00", 1<<20) // every verdict: the current policy is the route's
	if err != nil {
		return 0, err
	}
	n := 0
	for _, v := range all {
		if ctx.Err() != nil {
			return n, ctx.Err()
		}
		if v.State.Reviewed() || v.State == meta.Pending || v.PolicyDigest == meta.IndexPolicy {
			continue
		}
		rt, err := p.Routes.Resolve(v.Repo, "")
		if err != nil {
			continue // no route serves it any more: it is never served
		}
		b := rt.Route.Admission.Policy
		if b == nil || b.Engine == nil || v.PolicyDigest == b.Engine.Digest() {
			continue
		}
		m, err := p.stored(ctx, v.Digest)
		var sc meta.Scan
		if err == nil {
			sc, err = p.Meta.ScanGet(ctx, v.Digest)
			if errors.Is(err, meta.ErrNotFound) {
				continue // never scanned: admitted when next asked for
			}
		}
		if err == nil {
			_, err = p.evaluate(ctx, rt, v.Digest, m, scanning.Evidence{Scan: sc})
		}
		if err != nil {
			pv := meta.Verdict{Repo: v.Repo, Digest: v.Digest, State: meta.Pending, PolicyDigest: b.Engine.Digest(), Decided: p.now().UTC()}
			if serr := p.Meta.VerdictSet(ctx, pv, "gatehouse", "could not be evaluated again under the current policy: "+err.Error()); serr != nil {
				return n, serr
			}
		}
		n++
	}
	return n, nil
}

// Rematch matches every stored inventory not yet matched with the vulnerability database in
// place, and has each repository holding a verdict on a re-matched image admit it again through
// the gate. It reads scan results from the metadata store, never a layer.
func (p *Pipeline) Rematch(ctx context.Context, g Gate) error {
	info, err := p.DB.Info()
	if err != nil {
		return err
	}
	for {
		todo, err := p.Meta.ScansToMatch(ctx, info.Version, 100)
		if err != nil || len(todo) == 0 {
			return err
		}
		for _, d := range todo {
			sc, err := p.Meta.ScanGet(ctx, d)
			if err != nil {
				return err
			}
			ev, err := p.Scans.Match(ctx, scanning.Evidence{Scan: sc})
			if err != nil {
				return err
			}
			if ev.Scan.DBVersion != info.Version {
				return nil // the database changed meanwhile: the next round matches with it
			}
			p.reconsider(ctx, g, sc.Repo, d)
		}
	}
}

// reconsider has every repository holding a verdict on d (and the one it was scanned in) admit
// it again: a scan is stored once per digest, and each repository's verdict must follow it.
func (p *Pipeline) reconsider(ctx context.Context, g Gate, scannedIn string, d digest.Digest) {
	repos := []string{scannedIn}
	others, err := p.Meta.VerdictRepos(ctx, d)
	if err != nil {
		p.log().Error("could not list the repositories holding a verdict on a re-matched image; only the one it was scanned in is admitted again", "repo", scannedIn, "digest", d, "err", err)
	}
	for _, r := range others {
		if r != scannedIn {
			repos = append(repos, r)
		}
	}
	for _, repo := range repos {
		rt, err := p.Routes.Resolve(repo, "")
		if err != nil {
			continue
		}
		if err := g.Reconsider(ctx, rt, d); err != nil && ctx.Err() == nil {
			p.log().Error("admitting a re-matched image again failed; unless its verdict still stands it is pending, and admitted again when next asked for", "repo", repo, "digest", d, "err", err)
		}
	}
}

// Watch re-matches stored inventories whenever the vulnerability database changes (checked
// every recheck), until ctx ends.
func (p *Pipeline) Watch(ctx context.Context, g Gate, recheck time.Duration) {
	t := time.NewTicker(recheck)
	defer t.Stop()
	for {
		if err := p.Rematch(ctx, g); err != nil && !errors.Is(err, vulndb.ErrNoDatabase) && ctx.Err() == nil {
			p.log().Error("re-matching stored inventories failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Explain evaluates the route's policy on a stored image from its stored evidence, recording
// nothing (gatehouse policy eval).
func (p *Pipeline) Explain(ctx context.Context, rt route.Resolved, d digest.Digest) (policies.Input, policies.Decision, error) {
	eng, err := engine(rt)
	if err != nil {
		return policies.Input{}, policies.Decision{}, err
	}
	m, err := p.stored(ctx, d)
	if err != nil {
		return policies.Input{}, policies.Decision{}, err
	}
	sc, err := p.Meta.ScanGet(ctx, d)
	if errors.Is(err, meta.ErrNotFound) {
		return policies.Input{}, policies.Decision{}, fmt.Errorf("image %s has not been scanned yet", d)
	}
	if err != nil {
		return policies.Input{}, policies.Decision{}, err
	}
	in, err := p.input(ctx, rt, d, m, scanning.Evidence{Scan: sc})
	if err != nil {
		return policies.Input{}, policies.Decision{}, err
	}
	dec, err := eng.Eval(ctx, in)
	return in, dec, err
}

func (p *Pipeline) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Pipeline) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}
