package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/singleflight"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/proxy/upstream"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Upstream is what the fill needs of an upstream registry (*upstream.Client).
type Upstream interface {
	URL() string
	ManifestHead(ctx context.Context, repo, ref string) (v1.Descriptor, error)
	ManifestGet(ctx context.Context, repo, ref string) (upstream.Manifest, error)
	BlobGet(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error)
	BlobHead(ctx context.Context, repo string, d digest.Digest) (int64, error)
	Referrers(ctx context.Context, repo string, d digest.Digest) ([]v1.Descriptor, error)
	TagList(ctx context.Context, repo string, n int, last string) ([]string, bool, error)
}

var _ Upstream = (*upstream.Client)(nil)

// Metadata is what the fill records.
type Metadata interface {
	RepositoryPut(ctx context.Context, repo string) error
	ManifestGet(ctx context.Context, repo string, d digest.Digest) (meta.Manifest, error)
	ManifestPut(ctx context.Context, m meta.Manifest, tags ...string) error
	TagInfo(ctx context.Context, repo, tag string) (meta.Tag, error)
	TagTouch(ctx context.Context, repo, tag string, d digest.Digest, at time.Time) error
	TagDelete(ctx context.Context, repo, tag string) error
	TagList(ctx context.Context, repo string, p meta.Page) ([]string, bool, error)
}

// Puller fills the store from the upstreams of pull routes.
type Puller struct {
	content   *content.Store
	meta      Metadata
	upstreams map[string]Upstream // by route prefix
	opts      options
	flights   singleflight.Group // manifests and tag revalidations
	blobs     blobFlights
	bg        sync.WaitGroup // background work: companion fetches, blob commits
	// declared holds the sizes the image manifests fetched lately declare for their blobs, by
	// repository@digest: a client asks for a blob by digest alone, and its fill is held to them.
	declared *lru.Cache[string, int64]
}

type options struct {
	log              *slog.Logger
	algorithms       []digest.Algorithm
	metrics          *Metrics
	companionTimeout time.Duration
	maxCompanionBlob int64
	maxReferrers     int                       // referrers fetched per manifest
	companionBytes   int64                     // blob bytes fetched for one manifest's companions in all
	companionBlobs   int                       // blobs fetched for one manifest's companions in all
	maxBlobSize      int64                     // a blob of unknown size is read no further than this (0: no bound)
	limits           map[string]UpstreamLimits // by route prefix
	now              func() time.Time
}

// Option configures a Puller.
type Option func(*options)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithDigestAlgorithms sets the digest algorithms accepted in fetched manifests.
func WithDigestAlgorithms(a ...digest.Algorithm) Option {
	return func(o *options) { o.algorithms = a }
}

// WithMetrics records cache and upstream metrics.
func WithMetrics(m *Metrics) Option { return func(o *options) { o.metrics = m } }

// WithCompanionLimits bounds the fetch of signatures, attestations and SBOMs: the time for all
// of one manifest's, the size of any one blob of them, how many referrers are fetched, and the
// blob bytes of them all (an upstream that attaches hundreds of large artifacts to an image
// must not turn one pull into gigabytes of storage).
func WithCompanionLimits(timeout time.Duration, maxBlob int64, maxReferrers int, maxBytes int64) Option {
	return func(o *options) {
		o.companionTimeout, o.maxCompanionBlob, o.maxReferrers, o.companionBytes = timeout, maxBlob, maxReferrers, maxBytes
	}
}

// WithMaxBlobSize refuses a blob larger than n bytes from any upstream (limits.blob_size; 0:
// no limit), and bounds the read of one whose size neither a descriptor nor the upstream says.
func WithMaxBlobSize(n int64) Option { return func(o *options) { o.maxBlobSize = n } }

// WithUpstreamLimits bounds what the upstream of the pull route with this prefix may send
// (absent: DefaultUpstreamLimits).
func WithUpstreamLimits(prefix string, l UpstreamLimits) Option {
	return func(o *options) { o.limits[prefix] = l }
}

