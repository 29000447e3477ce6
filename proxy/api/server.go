package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/mux"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/gate"
	"github.com/gatehouse-dev/gatehouse/proxy/pull"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Metadata is the index the API keeps over stored content (storage/meta/sqlite implements it).
type Metadata interface {
	Ping(ctx context.Context) error
	RepositoryPut(ctx context.Context, repo string) error
	RepositoryExists(ctx context.Context, repo string) (bool, error)
	Catalog(ctx context.Context, p meta.Page) ([]string, bool, error)
	ManifestPut(ctx context.Context, m meta.Manifest, tags ...string) error
	ManifestGet(ctx context.Context, repo string, dgst digest.Digest) (meta.Manifest, error)
	ManifestDelete(ctx context.Context, repo string, dgst digest.Digest) error
	TagGet(ctx context.Context, repo, tag string) (digest.Digest, error)
	TagList(ctx context.Context, repo string, p meta.Page) ([]string, bool, error)
	TagDelete(ctx context.Context, repo, tag string) error
	Referrers(ctx context.Context, repo string, subject digest.Digest, artifactType string) ([]meta.Manifest, error)
}

// Handler serves the OCI Distribution API plus /healthz, /readyz and /metrics.
type Handler struct {
	content Content
	meta    Metadata
	opts    options
	router  *mux.Router
	cache   *lru.Cache[string, cachedManifest]
	uploads uploadLocks
	metrics *metrics
	routes  *route.Table
	puller  Fill
	gate    Gate

	sessions *uploadSessions // open upload sessions, counted against the caps
}

type options struct {
	logger          *slog.Logger
	maxManifestSize int64
	maxNameLength   int
	algorithms      []digest.Algorithm
	deleteEnabled   bool
	uploadExpiry    time.Duration
	// upload sessions and transfers
	maxSessions        int
	maxSessionsPerRepo int
	uploadIdle         time.Duration
	maxBlobSize        int64
	bodyIdle           time.Duration
	bodyMinRate        int64
	cacheEntries       int
	registry           *prometheus.Registry
	routes             *route.Table
	puller             Fill
	reports            *reports
	gate               Gate
}

// Option configures a Handler.
type Option func(*options)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithMaxManifestSize limits manifest bodies (default 4 MiB).
func WithMaxManifestSize(n int64) Option { return func(o *options) { o.maxManifestSize = n } }

// WithMaxNameLength limits repository names (default 255).
func WithMaxNameLength(n int) Option { return func(o *options) { o.maxNameLength = n } }

// WithDigestAlgorithms sets the digest algorithms accepted (default sha256 and sha512).
func WithDigestAlgorithms(algs ...digest.Algorithm) Option {
	return func(o *options) { o.algorithms = algs }
}

// WithDelete enables manifest, tag and blob deletion (default off).
func WithDelete(on bool) Option { return func(o *options) { o.deleteEnabled = on } }

// WithUploadExpiry sets how long an upload session may stay open (default 24h).
func WithUploadExpiry(d time.Duration) Option { return func(o *options) { o.uploadExpiry = d } }

// WithUploadSessions caps the upload sessions open at once, in all and per repository (a POST
// past a cap gets 429 TOOMANYREQUESTS), and closes a session that sees no PATCH or PUT for idle,
// removing its bytes (default 1000, 100, 10m; 0 turns each off).
func WithUploadSessions(maxTotal, maxPerRepository int, idle time.Duration) Option {
	return func(o *options) { o.maxSessions, o.maxSessionsPerRepo, o.uploadIdle = maxTotal, maxPerRepository, idle }
}

// WithMaxBlobSize refuses uploads that would make a blob larger than n bytes (default 0: no limit).
func WithMaxBlobSize(n int64) Option { return func(o *options) { o.maxBlobSize = n } }

// WithBodyTimeouts cuts transfers that stop: a request body that brings no byte for idle, or
// averages under minRate bytes a second once idle has passed, and a response that the client
// takes no byte of for idle. A large transfer at a fair rate is never cut (default 1m and
// 1KiB/s; idle 0 turns both off, minRate 0 the rate only).
func WithBodyTimeouts(idle time.Duration, minRate int64) Option {
	return func(o *options) { o.bodyIdle, o.bodyMinRate = idle, minRate }
}

// WithManifestCache sets how many manifests are kept in memory (default 8192; 0 disables).
func WithManifestCache(entries int) Option { return func(o *options) { o.cacheEntries = entries } }

// WithMetricsRegistry sets the Prometheus registry that /metrics exposes and the handler's
// metrics are registered in (default: a new registry).
func WithMetricsRegistry(r *prometheus.Registry) Option { return func(o *options) { o.registry = r } }

