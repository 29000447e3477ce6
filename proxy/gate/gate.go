package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Mode is how a route treats decisions.
type Mode string

const (
	Enforce Mode = "enforce" // serve only what is admitted or released
	Audit   Mode = "audit"   // decide and record, but serve everything
)

// Metadata is where verdicts are kept.
type Metadata interface {
	VerdictGet(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)
	VerdictSet(ctx context.Context, v meta.Verdict, actor, reason string) error
	AdmittedTagSet(ctx context.Context, repo, tag string, d digest.Digest) error
	AdmittedTagGet(ctx context.Context, repo, tag string) (digest.Digest, error)
	VerdictsServed(ctx context.Context, repo string) ([]meta.Verdict, error)
	// ScanGet returns an image's stored scan: the gate serves only the blobs it read.
	ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error)
}

// Admit produces the verdict on an image manifest of a repository: it fetches and scans what it
// must, then decides. It is called at most once at a time per digest.
type Admit func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)

// Manifests reads stored manifest bytes (to learn an index's children and an image's blobs).
type Manifests interface {
	ManifestGet(ctx context.Context, d digest.Digest) ([]byte, error)
}

// Config configures a Gate.
type Config struct {
	Default Mode            // the mode of routes not in Routes
	Routes  map[string]Mode // by route prefix
	// Fallback lists the route prefixes whose tags keep serving their last admitted digest while
	// the tag's new digest is pending or refused (tag_fallback: last-admitted).
	Fallback map[string]bool
	Hold     time.Duration // how long a request waits for an admission before 503 (default 60s)
	Timeout  time.Duration // how long one admission may run in all (default 15m)
	// RevokeGrace keeps serving a digest this long after a later decision refuses it (a new
	// advisory, a policy change), so teams can roll forward first (0: refuse at once).
	RevokeGrace time.Duration
	// Table resolves a repository to its route (nil: every repository is on a push route). On
	// a pull route an index is served without fetching its children: each child is fetched and
	// admitted when a client asks for it, so a pull of one platform admits one image.
	Table *route.Table
	// MaxIndexChildren refuses larger indexes (default 1024).
	MaxIndexChildren int
}

// Gate is the admission gate. It is safe for concurrent use.
type Gate struct {
	cfg       Config
	meta      Metadata
	manifests Manifests
	admit     Admit
	log       *slog.Logger
	metrics   *metrics

	mu      sync.RWMutex
	known   map[string]known         // repo@digest: the verdict as served
	blobs   map[string]int           // repo@blob: how many admitted manifests of repo reference it (and their scans read it)
	anyBlob map[digest.Digest]int    // blob: how many admitted manifests of any repository do
	tags    map[string]digest.Digest // repo:tag -> the digest it last served admitted (fallback routes)
	repos   map[string]bool          // repositories whose stored served verdicts have been learned

	flights singleflight.Group

	base     context.Context // admissions run under it; Release ends it, and held requests are answered then
	stop     context.CancelFunc
	runMu    sync.Mutex     // orders Release against admissions starting
	released bool           // set by Release: no admission starts after it
	running  sync.WaitGroup // admissions under way
}

// Release answers every request held for an admission with 503 and Retry-After at once, and
// every later one too, and stops the admissions under way (the server is shutting down: they
// run again, from what is stored, when next asked for).
func (g *Gate) Release() {
	g.runMu.Lock()
	g.released = true
	g.runMu.Unlock()
	g.stop()
}

// Wait waits, after Release, for the admissions that were under way to end (so nothing writes
// to the metadata store once it is closed).
func (g *Gate) Wait() { g.running.Wait() }

type known struct {
	state    string
	refusal  *apierr.Error   // nil when the state serves
	refs     []digest.Digest // blobs counted in Gate.blobs
	children []digest.Digest // a served index's children: one refused later sends it back to admission
}