// New returns a Puller over the store and the upstream of each pull route.
func New(c *content.Store, md Metadata, upstreams map[string]Upstream, opts ...Option) *Puller {
	o := options{
		log:              slog.Default(),
		algorithms:       []digest.Algorithm{digest.SHA256, digest.SHA512},
		companionTimeout: 30 * time.Second,
		maxCompanionBlob: 64 << 20,
		maxReferrers:     32,
		companionBytes:   64 << 20,
		companionBlobs:   128,
		limits:           map[string]UpstreamLimits{},
		now:              time.Now,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.metrics == nil {
		o.metrics = NewMetrics(nil)
	}
	declared, _ := lru.New[string, int64](1 << 14)
	return &Puller{content: c, meta: md, upstreams: upstreams, opts: o, blobs: blobFlights{m: map[string]*blobFlight{}}, declared: declared}
}

// limits are the bounds of rt's upstream.
func (p *Puller) limits(rt route.Resolved) UpstreamLimits {
	if l, ok := p.opts.limits[rt.Route.Prefix]; ok {
		return l
	}
	return DefaultUpstreamLimits
}

func (p *Puller) upstream(rt route.Resolved) (Upstream, error) {
	up, ok := p.upstreams[rt.Route.Prefix]
	if !ok {
		return nil, apierr.New(apierr.Unavailable, "route %q has no upstream client", rt.Route.Prefix)
	}
	return up, nil
}

// detach keeps work going when the client that started it leaves: other clients may be waiting
// for the same fetch, and a finished fetch is worth keeping.
func detach(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), d)
}

// upstreamError turns an upstream failure into what the client is told.
func upstreamError(up Upstream, what string, err error) error {
	e, ok := upstream.AsError(err)
	if !ok {
		var ae *apierr.Error
		if errors.As(err, &ae) {
			return err
		}
		return apierr.Unavailablef(err, "fetching %s from %s failed: %v", what, up.URL(), err)
	}
	switch {
	case e.NotFound():
		code := apierr.ManifestUnknown
		if strings.HasPrefix(what, "blob") {
			code = apierr.BlobUnknown
		}
		return apierr.New(code, "%s is not in the upstream %s (%s)", what, up.URL(), e.Message)
	case e.Status == http.StatusTooManyRequests:
		secs := int(e.RetryAfter.Round(time.Second).Seconds())
		return apierr.New(apierr.TooManyRequests, "the upstream %s is rate limiting Gatehouse (retry after %ds) and %s is not cached", up.URL(), secs, what).
			WithHeader("Retry-After", strconv.Itoa(max(secs, 1))).WithCause(err)
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden:
		return apierr.New(apierr.Denied, "the upstream %s refused %s (%d %s): the repository may not exist, or the route's credentials lack access", up.URL(), what, e.Status, e.Message).WithCause(err)
	case e.Temporary():
		return apierr.Unavailablef(err, "the upstream %s cannot serve %s now (%v) and it is not cached", up.URL(), what, e)
	}
	return apierr.Unavailablef(err, "the upstream %s failed on %s: %v", up.URL(), what, e).WithStatus(http.StatusBadGateway)
}

// Manifest makes sure manifest d of a pull route is in the store, fetching it once if not.
func (p *Puller) Manifest(ctx context.Context, rt route.Resolved, d digest.Digest) error {
	if _, err := p.meta.ManifestGet(ctx, rt.Name, d); err == nil {
		p.opts.metrics.cache(rt, "manifest", "hit")
		return nil
	}
	p.opts.metrics.cache(rt, "manifest", "miss")
	up, err := p.upstream(rt)
	if err != nil {
		return err
	}
	return p.ensure(ctx, rt, up, d, true)
}

// ensure fetches manifest d into the store unless it is there; companions: also fetch the
// signatures, attestations and SBOMs the upstream holds for it.
func (p *Puller) ensure(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest, companions bool) error {
	_, err, _ := p.flights.Do("m\x00"+rt.Name+"\x00"+d.String(), func() (any, error) {
		if _, err := p.meta.ManifestGet(ctx, rt.Name, d); err == nil {
			return nil, nil
		}
		fctx, cancel := detach(ctx, 2*time.Minute)
		defer cancel()
		m, err := up.ManifestGet(fctx, rt.Remote, d.String())
		if err != nil {
			return nil, upstreamError(up, "manifest "+d.String()+" of "+rt.Remote, err)
		}
		if err := p.store(fctx, rt, d, m); err != nil {
			return nil, err
		}
		if companions {
			p.companionsLater(ctx, rt, up, d)
		}
		return nil, nil
	})
	return err
}