// WithRoutes sets the route table (default: one push route that hosts every name).
func WithRoutes(t *route.Table) Option { return func(o *options) { o.routes = t } }

// WithPuller fills pull routes from their upstreams (required when the table has pull routes).
func WithPuller(p Fill) Option { return func(o *options) { o.puller = p } }

// Fill is what the API asks of the pull-through fill (proxy/pull) on pull routes.
type Fill interface {
	// Tag resolves a tag from the upstream (or the cache, stale says why when the upstream
	// could not be asked); Manifest makes sure a manifest is stored.
	Tag(ctx context.Context, rt route.Resolved, tag string) (d digest.Digest, stale string, err error)
	Manifest(ctx context.Context, rt route.Resolved, d digest.Digest) error
	// Blob serves a blob not stored yet from the upstream; BlobHead is its size there.
	Blob(ctx context.Context, rt route.Resolved, d digest.Digest, w http.ResponseWriter) (served bool, err error)
	BlobHead(ctx context.Context, rt route.Resolved, d digest.Digest) (int64, error)
	// CountServed counts blob bytes served from the store on a pull route.
	CountServed(rt route.Resolved, n int64)
	// Tags lists the upstream's tags.
	Tags(ctx context.Context, rt route.Resolved, pg meta.Page) (tags []string, more bool, stale string, err error)
}

var _ Fill = (*pull.Puller)(nil)

// Content is what the API asks of the content store (storage/content).
type Content interface {
	Ping(ctx context.Context) error
	// blobs
	BlobStat(ctx context.Context, repo string, dgst digest.Digest) (v1.Descriptor, error)
	BlobReader(ctx context.Context, canonical v1.Descriptor) (io.ReadSeekCloser, error)
	BlobRedirectURL(r *http.Request, canonical v1.Descriptor) (string, error)
	BlobDelete(ctx context.Context, repo string, dgst digest.Digest) error
	BlobMount(ctx context.Context, repo, from string, dgst digest.Digest) (v1.Descriptor, error)
	BlobMountAnywhere(ctx context.Context, repo string, dgst digest.Digest) (v1.Descriptor, error)
	// uploads
	UploadCreate(ctx context.Context, repo string) (content.Upload, error)
	UploadResume(ctx context.Context, repo, id string) (content.Upload, error)
	BlobCommit(ctx context.Context, u content.Upload, dgst digest.Digest) (v1.Descriptor, error)
	PurgeUploads(ctx context.Context, olderThan time.Time) (int, []error)
	UploadList(ctx context.Context) ([]content.UploadInfo, error)
	UploadStat(ctx context.Context, repo, id string) (content.UploadInfo, error)
	UploadDelete(ctx context.Context, repo, id string) error
	// manifests
	ManifestPut(ctx context.Context, dgst digest.Digest, payload []byte) error
	ManifestGet(ctx context.Context, dgst digest.Digest) ([]byte, error)
}

var _ Content = (*content.Store)(nil)

// Gate is what the API asks of the admission gate (proxy/gate).
type Gate interface {
	// Manifest and ManifestWithin say whether a manifest may be served (nil) or why not.
	Manifest(ctx context.Context, rt route.Resolved, d digest.Digest, body []byte) error
	ManifestWithin(ctx context.Context, rt route.Resolved, d digest.Digest, body []byte, hold time.Duration) error
	// Blob says whether a blob may be served from a repository.
	Blob(ctx context.Context, rt route.Resolved, d digest.Digest) error
	// Mountable says whether a mount that names no source repository may link a blob.
	Mountable(d digest.Digest) bool
	// Submit admits a manifest in the background.
	Submit(rt route.Resolved, d digest.Digest, mediaType string)
	// LastAdmitted and TagServed keep the digest a fallback tag last served admitted.
	LastAdmitted(ctx context.Context, repo, tag string) (digest.Digest, bool)
	TagServed(ctx context.Context, repo, tag string, d digest.Digest)
}

var _ Gate = (*gate.Gate)(nil)

// WithGate has every image admitted (a push or a first pull starts its admission), every
// manifest and blob request on an enforcing route pass the gate, and manifest pushes on one
// wait for their admission (default: no gate, nothing admitted).
func WithGate(g Gate) Option { return func(o *options) { o.gate = g } }

// WithReports serves Gatehouse's own API under /gatehouse/v1/: the scan reports,
// GET /gatehouse/v1/scans/<digest>, read from src, with the state of db (stale when older than
// maxAge), and GET /gatehouse/v1/vulndb, the database and its sources (sources may be nil: no
// feed). Without it nothing is served under /gatehouse/v1/.
func WithReports(src ReportSource, db VulnDB, sources Sources, maxAge time.Duration) Option {
	return func(o *options) { o.reports = &reports{src: src, db: db, sources: sources, maxAge: maxAge} }
}

