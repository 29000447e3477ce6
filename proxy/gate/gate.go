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
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Admitter is the one thing the gate asks of admission (proxy/admission.Pipeline): the verdict
// on a manifest of a route's repository, admitting it if it has none that stands.
type Admitter interface {
	Admit(ctx context.Context, rt route.Resolved, d digest.Digest) (meta.Verdict, error)
}

// Metadata is what the gate reads of the metadata store (it writes only fallback tags).
type Metadata interface {
	VerdictGet(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)
	VerdictsServed(ctx context.Context, repo string) ([]meta.Verdict, error)
	AdmittedTagSet(ctx context.Context, repo, tag string, d digest.Digest) error
	AdmittedTagGet(ctx context.Context, repo, tag string) (digest.Digest, error)
	// ScanGet returns an image's stored scan: the gate serves only the blobs it read.
	ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error)
}

// Manifests reads stored manifest bytes (to learn an index's children and an image's blobs).
type Manifests interface {
	ManifestGet(ctx context.Context, d digest.Digest) ([]byte, error)
}

// Config configures a Gate. Each route's mode and tag fallback are on the route itself
// (route.Admission).
type Config struct {
	Hold    time.Duration // how long a request waits for an admission before 503 (default 60s)
	Timeout time.Duration // how long one admission may run in all (default 15m)
	// RevokeGrace keeps serving a digest this long after a later verdict refuses it (a new
	// advisory, a policy change), so teams can roll forward first (0: refuse at once).
	RevokeGrace time.Duration
	// Background bounds the admissions Submit runs at once (default 1024); past it an image is
	// admitted when it is next asked for.
	Background int
}

// Gate is the admission gate. It is safe for concurrent use.
type Gate struct {
	cfg       Config
	meta      Metadata
	manifests Manifests
	admitter  Admitter
	log       *slog.Logger
	metrics   *metrics

	mu      sync.RWMutex
	known   map[string]known         // repo@digest: the verdict as served
	blobs   map[string]int           // repo@blob: how many admitted manifests of repo reference it (and their scans read it)
	anyBlob map[digest.Digest]int    // blob: how many admitted manifests of any repository do
	tags    map[string]digest.Digest // repo:tag -> the digest it last served admitted (fallback routes)
	repos   map[string]bool          // repositories whose stored served verdicts have been learned

	flights    singleflight.Group
	background chan struct{} // one per admission Submit runs
	submitted  sync.Map      // repo@digest: Submit has an admission of it under way

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
	state    meta.State
	metadata bool            // a referrer: served as metadata, whatever its verdict
	refusal  *apierr.Error   // nil when it is served
	refs     []digest.Digest // blobs counted in Gate.blobs
	children []digest.Digest // a served index's children: one refused later sends it back to admission
}