// store checks a fetched manifest and records it.
func (p *Puller) store(ctx context.Context, rt route.Resolved, d digest.Digest, m upstream.Manifest, tags ...string) error {
	parsed, err := manifest.Parse(m.MediaType, m.Body, p.opts.algorithms)
	if err != nil {
		return apierr.New(apierr.Unavailable, "the upstream served manifest %s of %s that Gatehouse refuses: %s", d, rt.Remote, apierr.From(err).Message).WithStatus(http.StatusBadGateway)
	}
	if manifest.IsImage(parsed.MediaType) {
		// every layer is one upstream request (a scan reads them all): bound them before any
		if n, most := layerCount(m.Body), p.limits(rt).MaxLayers; n > most {
			p.opts.log.Warn("manifest from upstream refused: too many layers", "repo", rt.Name, "digest", d, "layers", n, "max", most)
			return apierr.New(apierr.Unavailable, "the upstream served manifest %s of %s listing %d layers; Gatehouse accepts at most %d (the route's upstream.max_layers) and fetched none of them", d, rt.Remote, n, most).WithStatus(http.StatusBadGateway)
		}
		for _, b := range parsed.Blobs {
			p.declared.Add(rt.Name+"@"+b.Digest.String(), b.Size)
		}
	}
	if err := p.content.ManifestPut(ctx, d, m.Body); err != nil {
		return apierr.Unavailablef(err, "storage did not accept manifest %s", d)
	}
	rec := meta.Manifest{Repo: rt.Name, Digest: d, MediaType: parsed.MediaType, Size: int64(len(m.Body)),
		ArtifactType: parsed.ArtifactType, Annotations: parsed.Annotations, Created: p.opts.now().UTC()}
	if parsed.Subject != nil {
		rec.Subject = parsed.Subject.Digest
	}
	if err := p.meta.ManifestPut(ctx, rec, tags...); err != nil {
		return apierr.Unavailablef(err, "the metadata store did not record manifest %s", d)
	}
	return nil
}

// layerCount is how many layers an image manifest lists (nondistributable ones included: a scan
// reads those too).
func layerCount(body []byte) int {
	m, _ := manifest.Read(body) // Parse has accepted it
	return len(m.Layers)
}

// Tag resolves a tag of a pull route to a digest whose manifest is in the store. stale is
// non-empty when the cached digest is served because the upstream cannot answer; it says why.
func (p *Puller) Tag(ctx context.Context, rt route.Resolved, tag string) (d digest.Digest, stale string, err error) {
	info, err := p.meta.TagInfo(ctx, rt.Name, tag)
	cached := err == nil
	if err != nil && !errors.Is(err, meta.ErrNotFound) {
		return "", "", apierr.Unavailablef(err, "the metadata store did not answer for tag %q", tag)
	}
	if cached && p.opts.now().Sub(info.Checked) < rt.Route.TagTTL {
		p.opts.metrics.cache(rt, "tag", "hit")
		return info.Digest, "", nil
	}
	up, err := p.upstream(rt)
	if err != nil {
		return "", "", err
	}
	type result struct {
		d     digest.Digest
		stale string
	}
	v, err, _ := p.flights.Do("t\x00"+rt.Name+"\x00"+tag, func() (any, error) {
		d, stale, err := p.revalidate(ctx, rt, up, tag, info, cached)
		return result{d, stale}, err
	})
	if err != nil {
		return "", "", err
	}
	r := v.(result)
	switch {
	case r.stale != "":
		p.opts.metrics.cache(rt, "tag", "stale")
	case cached:
		p.opts.metrics.cache(rt, "tag", "revalidated")
	default:
		p.opts.metrics.cache(rt, "tag", "miss")
	}
	return r.d, r.stale, nil
}