// New returns the API handler over a content store and a metadata store.
func New(c Content, md Metadata, opts ...Option) (*Handler, error) {
	o := options{
		logger:          slog.Default(),
		maxManifestSize: 4 << 20,
		maxNameLength:   255,
		algorithms:      []digest.Algorithm{digest.SHA256, digest.SHA512},
		uploadExpiry:    24 * time.Hour,
		cacheEntries:    8192,

		maxSessions:        1000,
		maxSessionsPerRepo: 100,
		uploadIdle:         10 * time.Minute,
		bodyIdle:           time.Minute,
		bodyMinRate:        1 << 10,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.registry == nil {
		o.registry = prometheus.NewRegistry()
	}
	if o.routes == nil {
		t, err := route.NewTable([]route.Route{{Prefix: "", Kind: route.Push}})
		if err != nil {
			return nil, err
		}
		o.routes = t
	}
	for _, r := range o.routes.Routes() {
		if r.Kind == route.Pull && o.puller == nil {
			return nil, fmt.Errorf("route %q is a pull route but no puller was given", r.Prefix)
		}
	}
	h := &Handler{content: c, meta: md, opts: o, routes: o.routes, puller: o.puller, gate: o.gate}
	if o.cacheEntries > 0 {
		cache, err := lru.New[string, cachedManifest](o.cacheEntries)
		if err != nil {
			return nil, err
		}
		h.cache = cache
	}
	m, err := newMetrics(o.registry)
	if err != nil {
		return nil, err
	}
	h.metrics = m
	h.sessions = newUploadSessions(o, c, &h.uploads)
	if err := h.sessions.load(context.Background()); err != nil {
		o.logger.Warn("could not count the upload sessions left in storage; they are not counted against uploads.max_sessions", "err", err)
	}
	if err := o.registry.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "gatehouse_upload_sessions_open",
		Help: "Blob upload sessions open (uploads.max_sessions caps them).",
	}, func() float64 { return float64(h.sessions.count()) })); err != nil {
		return nil, err
	}
	h.router = h.newRouter()
	return h, nil
}

// ServeHTTP parses the path once, so neither the route matchers nor the handlers parse it again.
// Every request body runs under progress deadlines (WithBodyTimeouts); responses are watched
// on the listener (WatchWrites).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t, err := ParsePath(r.URL.EscapedPath(), h.opts.maxNameLength)
	r = r.WithContext(context.WithValue(r.Context(), parsedKey{}, parsedPath{t, err}))
	if h.opts.bodyIdle > 0 {
		defer withBodyDeadline(w, r, h.opts.bodyIdle, h.opts.bodyMinRate)()
	}
	h.router.ServeHTTP(w, r)
}

type parsedKey struct{}

type parsedPath struct {
	target Target
	err    error
}

func parsed(r *http.Request) parsedPath {
	p, _ := r.Context().Value(parsedKey{}).(parsedPath)
	return p
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, t Target) error

func (h *Handler) newRouter() *mux.Router {
	r := mux.NewRouter().SkipClean(true).UseEncodedPath()
	r.Handle("/healthz", h.wrap("healthz", h.healthz)).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/readyz", h.wrap("readyz", h.readyz)).Methods(http.MethodGet, http.MethodHead)
	r.Handle("/metrics", h.instrument("metrics", promhttp.HandlerFor(h.opts.registry, promhttp.HandlerOpts{}))).Methods(http.MethodGet)
	if h.opts.reports != nil {
		// one handler for the whole prefix: any other path or method under it is its 404
		r.PathPrefix("/gatehouse/v1/").Handler(h.wrap("management", h.scanReport))
	}

	oci := func(kind Kind, fn handlerFunc, methods ...string) {
		r.MatcherFunc(h.matchKind(kind)).Methods(methods...).Handler(h.wrap(string(kind), fn))
	}
	oci(KindBase, h.base, http.MethodGet, http.MethodHead)
	oci(KindCatalog, h.catalog, http.MethodGet)
	oci(KindManifest, h.manifestGet, http.MethodGet, http.MethodHead)
	oci(KindManifest, h.manifestPut, http.MethodPut)
	oci(KindManifest, h.manifestDelete, http.MethodDelete)
	oci(KindBlob, h.blobGet, http.MethodGet, http.MethodHead)
	oci(KindBlob, h.blobDelete, http.MethodDelete)
	oci(KindUploadStart, h.uploadStart, http.MethodPost)
	oci(KindUpload, h.uploadStatus, http.MethodGet)
	oci(KindUpload, h.uploadPatch, http.MethodPatch)
	oci(KindUpload, h.uploadPut, http.MethodPut)
	oci(KindUpload, h.uploadCancel, http.MethodDelete)
	oci(KindTags, h.tagsList, http.MethodGet)
	oci(KindReferrers, h.referrers, http.MethodGet)
	// Everything else: the precise error for a malformed path, or 405 for a known endpoint
	// reached with a method it does not have, or 404.
	r.PathPrefix("/").Handler(h.wrap("other", h.unmatched))
	return r
}