// New returns a gate. reg may be nil.
func New(cfg Config, md Metadata, manifests Manifests, a Admitter, log *slog.Logger, reg prometheus.Registerer) (*Gate, error) {
	if cfg.Hold <= 0 {
		cfg.Hold = 60 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 15 * time.Minute
	}
	if cfg.Background <= 0 {
		cfg.Background = 1024
	}
	if log == nil {
		log = slog.Default()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	base, stop := context.WithCancel(context.Background())
	return &Gate{cfg: cfg, meta: md, manifests: manifests, admitter: a, log: log, metrics: m, base: base, stop: stop, background: make(chan struct{}, cfg.Background),
		known: map[string]known{}, blobs: map[string]int{}, anyBlob: map[digest.Digest]int{}, tags: map[string]digest.Digest{}, repos: map[string]bool{}}, nil
}

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

// Manifest returns nil when manifest d of the route's repository (whose bytes are body) may be
// served, and the refusal otherwise: 403 DENIED with the reasons, or 503 with Retry-After while
// it is under admission. The first request for a digest with no verdict starts its admission.
func (g *Gate) Manifest(ctx context.Context, rt route.Resolved, d digest.Digest, body []byte) error {
	return g.ManifestWithin(ctx, rt, d, body, g.cfg.Hold)
}

// ManifestWithin is Manifest with its own hold (0: answer at once; the admission goes on).
func (g *Gate) ManifestWithin(ctx context.Context, rt route.Resolved, d digest.Digest, body []byte, hold time.Duration) error {
	repo := rt.Name
	g.mu.RLock()
	k, ok := g.known[key(repo, d)]
	g.mu.RUnlock()
	if ok {
		return g.refused("manifest", k.refusal)
	}
	m, _ := manifest.Read(body) // stored manifests were checked when they entered
	if m.Metadata() {
		// A referrer (signature, SBOM, attestation) is metadata about its subject: its manifest is
		// served, but it never makes the subject pullable and its blobs stay gated.
		g.referrer(repo, d)
		return nil
	}
	v, err := g.meta.VerdictGet(ctx, repo, d)
	switch {
	case err == nil && g.stands(ctx, rt, v):
		return g.refused("manifest", g.learn(ctx, rt, v, m).refusal)
	case err != nil && !errors.Is(err, meta.ErrNotFound):
		return apierr.Unavailablef(err, "the metadata store did not answer while looking up the verdict on %s; nothing is served without a verdict", d)
	}
	k, err = g.await(ctx, rt, d, m, hold)
	if err != nil {
		return err
	}
	return g.refused("manifest", k.refusal)
}

// stands says whether a stored verdict may be served as it is, the first time this process meets
// it: a refusal may (it serves nothing); a serving verdict only while it still stands on its
// route (route.Admission.Stands: the policy and the scan's match it was reached on are current;
// an index's never does). Anything else is admitted again first, so a verdict left behind by a
// crash, a failed re-admission or a restart under a new policy is never served.
func (g *Gate) stands(ctx context.Context, rt route.Resolved, v meta.Verdict) bool {
	if v.State == meta.Pending {
		return false
	}
	if !v.State.Serves() || v.State.Reviewed() {
		return true
	}
	if rt.Route == nil || v.PolicyDigest == meta.IndexPolicy {
		return false
	}
	sc, err := g.meta.ScanGet(ctx, v.Digest)
	return err == nil && rt.Route.Admission.Stands(v, sc.DBVersion)
}

// Submit admits an image in the background, once: the API calls it for every manifest pushed or
// served on a route that does not enforce (audit), so verdicts are recorded there too. At most
// Config.Background run at once; past that the image is admitted when it is next asked for.
// Artifacts (signatures, SBOMs, indexes) are not admitted.
func (g *Gate) Submit(rt route.Resolved, d digest.Digest, mediaType string) {
	if !manifest.IsImage(mediaType) {
		return
	}
	k := key(rt.Name, d)
	g.mu.RLock()
	_, ok := g.known[k]
	g.mu.RUnlock()
	if ok {
		return // admitted already
	}
	if _, running := g.submitted.LoadOrStore(k, true); running {
		return
	}
	select {
	case g.background <- struct{}{}:
	default:
		g.submitted.Delete(k)
		g.log.Warn("too many background admissions; the image is admitted when it is next asked for", "repo", rt.Name, "digest", d)
		return
	}
	go func() {
		defer func() { <-g.background; g.submitted.Delete(k) }()
		body, err := g.manifests.ManifestGet(g.base, d)
		if err != nil {
			return // gone already: nothing to admit
		}
		if m, err := manifest.Read(body); err != nil || !m.Image() || m.Metadata() {
			g.referrer(rt.Name, d) // an artifact: nothing to admit, and nothing to ask again
			return
		}
		_ = g.Reconsider(g.base, rt, d) // run logs a failure
	}()
}

// Reconsider admits manifest d of the route's repository again (its evidence or the policy may
// have changed) and serves what that answers from then on.
func (g *Gate) Reconsider(ctx context.Context, rt route.Resolved, d digest.Digest) error {
	body, err := g.manifests.ManifestGet(ctx, d)
	if err != nil {
		g.forget(rt.Name, d) // the next request reads what is stored again
		return err
	}
	m, _ := manifest.Read(body)
	if m.Metadata() {
		g.referrer(rt.Name, d)
		return nil
	}
	_, err, shared := g.flights.Do(key(rt.Name, d), func() (any, error) { return g.run(rt, d, m) })
	if shared {
		// it joined an admission that began before whatever changed: admit once more, after it
		_, err, _ = g.flights.Do(key(rt.Name, d), func() (any, error) { return g.run(rt, d, m) })
	}
	return err
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
func (g *Gate) Blob(ctx context.Context, rt route.Resolved, d digest.Digest) error {
	repo := rt.Name
	g.mu.RLock()
	n, loaded := g.blobs[key(repo, d)], g.repos[repo]
	g.mu.RUnlock()
	if n > 0 {
		return nil
	}
	if !loaded {
		// the first blob request for this repository since start: learn what its stored
		// admitted manifests reference (a client may ask for a blob before its manifest)
		if _, err, _ := g.flights.Do("repo\x00"+repo, func() (any, error) { return nil, g.loadRepo(ctx, rt) }); err != nil {
			return apierr.Unavailablef(err, "could not read the admitted images of %s to answer for blob %s; nothing is served without a verdict", repo, d)
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
func (g *Gate) loadRepo(ctx context.Context, rt route.Resolved) error {
	repo := rt.Name
	vs, err := g.meta.VerdictsServed(ctx, repo)
	if err != nil {
		return err
	}
	for _, v := range vs {
		g.mu.RLock()
		_, ok := g.known[key(repo, v.Digest)]
		g.mu.RUnlock()
		if ok || !g.stands(ctx, rt, v) {
			continue // learned already (perhaps more recently than this listing), or admitted again when its manifest is asked for
		}
		body, err := g.manifests.ManifestGet(ctx, v.Digest)
		if err != nil {
			return fmt.Errorf("manifest %s: %w", v.Digest, err)
		}
		m, _ := manifest.Read(body)
		g.learnUnlessKnown(ctx, v, m)
	}
	g.mu.Lock()
	g.repos[repo] = true
	g.mu.Unlock()
	return nil
}

// referrer remembers that a manifest is a referrer: served as metadata, its blobs not counted.
func (g *Gate) referrer(repo string, d digest.Digest) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.put(repo, d, &known{metadata: true})
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

// knownFor is what the gate keeps of a final verdict: the blobs it makes servable, or its refusal.
// A serving verdict makes servable only the blobs that the image's scan read: a layer the scan
// did not read (whatever the reason) is never served on the strength of the image's verdict.
func (g *Gate) knownFor(ctx context.Context, v meta.Verdict, m manifest.Stored) known {
	if !v.State.Serves() {
		return known{state: v.State, refusal: refusal(v)}
	}
	k := known{state: v.State}
	for _, c := range m.Manifests {
		k.children = append(k.children, c.Digest)
	}
	want := m.Blobs()
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

// learn remembers a final verdict and the blobs it makes servable. A refused image sends the
// served indexes that list it back to admission, so they are judged again with it.
func (g *Gate) learn(ctx context.Context, rt route.Resolved, v meta.Verdict, m manifest.Stored) known {
	return g.learnOnce(ctx, rt, v, m, true)
}

// learnOnce is learn; recheck says whether a served index whose children include one known
// refused is judged again (once: an index may rightly be served with a refused child it does not
// count, such as a buildx attestation).
func (g *Gate) learnOnce(ctx context.Context, rt route.Resolved, v meta.Verdict, m manifest.Stored, recheck bool) known {
	k := g.knownFor(ctx, v, m)
	g.mu.Lock()
	if old, had := g.put(v.Repo, v.Digest, &k); had && old.state.Serves() && !v.State.Serves() {
		g.log.Warn("a served digest is now refused", "repo", v.Repo, "digest", v.Digest, "verdict", v.State, "reason", policies.ReasonsOf(v.Decision, 1))
	}
	var indexes, refusedChildren []digest.Digest
	if !v.State.Serves() {
		indexes = g.servedIndexesOf(v.Repo, v.Digest)
	}
	for _, c := range k.children {
		if ck, ok := g.known[key(v.Repo, c)]; recheck && ok && !ck.metadata && !ck.state.Serves() {
			refusedChildren = append(refusedChildren, c)
		}
	}
	g.mu.Unlock()
	if len(refusedChildren) > 0 && g.childRefused(ctx, v.Repo, refusedChildren) {
		// the index was judged while a child's refusal was being recorded: it is judged again,
		// with it, before it is served (within its own admission, so not through its flight)
		nv, err := g.admitter.Admit(ctx, rt, v.Digest)
		if err != nil {
			g.log.Warn("could not judge an index again after a child was refused; it is judged when next asked for", "repo", v.Repo, "index", v.Digest, "err", err)
			g.forget(v.Repo, v.Digest)
			return known{state: meta.Pending, refusal: apierr.Unavailablef(err, "index %s of %s is judged again after a child was refused; retry in a few seconds", v.Digest, v.Repo)}
		}
		return g.learnOnce(ctx, rt, nv, m, false)
	}
	for _, idx := range indexes {
		// the index was served while this child was not known refused: it is judged again (with
		// this child) before it is served again
		if err := g.Reconsider(ctx, rt, idx); err != nil {
			g.log.Warn("could not judge an index again after a child was refused; it is judged when next asked for", "repo", v.Repo, "index", idx, "err", err)
			g.forget(v.Repo, idx)
		}
	}
	return k
}

// childRefused says whether the store, too, holds a refusal of any of these children (the
// gate's memory alone may be behind it, or ahead of it).
func (g *Gate) childRefused(ctx context.Context, repo string, children []digest.Digest) bool {
	for _, c := range children {
		if cv, err := g.meta.VerdictGet(ctx, repo, c); err == nil && cv.State != meta.Pending && !cv.State.Serves() {
			return true
		}
	}
	return false
}

// servedIndexesOf lists the indexes of repo being served that list child. g.mu must be held.
func (g *Gate) servedIndexesOf(repo string, child digest.Digest) []digest.Digest {
	var out []digest.Digest
	prefix := repo + "@"
	for mk, k := range g.known {
		if !strings.HasPrefix(mk, prefix) || !k.state.Serves() {
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

// learnUnlessKnown learns a listed verdict unless a newer one arrived meanwhile.
func (g *Gate) learnUnlessKnown(ctx context.Context, v meta.Verdict, m manifest.Stored) {
	k := g.knownFor(ctx, v, m)
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.known[key(v.Repo, v.Digest)]; !ok {
		g.put(v.Repo, v.Digest, &k)
	}
}

// await runs the admission of d once, however many requests ask, and waits for it up to the hold.
func (g *Gate) await(ctx context.Context, rt route.Resolved, d digest.Digest, m manifest.Stored, hold time.Duration) (known, error) {
	repo := rt.Name
	ch := g.flights.DoChan(key(repo, d), func() (any, error) { return g.run(rt, d, m) })
	timer := time.NewTimer(hold)
	defer timer.Stop()
	select {
	case res := <-ch:
		if res.Err != nil {
			var e *apierr.Error
			if errors.As(res.Err, &e) {
				return known{}, e
			}
			return known{}, apierr.Unavailablef(res.Err, "manifest %s of %s could not be admitted: %v; nothing is served without a verdict, so retry once the cause is fixed", d, repo, res.Err)
		}
		return res.Val.(known), nil
	case <-timer.C:
		g.metrics.held.Inc()
		retry := int(g.cfg.Hold.Seconds() / 4) // the hold a client waits on its next try
		if retry < 1 {
			retry = 1
		}
		return known{}, apierr.New(apierr.Unavailable, "manifest %s of %s is under admission (being fetched, scanned and evaluated); retry in %d seconds", d, repo, retry).
			WithHeader("Retry-After", strconv.Itoa(retry)).
			WithDetail(map[string]string{"repository": repo, "digest": d.String(), "state": string(meta.Pending)})
	case <-g.base.Done():
		return known{}, apierr.New(apierr.Unavailable, "manifest %s of %s is under admission and this Gatehouse is shutting down; retry in a few seconds", d, repo).
			WithHeader("Retry-After", "5").
			WithDetail(map[string]string{"repository": repo, "digest": d.String(), "state": string(meta.Pending)})
	case <-ctx.Done():
		return known{}, ctx.Err()
	}
}

// run is one admission, under the gate's own context (not a request's: the verdict is worth
// finishing for whoever asks next; only a shutdown ends it), and what the gate learns of it.
func (g *Gate) run(rt route.Resolved, d digest.Digest, m manifest.Stored) (known, error) {
	repo := rt.Name
	g.runMu.Lock()
	if g.released {
		g.runMu.Unlock()
		return known{}, apierr.New(apierr.Unavailable, "manifest %s of %s is not admitted while this Gatehouse shuts down; retry in a few seconds", d, repo).
			WithHeader("Retry-After", "5")
	}
	g.running.Add(1)
	g.runMu.Unlock()
	defer g.running.Done()
	ctx, cancel := context.WithTimeout(g.base, g.cfg.Timeout)
	defer cancel()
	g.metrics.admissions.Inc()
	start := time.Now()
	defer func() { g.metrics.admissionSeconds.Observe(time.Since(start).Seconds()) }()
	v, err := g.admitter.Admit(ctx, rt, d)
	if err == nil && v.State == meta.Pending {
		err = fmt.Errorf("admission left it pending")
	}
	if err != nil {
		g.log.Error("admission failed", "repo", repo, "digest", d, "err", err)
		g.forget(repo, d) // the next request asks again
		return known{}, err
	}
	return g.settle(ctx, rt, v, m), nil
}

// settle has what the gate serves follow a verdict. A served digest that a later verdict refuses
// is served on for the revoke grace, if one is set, then refused if its stored verdict still
// says so.
func (g *Gate) settle(ctx context.Context, rt route.Resolved, v meta.Verdict, m manifest.Stored) known {
	if g.cfg.RevokeGrace > 0 && !v.State.Serves() {
		g.mu.RLock()
		old, ok := g.known[key(v.Repo, v.Digest)]
		g.mu.RUnlock()
		if ok && old.state.Serves() {
			g.log.Warn("a served digest is refused by a later verdict; it is served until the grace period ends", "repo", v.Repo, "digest", v.Digest,
				"verdict", v.State, "grace", g.cfg.RevokeGrace, "reason", policies.ReasonsOf(v.Decision, 1))
			time.AfterFunc(g.cfg.RevokeGrace, func() {
				// whatever the stored verdict is by then (it may have been re-admitted meanwhile)
				ctx, cancel := context.WithTimeout(g.base, time.Minute)
				defer cancel()
				cur, err := g.meta.VerdictGet(ctx, v.Repo, v.Digest)
				if err != nil {
					g.forget(v.Repo, v.Digest) // the next request asks the store again
					return
				}
				if !cur.State.Serves() {
					g.learn(ctx, rt, cur, m)
				}
			})
			return old
		}
	}
	return g.learn(ctx, rt, v, m)
}

// refusal is the 403 for a verdict that does not serve: the digest, the state and the first
// reasons in the message; everything in the detail.
func refusal(v meta.Verdict) *apierr.Error {
	var dec policies.Decision
	_ = json.Unmarshal(v.Decision, &dec)
	msg := fmt.Sprintf("manifest %s of %s is %s by policy", v.Digest, v.Repo, v.State)
	if r := dec.Reasons(3); r != "" {
		msg += ": " + r
	}
	return apierr.New(apierr.Denied, "%s", msg).WithStatus(http.StatusForbidden).WithDetail(map[string]any{
		"repository": v.Repo, "digest": v.Digest.String(), "state": v.State, "deny": dec.Deny, "warn": dec.Warn,
		"policy": v.PolicyDigest, "database": v.DBVersion, "decided": v.Decided.Format(time.RFC3339),
	})
}