func (p *Puller) revalidate(ctx context.Context, rt route.Resolved, up Upstream, tag string, info meta.Tag, cached bool) (digest.Digest, string, error) {
	ctx, cancel := detach(ctx, 2*time.Minute)
	defer cancel()
	what := fmt.Sprintf("tag %q of %s", tag, rt.Remote)
	staleOr := func(err error) (digest.Digest, string, error) {
		e, ok := upstream.AsError(err)
		age := p.opts.now().Sub(info.Checked)
		if cached && (!ok || e.Temporary()) && age <= rt.Route.MaxStale {
			reason := "upstream unreachable"
			if ok && e.Status != 0 {
				reason = fmt.Sprintf("upstream answered %d %s", e.Status, http.StatusText(e.Status))
			}
			p.opts.log.Warn("serving a cached tag while its upstream cannot answer", "repo", rt.Name, "tag", tag, "digest", info.Digest, "age", age.Round(time.Second), "reason", reason)
			return info.Digest, fmt.Sprintf("%s; tag last confirmed %s ago", reason, age.Round(time.Second)), nil
		}
		return "", "", upstreamError(up, what, err)
	}
	desc, err := up.ManifestHead(ctx, rt.Remote, tag)
	if err != nil {
		if e, ok := upstream.AsError(err); ok && e.NotFound() {
			if cached {
				// the upstream removed the tag: stop serving it
				if derr := p.meta.TagDelete(ctx, rt.Name, tag); derr != nil && !errors.Is(derr, meta.ErrNotFound) {
					p.opts.log.Error("could not drop a tag the upstream removed", "repo", rt.Name, "tag", tag, "err", derr)
				}
			}
			return "", "", upstreamError(up, what, err)
		}
		return staleOr(err)
	}
	if cached && desc.Digest == info.Digest {
		if err := p.meta.TagTouch(ctx, rt.Name, tag, info.Digest, p.opts.now()); err != nil && !errors.Is(err, meta.ErrNotFound) {
			return "", "", apierr.Unavailablef(err, "the metadata store did not record the revalidation of %s", what)
		}
		return info.Digest, "", nil
	}
	if desc.Digest == "" { // an upstream that does not say: fetch by tag and trust the body's hash
		m, err := up.ManifestGet(ctx, rt.Remote, tag)
		if err != nil {
			return staleOr(err)
		}
		if err := p.store(ctx, rt, m.Digest, m, tag); err != nil {
			return "", "", err
		}
		p.companionsLater(ctx, rt, up, m.Digest)
		return m.Digest, "", nil
	}
	if err := p.ensure(ctx, rt, up, desc.Digest, true); err != nil {
		// an upstream that failed; not one whose manifest was refused (no cause: said as it is)
		if ae := apierr.From(err); (ae.Code == apierr.Unavailable || ae.Code == apierr.TooManyRequests) && ae.Err != nil {
			return staleOr(ae.Err)
		}
		return "", "", err
	}
	rec, err := p.meta.ManifestGet(ctx, rt.Name, desc.Digest)
	if err == nil {
		err = p.meta.ManifestPut(ctx, rec, tag)
	}
	if err != nil {
		return "", "", apierr.Unavailablef(err, "the metadata store did not record %s", what)
	}
	return desc.Digest, "", nil
}

// Tags lists a pull route repository's tags from the upstream, or from the cache (stale says
// why) while the upstream cannot answer.
func (p *Puller) Tags(ctx context.Context, rt route.Resolved, pg meta.Page) (tags []string, more bool, stale string, err error) {
	up, err := p.upstream(rt)
	if err != nil {
		return nil, false, "", err
	}
	tags, more, err = up.TagList(ctx, rt.Remote, pg.N, pg.Last)
	if err == nil {
		return tags, more, "", nil
	}
	if e, ok := upstream.AsError(err); ok && !e.Temporary() {
		return nil, false, "", upstreamError(up, "the tag list of "+rt.Remote, err)
	}
	tags, more, lerr := p.meta.TagList(ctx, rt.Name, pg)
	if lerr != nil {
		return nil, false, "", apierr.Unavailablef(lerr, "the metadata store did not list tags")
	}
	return tags, more, "upstream cannot answer (" + err.Error() + "); listing the tags cached here", nil
}

// companionsLater fetches manifest d's companions in the background: the client that asked for
// the manifest does not wait for them.
func (p *Puller) companionsLater(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest) {
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		ctx, cancel := detach(ctx, p.opts.companionTimeout)
		defer cancel()
		p.companions(ctx, rt, up, d)
	}()
}