// New returns a gate. reg may be nil.
func New(cfg Config, md Metadata, manifests Manifests, admit Admit, log *slog.Logger, reg prometheus.Registerer) (*Gate, error) {
	if cfg.Default == "" {
		cfg.Default = Enforce
	}
	if cfg.Hold <= 0 {
		cfg.Hold = 60 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Minute
	}
	if cfg.MaxIndexChildren <= 0 {
		cfg.MaxIndexChildren = 1024
	}
	if log == nil {
		log = slog.Default()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	base, stop := context.WithCancel(context.Background())
	return &Gate{cfg: cfg, meta: md, manifests: manifests, admit: admit, log: log, metrics: m, base: base, stop: stop,
		known: map[string]known{}, blobs: map[string]int{}, anyBlob: map[digest.Digest]int{}, tags: map[string]digest.Digest{}, repos: map[string]bool{}}, nil
}

// Enforced says whether requests through a route are gated (nil: the default route).
func (g *Gate) Enforced(r *route.Route) bool {
	if r != nil {
		if m, ok := g.cfg.Routes[r.Prefix]; ok {
			return m == Enforce
		}
	}
	return g.cfg.Default == Enforce
}

// Fallback says whether a route's tags fall back to their last admitted digest.
func (g *Gate) Fallback(r *route.Route) bool { return r != nil && g.cfg.Fallback[r.Prefix] }

// TagServed remembers that a tag served admitted digest d (written through only on change).
func (g *Gate) TagServed(ctx context.Context, repo, tag string, d digest.Digest) {
	k := repo + ":" + tag
	g.mu.RLock()
	cur := g.tags[k]
	g.mu.RUnlock()
	if cur == d {
		return
	}
	if err := g.meta.AdmittedTagSet(ctx, repo, tag, d); err != nil {
		g.log.Warn("could not record a tag's admitted digest; its fallback stays the previous one", "repo", repo, "tag", tag, "digest", d, "err", err)
		return
	}
	g.mu.Lock()
	g.tags[k] = d
	g.mu.Unlock()
}

// LastAdmitted returns the digest a tag last served admitted.
func (g *Gate) LastAdmitted(ctx context.Context, repo, tag string) (digest.Digest, bool) {
	k := repo + ":" + tag
	g.mu.RLock()
	d, ok := g.tags[k]
	g.mu.RUnlock()
	if ok {
		return d, true
	}
	d, err := g.meta.AdmittedTagGet(ctx, repo, tag)
	if err != nil {
		return "", false
	}
	g.mu.Lock()
	g.tags[k] = d
	g.mu.Unlock()
	return d, true
}

func key(repo string, d digest.Digest) string { return repo + "@" + d.String() }

// Manifest returns nil when manifest d of repo (whose bytes are body) may be served, and the
// refusal otherwise: 403 DENIED with the reasons, or 503 with Retry-After while it is under
// admission. The first request for an undecided digest starts its admission.
func (g *Gate) Manifest(ctx context.Context, repo string, d digest.Digest, body []byte) error {
	return g.ManifestWithin(ctx, repo, d, body, g.cfg.Hold)
}

// ManifestWithin is Manifest with its own hold (0: answer at once; the admission goes on).
func (g *Gate) ManifestWithin(ctx context.Context, repo string, d digest.Digest, body []byte, hold time.Duration) error {
	g.mu.RLock()
	k, ok := g.known[key(repo, d)]
	g.mu.RUnlock()
	if ok {
		return g.refused("manifest", k.refusal)
	}
	p := parse(body)
	if p.metadata() {
		// A referrer (signature, SBOM, attestation) is metadata about its subject: its manifest is
		// served, but it never makes the subject pullable and its blobs stay gated.
		g.referrer(repo, d)
		return nil
	}
	v, err := g.meta.VerdictGet(ctx, repo, d)
	switch {
	case err == nil && v.State != meta.Pending:
		return g.refused("manifest", g.learn(ctx, v, p).refusal)
	case err != nil && !errors.Is(err, meta.ErrNotFound):
		return apierr.Unavailablef(err, "the metadata store did not answer while looking up the verdict on %s; nothing is served undecided", d)
	}
	k, err = g.await(ctx, repo, d, p, hold)
	if err != nil {
		return err
	}
	return g.refused("manifest", k.refusal)
}

func (g *Gate) refused(kind string, e *apierr.Error) error {
	if e == nil {
		return nil
	}
	g.metrics.refusals.WithLabelValues(kind).Inc()
	return e
}

// Blob returns nil when blob d may be served from repo: it must be referenced by a manifest of
// repo that is admitted or released.
func (g *Gate) Blob(ctx context.Context, repo string, d digest.Digest) error {
	g.mu.RLock()
	n, loaded := g.blobs[key(repo, d)], g.repos[repo]
	g.mu.RUnlock()
	if n > 0 {
		return nil
	}
	if !loaded {
		// the first blob request for this repository since start: learn what its stored
		// admitted manifests reference (a client may ask for a blob before its manifest)
		if _, err, _ := g.flights.Do("repo\x00"+repo, func() (any, error) { return nil, g.loadRepo(ctx, repo) }); err != nil {
			return apierr.Unavailablef(err, "could not read the admitted images of %s to decide on blob %s; nothing is served undecided", repo, d)
		}
		g.mu.RLock()
		n = g.blobs[key(repo, d)]
		g.mu.RUnlock()
		if n > 0 {
			return nil
		}
	}
	g.metrics.refusals.WithLabelValues("blob").Inc()
	return apierr.New(apierr.Denied, "blob %s of %s is not part of any admitted image of this repository whose scan read it: it is served only after a manifest that references it is admitted (pull that manifest first; if it is refused, it says why)", d, repo).
		WithDetail(map[string]string{"repository": repo, "digest": d.String()})
}

// loadRepo learns the stored served verdicts of a repository and the blobs they reference.
func (g *Gate) loadRepo(ctx context.Context, repo string) error {
	vs, err := g.meta.VerdictsServed(ctx, repo)
	if err != nil {
		return err
	}
	for _, v := range vs {
		g.mu.RLock()
		_, ok := g.known[key(repo, v.Digest)]
		g.mu.RUnlock()
		if ok {
			continue // learned already, perhaps more recently than this listing
		}
		body, err := g.manifests.ManifestGet(ctx, v.Digest)
		if err != nil {
			return fmt.Errorf("manifest %s: %w", v.Digest, err)
		}
		g.learnUnlessKnown(ctx, v, parse(body))
	}
	g.mu.Lock()
	g.repos[repo] = true
	g.mu.Unlock()
	return nil
}

// Record tells the gate of a decision made elsewhere (a background scan, a re-match, a review), so
// what it serves follows at once.
func (g *Gate) Record(ctx context.Context, v meta.Verdict) {
	if v.State == meta.Pending {
		g.forget(v.Repo, v.Digest) // undecided again: the next request waits for its admission
		return
	}
	if g.cfg.RevokeGrace > 0 && !serves(v.State) {
		g.mu.RLock()
		old, ok := g.known[key(v.Repo, v.Digest)]
		g.mu.RUnlock()
		if ok && serves(old.state) {
			g.log.Warn("a served digest is refused by a later decision; it is served until the grace period ends", "repo", v.Repo, "digest", v.Digest,
				"verdict", v.State, "grace", g.cfg.RevokeGrace, "reason", firstReasons(v, 1))
			time.AfterFunc(g.cfg.RevokeGrace, func() {
				// whatever the stored verdict is by then (it may have been re-admitted meanwhile)
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				cur, err := g.meta.VerdictGet(ctx, v.Repo, v.Digest)
				if err != nil {
					g.forget(v.Repo, v.Digest) // the next request asks the store again
					return
				}
				if !serves(cur.State) {
					g.learn(ctx, cur, parsed{})
				}
			})
			return
		}
	}
	body, err := g.manifests.ManifestGet(ctx, v.Digest)
	if err != nil {
		// without its bytes the gate cannot tell its blobs or whether it is a referrer; forget
		// it so the next request reads the stored verdict again
		g.forget(v.Repo, v.Digest)
		return
	}
	p := parse(body)
	if p.metadata() {
		g.referrer(v.Repo, v.Digest) // served as metadata whatever a scan of it concluded
		return
	}
	g.learn(ctx, v, p)
}

// referrer remembers that a manifest is a referrer: served as metadata, its blobs not counted.
func (g *Gate) referrer(repo string, d digest.Digest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.put(repo, d, &known{state: "referrer"})
}

func (g *Gate) forget(repo string, d digest.Digest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.put(repo, d, nil)
}

// put replaces what the gate knows of manifest d of repo (nil: forgets it), keeping the blob
// counts true, and returns what it replaced. g.mu must be held.
func (g *Gate) put(repo string, d digest.Digest, k *known) (old known, had bool) {
	mk := key(repo, d)
	if old, had = g.known[mk]; had {
		for _, b := range old.refs {
			bk := key(repo, b)
			if g.blobs[bk] <= 1 {
				delete(g.blobs, bk)
			} else {
				g.blobs[bk]--
			}
			if g.anyBlob[b] <= 1 {
				delete(g.anyBlob, b)
			} else {
				g.anyBlob[b]--
			}
		}
		delete(g.known, mk)
	}
	if k != nil {
		for _, b := range k.refs {
			g.blobs[key(repo, b)]++
			g.anyBlob[b]++
		}
		g.known[mk] = *k
	}
	return old, had
}

// Mountable says whether blob d may be linked into a repository by a mount that names no source
// repository: only when an admitted image somewhere references it and its scan read it. Anything
// else must be uploaded, so a pusher cannot link a quarantined layer it learned the digest of.
func (g *Gate) Mountable(d digest.Digest) bool {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.anyBlob[d] > 0
}

func serves(state string) bool { return state == meta.Admitted || state == meta.Released }

// knownFor is what the gate keeps of a final verdict: the blobs it makes servable, or its refusal.
// A serving verdict makes servable only the blobs that the image's scan read: a layer the scan
// did not read (whatever the reason) is never served on the strength of the image's verdict.
func (g *Gate) knownFor(ctx context.Context, v meta.Verdict, p parsed) known {
	if !serves(v.State) {
		return known{state: v.State, refusal: refusal(v)}
	}
	k := known{state: v.State}
	for _, c := range p.Manifests {
		k.children = append(k.children, c.Digest)
	}
	want := p.blobs()
	if len(want) == 0 {
		return k
	}
	read, err := g.scanned(ctx, v.Digest)
	if err != nil {
		g.log.Warn("could not read which blobs an admitted image's scan read; none of its blobs is served until it is known", "repo", v.Repo, "digest", v.Digest, "err", err)
		return k
	}
	for _, b := range want {
		if read[b] {
			k.refs = append(k.refs, b)
		}
	}
	if len(k.refs) < len(want) {
		g.log.Warn("an admitted image references blobs its scan did not read; they are not served", "repo", v.Repo, "digest", v.Digest,
			"read", len(k.refs), "referenced", len(want))
	}
	return k
}

// scanned returns the blobs the stored scan of image d read.
func (g *Gate) scanned(ctx context.Context, d digest.Digest) (map[digest.Digest]bool, error) {
	sc, err := g.meta.ScanGet(ctx, d)
	if err != nil {
		return nil, err
	}
	var res struct {
		Blobs []digest.Digest `json:"blobs"`
	}
	if len(sc.Result) > 0 {
		if err := json.Unmarshal(sc.Result, &res); err != nil {
			return nil, fmt.Errorf("the stored scan of %s: %w", d, err)
		}
	}
	read := make(map[digest.Digest]bool, len(res.Blobs))
	for _, b := range res.Blobs {
		read[b] = true
	}
	return read, nil
}

// learn remembers a final verdict and the blobs it makes servable.
func (g *Gate) learn(ctx context.Context, v meta.Verdict, p parsed) known {
	k := g.knownFor(ctx, v, p)
	g.mu.Lock()
	if old, had := g.put(v.Repo, v.Digest, &k); had && serves(old.state) && !serves(v.State) {
		g.log.Warn("a served digest is now refused", "repo", v.Repo, "digest", v.Digest, "verdict", v.State, "reason", firstReasons(v, 1))
	}
	var indexes []digest.Digest
	if !serves(v.State) {
		indexes = g.servedIndexesOf(v.Repo, v.Digest)
		for _, idx := range indexes {
			g.put(v.Repo, idx, nil)
		}
	}
	g.mu.Unlock()
	for _, idx := range indexes {
		// the index was served while this child was not known refused: it goes back to
		// admission, and is judged again (with this child) on its next request
		pv := meta.Verdict{Repo: v.Repo, Digest: idx, State: meta.Pending, PolicyDigest: "index: judged by its children", Decided: time.Now().UTC()}
		if err := g.meta.VerdictSet(ctx, pv, "gatehouse", fmt.Sprintf("its child %s is now %s; the index is judged again", v.Digest, v.State)); err != nil {
			g.log.Warn("could not send an index back to admission after a child was refused; its stored verdict stands until it is decided again", "repo", v.Repo, "index", idx, "err", err)
		}
	}
	return k
}

// servedIndexesOf lists the indexes of repo being served that list child. g.mu must be held.
func (g *Gate) servedIndexesOf(repo string, child digest.Digest) []digest.Digest {
	var out []digest.Digest
	prefix := repo + "@"
	for mk, k := range g.known {
		if !strings.HasPrefix(mk, prefix) || !serves(k.state) {
			continue
		}
		for _, c := range k.children {
			if c == child {
				out = append(out, digest.Digest(strings.TrimPrefix(mk, prefix)))
				break
			}
		}
	}
	return out
}

// learnUnlessKnown learns a listed verdict unless a decision arrived meanwhile (which is newer).
func (g *Gate) learnUnlessKnown(ctx context.Context, v meta.Verdict, p parsed) {
	k := g.knownFor(ctx, v, p)
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.known[key(v.Repo, v.Digest)]; !ok {
		g.put(v.Repo, v.Digest, &k)
	}
}

// await runs the admission of d once, however many requests ask, and waits for it up to the hold.
func (g *Gate) await(ctx context.Context, repo string, d digest.Digest, p parsed, hold time.Duration) (known, error) {
	ch := g.flights.DoChan(key(repo, d), func() (any, error) {
		// not the request's context: the decision is worth finishing for whoever asks next
		// (the gate's own, which only a shutdown ends)
		g.runMu.Lock()
		if g.released {
			g.runMu.Unlock()
			return known{}, apierr.New(apierr.Unavailable, "manifest %s of %s is not admitted while this Gatehouse shuts down; retry in a few seconds", d, repo).
				WithHeader("Retry-After", "5")
		}
		g.running.Add(1)
		g.runMu.Unlock()
		defer g.running.Done()
		actx, cancel := context.WithTimeout(g.base, g.cfg.Timeout)
		defer cancel()
		g.metrics.admissions.Inc()
		start := time.Now()
		defer func() { g.metrics.admissionSeconds.Observe(time.Since(start).Seconds()) }()
		v, err := g.decide(actx, repo, d, p)
		if err != nil {
			g.log.Error("admission failed", "repo", repo, "digest", d, "err", err)
			return known{}, err
		}
		return g.learn(actx, v, p), nil
	})
	timer := time.NewTimer(hold)
	defer timer.Stop()
	select {
	case res := <-ch:
		if res.Err != nil {
			var e *apierr.Error
			if errors.As(res.Err, &e) {
				return known{}, e
			}
			return known{}, apierr.Unavailablef(res.Err, "manifest %s of %s could not be admitted: %v; nothing is served undecided, so retry once the cause is fixed", d, repo, res.Err)
		}
		return res.Val.(known), nil
	case <-timer.C:
		g.metrics.held.Inc()
		retry := int(g.cfg.Hold.Seconds() / 4)
		if retry < 1 {
			retry = 1
		}
		return known{}, apierr.New(apierr.Unavailable, "manifest %s of %s is under admission (being fetched, scanned and decided); retry in %d seconds", d, repo, retry).
			WithHeader("Retry-After", strconv.Itoa(retry)).
			WithDetail(map[string]string{"repository": repo, "digest": d.String(), "state": meta.Pending})
	case <-g.base.Done():
		return known{}, apierr.New(apierr.Unavailable, "manifest %s of %s is under admission and this Gatehouse is shutting down; retry in a few seconds", d, repo).
			WithHeader("Retry-After", "5").
			WithDetail(map[string]string{"repository": repo, "digest": d.String(), "state": meta.Pending})
	case <-ctx.Done():
		return known{}, ctx.Err()
	}
}

// decide admits an image through Admit; an index is judged by its children, each on its own.
func (g *Gate) decide(ctx context.Context, repo string, d digest.Digest, p parsed) (meta.Verdict, error) {
	if len(p.Manifests) == 0 {
		return g.admit(ctx, repo, d)
	}
	type child struct {
		desc v1.Descriptor
		v    meta.Verdict
	}
	dec := policies.Decision{Allow: true, Deny: []policies.Reason{}, Warn: []policies.Reason{}}
	if n := len(p.Manifests); n > g.cfg.MaxIndexChildren {
		dec.Allow = false
		dec.Deny = append(dec.Deny, policies.Reason{Rule: "index.children", Message: fmt.Sprintf("the index lists %d manifests; the limit is %d (admission.max_index_children)", n, g.cfg.MaxIndexChildren),
			Evidence: map[string]int{"children": n, "limit": g.cfg.MaxIndexChildren}})
		return g.recordIndex(ctx, repo, d, dec, "")
	}
	lazy := g.onPullRoute(repo)
	var children []*child
	for _, c := range p.Manifests {
		if !lazy && g.attestation(ctx, c) {
			continue // buildx attestations ride in indexes; they are referrers, not platforms
		}
		children = append(children, &child{desc: c})
	}
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(4)
	for _, c := range children {
		eg.Go(func() error {
			if lazy {
				// a pull route fetches and admits a child only when a client asks for it: the
				// index is refused only for children already known to be refused
				v, err := g.meta.VerdictGet(ectx, repo, c.desc.Digest)
				if errors.Is(err, meta.ErrNotFound) {
					v, err = meta.Verdict{State: meta.Pending}, nil
				}
				c.v = v
				return err
			}
			v, err := g.child(ectx, repo, c.desc.Digest)
			c.v = v
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		return meta.Verdict{}, err
	}
	for _, c := range children {
		if serves(c.v.State) || (lazy && c.v.State == meta.Pending) {
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
		dec.Deny = append(dec.Deny, policies.Reason{Rule: "index.child", Message: fmt.Sprintf("%s child %s is %s: %s", plat, c.desc.Digest, c.v.State, firstReasons(c.v, 1)),
			Evidence: map[string]string{"digest": c.desc.Digest.String(), "platform": plat, "state": c.v.State}})
	}
	why := "every platform child is admitted"
	if lazy {
		why = "no child is known to be refused; each child is fetched and admitted when it is asked for"
	}
	return g.recordIndex(ctx, repo, d, dec, why)
}

// recordIndex records the verdict on an index from its decision.
func (g *Gate) recordIndex(ctx context.Context, repo string, d digest.Digest, dec policies.Decision, why string) (meta.Verdict, error) {
	body, err := json.Marshal(dec)
	if err != nil {
		return meta.Verdict{}, err
	}
	v := meta.Verdict{Repo: repo, Digest: d, State: meta.Admitted, Decision: body, PolicyDigest: "index: judged by its children", Decided: time.Now().UTC()}
	if !dec.Allow {
		v.State, why = meta.Quarantined, dec.Deny[0].Message
	}
	if err := g.meta.VerdictSet(ctx, v, "gatehouse", why); err != nil {
		return meta.Verdict{}, err
	}
	return v, nil
}

// onPullRoute says whether repo is served by a pull route.
func (g *Gate) onPullRoute(repo string) bool {
	if g.cfg.Table == nil {
		return false
	}
	rt, err := g.cfg.Table.Resolve(repo, "")
	return err == nil && rt.Route.Kind == route.Pull
}

// attestation says whether an index child is an attestation, not a platform: buildx marks them
// (vnd.docker.reference.type), but only a child whose platform is unknown/unknown and whose
// layers are all in-toto or DSSE statements is one. Anything else is judged as an image.
func (g *Gate) attestation(ctx context.Context, c v1.Descriptor) bool {
	if c.Annotations["vnd.docker.reference.type"] != "attestation-manifest" {
		return false
	}
	if c.Platform == nil || c.Platform.OS != "unknown" || c.Platform.Architecture != "unknown" {
		return false
	}
	body, err := g.manifests.ManifestGet(ctx, c.Digest)
	if err != nil {
		return false // not at hand: judged as a child, which fails closed
	}
	m := parse(body)
	if len(m.Layers) == 0 || len(m.Manifests) > 0 {
		return false
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

// child returns the verdict on an index child, admitting it (once) if it is undecided.
func (g *Gate) child(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
	if v, err := g.meta.VerdictGet(ctx, repo, d); err == nil && v.State != meta.Pending {
		return v, nil
	}
	res, err, _ := g.flights.Do(key(repo, d)+"#child", func() (any, error) {
		v, err := g.admit(ctx, repo, d)
		if err != nil {
			return nil, err
		}
		g.Record(ctx, v)
		return v, nil
	})
	if err != nil {
		return meta.Verdict{}, err
	}
	return res.(meta.Verdict), nil
}

// refusal is the 403 for a verdict that does not serve: the digest, the state and the first
// reasons in the message; everything in the detail.
func refusal(v meta.Verdict) *apierr.Error {
	var dec policies.Decision
	_ = json.Unmarshal(v.Decision, &dec)
	msg := fmt.Sprintf("manifest %s of %s is %s by policy", v.Digest, v.Repo, v.State)
	if r := firstReasons(v, 3); r != "" {
		msg += ": " + r
	}
	return apierr.New(apierr.Denied, "%s", msg).WithStatus(http.StatusForbidden).WithDetail(map[string]any{
		"repository": v.Repo, "digest": v.Digest.String(), "state": v.State, "deny": dec.Deny, "warn": dec.Warn,
		"policy": v.PolicyDigest, "database": v.DBVersion, "decided": v.Decided.Format(time.RFC3339),
	})
}

func firstReasons(v meta.Verdict, n int) string {
	var dec policies.Decision
	if json.Unmarshal(v.Decision, &dec) != nil || len(dec.Deny) == 0 {
		return ""
	}
	var msgs []string
	for i, r := range dec.Deny {
		if i == n {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(dec.Deny)-n))
			break
		}
		msgs = append(msgs, r.Message)
	}
	return strings.Join(msgs, "; ")
}

// parsed is what the gate needs of a manifest.
type parsed struct {
	Config    *v1.Descriptor  `json:"config"`
	Layers    []v1.Descriptor `json:"layers"`
	Manifests []v1.Descriptor `json:"manifests"`
	Subject   *v1.Descriptor  `json:"subject"`
}

func parse(body []byte) parsed {
	var p parsed
	_ = json.Unmarshal(body, &p) // stored manifests were validated when they entered
	return p
}

// metadata says whether a manifest is metadata about another (a signature, an SBOM, an
// attestation): it has a subject and no layer a runtime would unpack. Anything runnable is an
// image, whatever else it says about itself.
func (p parsed) metadata() bool {
	if p.Subject == nil || len(p.Manifests) > 0 {
		return false
	}
	for _, l := range p.Layers {
		if manifest.Runnable(l.MediaType) {
			return false
		}
	}
	return true
}

func (p parsed) blobs() []digest.Digest {
	var out []digest.Digest
	if p.Config != nil && p.Config.Digest != "" {
		out = append(out, p.Config.Digest)
	}
	for _, l := range p.Layers {
		out = append(out, l.Digest)
	}
	return out
}