// matchKind matches requests whose path parsed to the given endpoint.
func (h *Handler) matchKind(kind Kind) mux.MatcherFunc {
	return func(r *http.Request, _ *mux.RouteMatch) bool {
		p := parsed(r)
		return p.err == nil && p.target.Kind == kind
	}
}

func (h *Handler) unmatched(w http.ResponseWriter, r *http.Request, t Target) error {
	if err := parsed(r).err; err != nil {
		return err
	}
	return apierr.New(apierr.Unsupported, "%s is not a method of the %s endpoint", r.Method, t.Kind).WithStatus(http.StatusMethodNotAllowed)
}

// route resolves the target's repository to its route (path prefix, or containerd's ?ns=),
// replaces the name with the local one, and refuses writes to read-only pull routes.
func (h *Handler) route(r *http.Request, t *Target) error {
	if t.Name == "" {
		return nil
	}
	rt, err := h.routes.Resolve(t.Name, r.URL.Query().Get("ns"))
	var noRoute *route.NoRouteError
	var notAllowed *route.NotAllowedError
	switch {
	case errors.As(err, &noRoute):
		return apierr.New(apierr.NameUnknown, "%s", noRoute.Error())
	case errors.As(err, &notAllowed):
		return apierr.New(apierr.Denied, "%s", notAllowed.Error())
	case err != nil:
		return err
	}
	if rt.Name != t.Name {
		if err := ValidateName(rt.Name, h.opts.maxNameLength); err != nil {
			return err
		}
	}
	t.Name, t.Route = rt.Name, rt
	if rt.Route.Kind == route.Pull && r.Method != http.MethodGet && r.Method != http.MethodHead {
		return apierr.New(apierr.Denied, "%s is served by route %q, a read-only pull-through cache of %s; push to a hosted repository instead", rt.Name, rt.Route.Prefix, rt.Route.Upstream)
	}
	return nil
}

var requestIDRegexp = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); requestIDRegexp.MatchString(id) {
		return id
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// wrap adapts a handler that returns an error: it parses the target, sets the common headers,
// writes any error as an OCI body, logs, and records metrics.
func (h *Handler) wrap(route string, fn handlerFunc) http.Handler {
	return h.instrument(route, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := requestID(r)
		w.Header().Set("X-Request-Id", id)
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		t := parsed(r).target
		err := h.route(r, &t)
		if err == nil {
			err = fn(w, r, t)
		}
		if err == nil {
			if h.opts.logger.Enabled(r.Context(), slog.LevelDebug) {
				h.opts.logger.Debug("request", "request_id", id, "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery, "route", route, "repo", t.Name)
			}
			return
		}
		e := apierr.Write(w, r, err)
		attrs := []any{"request_id", id, "method", r.Method, "path", r.URL.Path, "route", route,
			"status", e.HTTPStatus(), "code", e.Code.String(), "msg", e.Message}
		if t.Name != "" {
			attrs = append(attrs, "repo", t.Name)
		}
		if e.Err != nil {
			attrs = append(attrs, "err", e.Err.Error())
		}
		if e.HTTPStatus() >= 500 {
			h.opts.logger.Error("request failed", attrs...)
		} else {
			h.opts.logger.Info("request refused", attrs...)
		}
	}))
}

func writeJSON(w http.ResponseWriter, r *http.Request, status int, contentType string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
	return nil
}

// base answers the API version check (end-1).
func (h *Handler) base(w http.ResponseWriter, r *http.Request, _ Target) error {
	return writeJSON(w, r, http.StatusOK, "application/json", struct{}{})
}

func (h *Handler) healthz(w http.ResponseWriter, r *http.Request, _ Target) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
	return nil
}

// readyz reports whether the content store and the metadata store answer.
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request, _ Target) error {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	checks := map[string]func(context.Context) error{"storage": h.content.Ping, "metadata": h.meta.Ping}
	status := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	ready := true
	for name, check := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := check(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				ready = false
				status[name] = err.Error()
				return
			}
			status[name] = "ok"
		}()
	}
	wg.Wait()
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	return writeJSON(w, r, code, "application/json", status)
}

// uploadLocks serialises requests on one upload session; striped so it never grows.
type uploadLocks [256]sync.Mutex

func (l *uploadLocks) lock(id string) func() {
	var hsh uint8
	for i := 0; i < len(id); i++ {
		hsh = hsh*31 + id[i]
	}
	m := &l[hsh]
	m.Lock()
	return m.Unlock
}