// Close waits (up to timeout) for background work (companion fetches, blob commits) to finish.
func (p *Puller) Close(timeout time.Duration) {
	done := make(chan struct{})
	go func() { p.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

// companions fetches what the upstream holds about manifest d: cosign's signature, attestation
// and SBOM tags, and OCI referrers, with their blobs. Failures are logged, never fatal: the
// image itself was fetched.
func (p *Puller) companions(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.companionTimeout)
	defer cancel()
	base := d.Algorithm().String() + "-" + d.Encoded()
	budget := &companionBudget{} // blob bytes and blobs these companions may still fetch
	budget.bytes.Store(p.opts.companionBytes)
	budget.blobs.Store(int64(p.opts.companionBlobs))
	var wg sync.WaitGroup
	for _, suffix := range []string{".sig", ".att", ".sbom"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tag := base + suffix
			desc, err := up.ManifestHead(ctx, rt.Remote, tag)
			if err != nil {
				if e, ok := upstream.AsError(err); !ok || !e.NotFound() {
					p.opts.log.Warn("could not look for a cosign companion", "repo", rt.Name, "tag", tag, "err", err)
				}
				return
			}
			if err := p.artifact(ctx, rt, up, desc.Digest, tag, budget); err != nil {
				p.opts.log.Warn("could not fetch a cosign companion", "repo", rt.Name, "tag", tag, "err", err)
				return
			}
			p.opts.metrics.companion(rt, suffix[1:])
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		refs, err := up.Referrers(ctx, rt.Remote, d)
		if err != nil {
			p.opts.log.Warn("could not list referrers upstream", "repo", rt.Name, "digest", d, "err", err)
			return
		}
		if n := len(refs); n > p.opts.maxReferrers {
			p.opts.log.Warn("the upstream lists more referrers than are fetched; the rest are not", "repo", rt.Name, "digest", d,
				"referrers", n, "fetched", p.opts.maxReferrers)
			refs = refs[:p.opts.maxReferrers]
		}
		for _, r := range refs {
			if err := p.artifact(ctx, rt, up, r.Digest, "", budget); err != nil {
				p.opts.log.Warn("could not fetch a referrer", "repo", rt.Name, "digest", r.Digest, "err", err)
				continue
			}
			p.opts.metrics.companion(rt, "referrer")
		}
	}()
	wg.Wait()
}

// companionBudget is what one manifest's companions may still fetch: blob bytes, by the sizes
// their descriptors declare (each fill is held to its descriptor), and blobs (a request each).
type companionBudget struct{ bytes, blobs atomic.Int64 }

// artifact fetches a signature/attestation/SBOM manifest (by tag when tag is set) and its blobs.
func (p *Puller) artifact(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest, tag string, budget *companionBudget) error {
	if d == "" {
		m, err := up.ManifestGet(ctx, rt.Remote, tag)
		if err != nil {
			return err
		}
		d = m.Digest
		if err := p.store(ctx, rt, d, m); err != nil {
			return err
		}
	} else if err := p.ensure(ctx, rt, up, d, false); err != nil {
		return err
	}
	rec, err := p.meta.ManifestGet(ctx, rt.Name, d)
	if err != nil {
		return err
	}
	if tag != "" {
		if err := p.meta.ManifestPut(ctx, rec, tag); err != nil {
			return err
		}
	}
	body, err := p.content.ManifestGet(ctx, d)
	if err != nil {
		return err
	}
	parsed, err := manifest.Parse(rec.MediaType, body, p.opts.algorithms)
	if err != nil {
		return err
	}
	for _, b := range parsed.Blobs { // whatever the upstream holds: nothing is asked for past a cap
		if b.Size > p.opts.maxCompanionBlob {
			return fmt.Errorf("blob %s is %d bytes, over the %d-byte limit for companions", b.Digest, b.Size, p.opts.maxCompanionBlob)
		}
	}
	var missing []v1.Descriptor
	var size int64
	for _, b := range parsed.Blobs {
		if _, err := p.content.BlobStat(ctx, rt.Name, b.Digest); err == nil {
			continue
		}
		if budget.blobs.Add(-1) < 0 {
			budget.blobs.Add(1)
			return fmt.Errorf("blob %s is past the %d blobs fetched for one manifest's companions", b.Digest, p.opts.companionBlobs)
		}
		// the budget goes by the sizes descriptors claim: the upstream must agree with them
		if n, err := up.BlobHead(ctx, rt.Remote, b.Digest); err != nil {
			return err
		} else if n != b.Size {
			return fmt.Errorf("blob %s is %d bytes upstream, not the %d its descriptor says", b.Digest, n, b.Size)
		}
		missing, size = append(missing, b), size+max(b.Size, 0)
	}
	if size > 0 && budget.bytes.Add(-size) < 0 {
		budget.bytes.Add(size)
		return fmt.Errorf("its %d blob bytes are over what is left of the %d-byte budget for one manifest's companions", size, p.opts.companionBytes)
	}
	for _, b := range missing {
		if err := p.fill(ctx, rt, up, b.Digest, b.Size); err != nil {
			return err
		}
	}
	return nil
}

// CountServed records blob bytes of a pull route served from the cache.
func (p *Puller) CountServed(rt route.Resolved, n int64) { p.opts.metrics.servedBytes(rt, n) }

// EnsureBlob makes sure a blob of a pull route is in the store, fetching it once if not (the
// scanner reads layers a client has not pulled yet). size is its descriptor's (-1: unknown):
// the upstream must send exactly that many bytes, and no more is read.
func (p *Puller) EnsureBlob(ctx context.Context, rt route.Resolved, d digest.Digest, size int64) error {
	if _, err := p.content.BlobStat(ctx, rt.Name, d); err == nil {
		return nil
	}
	up, err := p.upstream(rt)
	if err != nil {
		return err
	}
	return p.fill(ctx, rt, up, d, size)
}
