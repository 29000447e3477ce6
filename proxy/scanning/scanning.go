package scanning

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/harbor"
	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
	"github.com/gatehouse-dev/gatehouse/attest/sbom"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/pull"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Scanner produces a scan result for an image (the built-in scanner; external ones later).
type Scanner interface {
	Scan(ctx context.Context, img scan.Image) (*scan.Result, error)
}

var _ Scanner = (*scan.Scanner)(nil)

// Metadata is what scanning reads and records.
type Metadata interface {
	ManifestGet(ctx context.Context, repo string, d digest.Digest) (meta.Manifest, error)
	ManifestPut(ctx context.Context, m meta.Manifest, tags ...string) error
	ScanPut(ctx context.Context, sc meta.Scan) error
	ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error)
	ScanVulnsPut(ctx context.Context, d digest.Digest, dbVersion string, vulns []byte, at time.Time) error
	ScansToMatch(ctx context.Context, dbVersion string, limit int) ([]digest.Digest, error)
	VerdictGet(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)
	VerdictRepos(ctx context.Context, d digest.Digest) ([]string, error)
}

// External is a scanner outside Gatehouse that pulls the image itself (a Harbor scanner adapter):
// it returns vulnerabilities and its own name.
type External interface {
	Scan(ctx context.Context, img harbor.Image) ([]vulndb.Finding, string, error)
}

var _ External = (*harbor.Client)(nil)

// Service runs scans in the background.
type Service struct {
	content *content.Store
	meta    Metadata
	scanner Scanner
	db      *vulndb.DB
	routes  *route.Table
	puller  *pull.Puller
	log     *slog.Logger
	metrics *Metrics

	decide      func(ctx context.Context, repo string, d digest.Digest) // after each scan and re-match
	external    map[string]External                                     // by route prefix
	registryURL string                                                  // how external scanners reach Gatehouse

	jobs     chan job
	slots    chan struct{} // one per scan that may run at once, whoever asked for it
	fetches  chan struct{} // one per image whose blobs a pull route may be fetching for a scan at once
	mu       sync.Mutex
	inflight map[digest.Digest]chan struct{}
	wg       sync.WaitGroup
}

type job struct {
	repo string
	d    digest.Digest
}

// New returns a scanning service that runs at most workers scans at once, whether a background
// job, a push or a first pull asked for them; Start runs its background workers.
func New(c *content.Store, md Metadata, sc Scanner, db *vulndb.DB, routes *route.Table, puller *pull.Puller, log *slog.Logger, m *Metrics, workers int) *Service {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Service{content: c, meta: md, scanner: sc, db: db, routes: routes, puller: puller, log: log, metrics: m,
		jobs: make(chan job, 1024), slots: make(chan struct{}, max(workers, 1)), fetches: make(chan struct{}, 4*max(workers, 1)), inflight: map[digest.Digest]chan struct{}{}}
}

// RemoveStaleTrees deletes the scan trees that a previous process left in dir (it was killed
// mid-scan); call it before any scan starts. It returns how many it removed.
func RemoveStaleTrees(dir string) (int, error) {
	trees, err := filepath.Glob(filepath.Join(dir, scan.TreePrefix+"*"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, t := range trees {
		if err := os.RemoveAll(t); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// DecideWith has decide called after every scan and every re-match (the admission decision).
func (s *Service) DecideWith(decide func(ctx context.Context, repo string, d digest.Digest)) {
	s.decide = decide
}

// decided has d decided again in repo and in every other repository that holds a verdict on it:
// a scan or a match is stored once per digest, and each repository's verdict must follow it.
func (s *Service) decided(ctx context.Context, repo string, d digest.Digest) {
	if s.decide == nil {
		return
	}
	repos := []string{repo}
	others, err := s.meta.VerdictRepos(ctx, d)
	if err != nil {
		s.log.Error("could not list the repositories holding a verdict on a re-scanned image; only this one is decided again", "repo", repo, "digest", d, "err", err)
	}
	for _, r := range others {
		if r != repo {
			repos = append(repos, r)
		}
	}
	for _, r := range repos {
		s.decide(ctx, r, d)
	}
}

// usable says whether a stored scan may stand for repo's route: a route scanned by the built-in
// scanner never takes an external scanner's result (it looks for less: no malware, no secrets),
// so a pusher cannot have a digest judged by a weaker scanner on another route.
func (s *Service) usable(repo string, sc meta.Scan) bool {
	if !strings.HasPrefix(sc.Scanner, externalPrefix) {
		return true
	}
	return s.externalFor(repo) != nil
}

// externalFor returns the external scanner of repo's route, if it has one.
func (s *Service) externalFor(repo string) External {
	if s.routes == nil || len(s.external) == 0 {
		return nil
	}
	rt, err := s.routes.Resolve(repo, "")
	if err != nil {
		return nil
	}
	return s.external[rt.Route.Prefix]
}

// externalPrefix begins the scanner name of a result an external scanner made.
const externalPrefix = "external: "

// UseExternal scans the images of the route with prefix with ext instead of the built-in
// scanner; registryURL is how ext reaches Gatehouse.
func (s *Service) UseExternal(prefix string, ext External, registryURL string) {
	if s.external == nil {
		s.external = map[string]External{}
	}
	s.external[prefix], s.registryURL = ext, registryURL
}

// Start runs the background workers (as many as scans may run at once) and re-matches stored
// inventories whenever the database version changes (checked every recheck), until ctx ends.
func (s *Service) Start(ctx context.Context, recheck time.Duration) {
	for range cap(s.slots) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-s.jobs:
					if _, err := s.ScanNow(ctx, j.repo, j.d); err != nil && !errors.Is(err, errNotImage) {
						s.log.Error("scan failed", "repo", j.repo, "digest", j.d, "err", err)
					}
				}
			}
		}()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(recheck)
		defer t.Stop()
		for {
			if err := s.Rematch(ctx); err != nil && !errors.Is(err, vulndb.ErrNoDatabase) && ctx.Err() == nil {
				s.log.Error("re-matching stored inventories failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Wait waits for the workers to stop (after Start's context ends).
func (s *Service) Wait() { s.wg.Wait() }

// Submit asks for a manifest to be scanned in the background; manifests that are not images
// (indexes, signatures, SBOMs) are ignored by the worker.
func (s *Service) Submit(repo string, d digest.Digest, mediaType string) {
	if mediaType != manifest.OCIManifest && mediaType != manifest.DockerManifest {
		return
	}
	select {
	case s.jobs <- job{repo, d}:
	default:
		s.log.Warn("scan queue full; the image will be scanned when it is next asked for", "repo", repo, "digest", d)
	}
}

var errNotImage = errors.New("not an image manifest")

// ScanNow scans an image unless it has been scanned, waiting for a scan already running.
func (s *Service) ScanNow(ctx context.Context, repo string, d digest.Digest) (meta.Scan, error) {
	for {
		stored, err := s.meta.ScanGet(ctx, d)
		if err == nil && s.usable(repo, stored) {
			return stored, nil
		}
		s.mu.Lock()
		wait, running := s.inflight[d]
		if !running {
			wait = make(chan struct{})
			s.inflight[d] = wait
		}
		s.mu.Unlock()
		if running {
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return meta.Scan{}, ctx.Err()
			}
		}
		sc, err := s.scanInSlot(ctx, repo, d)
		s.mu.Lock()
		delete(s.inflight, d)
		close(wait)
		s.mu.Unlock()
		return sc, err
	}
}

// scanInSlot fetches what the image needs (a pull route's blobs, from the upstream), then waits
// for a free slot (first come, first served) and scans: a slow upstream holds its own admission,
// never a slot other images are waiting for.
func (s *Service) scanInSlot(ctx context.Context, repo string, d digest.Digest) (meta.Scan, error) {
	ext := s.externalFor(repo)
	start := time.Now()
	var img scan.Image
	var read *readSet
	var ierr error
	if ext == nil {
		img, read, ierr = s.prepare(ctx, repo, d)
		var missing *missingBlobError
		if ierr != nil && !errors.As(ierr, &missing) {
			return meta.Scan{}, ierr
		}
	}
	s.metrics.queued.Inc()
	select {
	case s.slots <- struct{}{}:
		s.metrics.queued.Dec()
	case <-ctx.Done():
		s.metrics.queued.Dec()
		return meta.Scan{}, ctx.Err()
	}
	s.metrics.running.Inc()
	defer func() { s.metrics.running.Dec(); <-s.slots }()
	if ext != nil {
		return s.scanExternal(ctx, ext, repo, d)
	}
	return s.scan(ctx, repo, d, start, img, read, ierr)
}

// prepare reads what a scan of the image needs, fetching a pull route's blobs from the upstream
// in a fetch slot of their own (four per scan slot): fetches are bounded, and a slow upstream
// holds only its own route's fetches, never a push route's admission or a scan slot.
func (s *Service) prepare(ctx context.Context, repo string, d digest.Digest) (scan.Image, *readSet, error) {
	if s.routes != nil {
		if rt, err := s.routes.Resolve(repo, ""); err == nil && rt.Route.Kind == route.Pull {
			select {
			case s.fetches <- struct{}{}:
				defer func() { <-s.fetches }()
			case <-ctx.Done():
				return scan.Image{}, nil, ctx.Err()
			}
		}
	}
	return s.image(ctx, repo, d)
}

// failed records a scan that could not be made, so the gate can say why the image cannot be
// admitted, and has it decided. A panic is logged here with its stack, once; the record and
// the clients get its message only.
func (s *Service) failed(ctx context.Context, repo string, d digest.Digest, start time.Time, err error) (meta.Scan, error) {
	var p interface{ PanicStack() string }
	if errors.As(err, &p) {
		s.log.Error("the scan panicked; the image is refused as a failed scan", "repo", repo, "digest", d, "err", err, "stack", p.PanicStack())
	}
	sc := meta.Scan{Digest: d, Repo: repo, Scanned: start.UTC(), Scanner: scan.Version, Duration: time.Since(start), Error: err.Error()}
	if perr := s.meta.ScanPut(ctx, sc); perr != nil {
		return meta.Scan{}, perr
	}
	s.metrics.scanned("failed", time.Since(start))
	s.decided(ctx, repo, d)
	return sc, err
}

// scan scans the image that image prepared (err is what image said of it).
func (s *Service) scan(ctx context.Context, repo string, d digest.Digest, start time.Time, img scan.Image, read *readSet, err error) (meta.Scan, error) {
	var missing *missingBlobError
	if errors.As(err, &missing) {
		// a push route lacks a blob the image lists: nothing can be scanned that is not there
		// (and nothing is fetched from a layer's third-party urls), so it is refused, saying why
		return s.failed(ctx, repo, d, start, err)
	}
	if err != nil {
		return meta.Scan{}, err
	}
	res, err := s.scanGuarded(ctx, img)
	if err != nil {
		if ctx.Err() != nil && !errors.As(err, new(*scan.TimeoutError)) {
			return meta.Scan{}, err // whoever asked has gone (a shutdown): nothing is known of the image
		}
		return s.failed(ctx, repo, d, start, err)
	}
	return s.record(ctx, repo, d, start, res, read)
}

// scanGuarded runs the scanner; a panic in it (the built-in one recovers its own) fails the scan.
func (s *Service) scanGuarded(ctx context.Context, img scan.Image) (res *scan.Result, err error) {
	defer func() {
		if v := recover(); v != nil {
			res, err = nil, fmt.Errorf("scan %s: %w", img.Digest, inventory.Recovered(v, "the scanner"))
		}
	}()
	return s.scanner.Scan(ctx, img)
}

// record stores a scan's result, its SBOMs and its vulnerabilities, and has the image decided.
// What it runs over the result (encoding, SBOMs, matching) reads what the image holds, so a
// panic in it fails the scan like one in the scanner, never the process.
func (s *Service) record(ctx context.Context, repo string, d digest.Digest, start time.Time, res *scan.Result, read *readSet) (sc meta.Scan, err error) {
	defer func() {
		if v := recover(); v != nil {
			sc, err = s.failed(ctx, repo, d, start, fmt.Errorf("scan %s: %w", d, inventory.Recovered(v, "recording the scan")))
		}
	}()
	res.Blobs = read.list()
	body, err := json.Marshal(res)
	if err != nil {
		return meta.Scan{}, err
	}
	sc = meta.Scan{Digest: d, Repo: repo, Scanned: res.Started, Scanner: res.Scanner, Duration: res.Duration, Complete: res.Complete, Result: body}
	if err := s.meta.ScanPut(ctx, sc); err != nil {
		return meta.Scan{}, err
	}
	outcome := "complete"
	if !res.Complete {
		outcome = "incomplete"
	}
	s.metrics.scanned(outcome, res.Duration)
	for _, f := range res.Findings {
		s.metrics.finding(f.Kind, f.Severity)
	}
	if err := s.attachSBOM(ctx, repo, d, res); err != nil {
		s.log.Error("could not attach the SBOM", "repo", repo, "digest", d, "err", err)
	}
	if err := s.match(ctx, d, res); err != nil && !errors.Is(err, vulndb.ErrNoDatabase) {
		return meta.Scan{}, err
	}
	s.log.Info("image scanned", "repo", repo, "digest", d, "packages", len(res.Inventory.Packages), "findings", len(res.Findings),
		"complete", res.Complete, "took", res.Duration.Round(time.Millisecond))
	s.decided(ctx, repo, d)
	return s.meta.ScanGet(ctx, d)
}

// scanExternal has an external scanner scan the image and records its vulnerabilities.
func (s *Service) scanExternal(ctx context.Context, ext External, repo string, d digest.Digest) (meta.Scan, error) {
	rec, err := s.meta.ManifestGet(ctx, repo, d)
	if err != nil {
		return meta.Scan{}, fmt.Errorf("manifest %s of %s: %w", d, repo, err)
	}
	if rec.MediaType != manifest.OCIManifest && rec.MediaType != manifest.DockerManifest {
		return meta.Scan{}, errNotImage
	}
	start := time.Now()
	found, scanner, err := ext.Scan(ctx, harbor.Image{RegistryURL: s.registryURL, Repository: repo, Digest: d, MediaType: rec.MediaType})
	sc := meta.Scan{Digest: d, Repo: repo, Scanned: start.UTC(), Scanner: externalPrefix + scanner, Duration: time.Since(start)}
	if err != nil {
		sc.Error = err.Error()
		s.metrics.scanned("failed", sc.Duration)
		if perr := s.meta.ScanPut(ctx, sc); perr != nil {
			return meta.Scan{}, perr
		}
		return sc, err
	}
	if found == nil {
		found = []vulndb.Finding{}
	}
	sc.Complete = true
	// the external scanner pulled the image through Gatehouse itself: it read every blob it lists
	var blobs []digest.Digest
	if body, err := s.content.ManifestGet(ctx, d); err == nil {
		var m v1.Manifest
		if json.Unmarshal(body, &m) == nil {
			blobs = append(blobs, m.Config.Digest)
			for _, l := range m.Layers {
				blobs = append(blobs, l.Digest)
			}
		}
	}
	sc.Result, _ = json.Marshal(scan.Result{Digest: d, Scanner: sc.Scanner, Started: sc.Scanned, Duration: sc.Duration, Complete: true, Findings: []scan.Finding{}, Blobs: blobs})
	sc.Vulns, _ = json.Marshal(found)
	sc.DBVersion, sc.Matched = "external", time.Now().UTC()
	s.metrics.scanned("complete", sc.Duration)
	for _, f := range found {
		s.metrics.finding("vulnerability", f.Severity)
	}
	if err := s.meta.ScanPut(ctx, sc); err != nil {
		return meta.Scan{}, err
	}
	s.decided(ctx, repo, d)
	return sc, nil
}

// image reads an image manifest's config and layers from the store, fetching what a pull
// route has not cached yet. Every layer is read, whatever its descriptor says (a layer with urls
// included): what the gate may serve is what the scan read, which read records as it happens.
func (s *Service) image(ctx context.Context, repo string, d digest.Digest) (scan.Image, *readSet, error) {
	rec, err := s.meta.ManifestGet(ctx, repo, d)
	if err != nil {
		return scan.Image{}, nil, fmt.Errorf("manifest %s of %s: %w", d, repo, err)
	}
	if rec.MediaType != manifest.OCIManifest && rec.MediaType != manifest.DockerManifest {
		return scan.Image{}, nil, errNotImage
	}
	body, err := s.content.ManifestGet(ctx, d)
	if err != nil {
		return scan.Image{}, nil, err
	}
	var m v1.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return scan.Image{}, nil, err
	}
	switch m.Config.MediaType {
	case v1.MediaTypeImageConfig, "application/vnd.docker.container.image.v1+json":
	default:
		if !anyRunnable(m.Layers) {
			return scan.Image{}, nil, errNotImage // an artifact (signature, SBOM, ...), not an image
		}
		// layers a runtime unpacks under a config that says it is something else: scanned as
		// the image it is (a config that is not an image config fails the scan, and so the image)
	}
	read := &readSet{}
	if err := s.ensure(ctx, repo, m.Config.Digest, m.Config.Size); err != nil {
		return scan.Image{}, nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	cfg, err := s.readBlob(ctx, repo, m.Config.Digest, 4<<20)
	if err != nil {
		return scan.Image{}, nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	read.add(m.Config.Digest)
	img := scan.Image{Digest: d, Config: cfg}
	for _, l := range m.Layers {
		if err := s.ensure(ctx, repo, l.Digest, l.Size); err != nil {
			if len(l.URLs) > 0 {
				err = fmt.Errorf("%w (Gatehouse scans every layer it could serve and never fetches one from the urls a descriptor names: push the layer itself)", err)
			}
			return scan.Image{}, nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		ld := l.Digest
		img.Layers = append(img.Layers, layerfs.Layer{Digest: ld, Open: func() (io.ReadCloser, error) {
			desc, err := s.content.BlobStat(ctx, repo, ld)
			if err != nil {
				return nil, err
			}
			rc, err := s.content.BlobReader(ctx, desc)
			if err != nil {
				return nil, err
			}
			return &countingReader{rc: rc, count: s.metrics.layerBytes, size: desc.Size, done: func() { read.add(ld) }}, nil
		}})
	}
	return img, read, nil
}

// anyRunnable says whether any of the layers is one a container runtime unpacks.
func anyRunnable(layers []v1.Descriptor) bool {
	for _, l := range layers {
		if manifest.Runnable(l.MediaType) {
			return true
		}
	}
	return false
}

// readSet records the blobs a scan read whole.
type readSet struct {
	mu    sync.Mutex
	blobs []digest.Digest
}

func (r *readSet) add(d digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.blobs = append(r.blobs, d)
}

func (r *readSet) list() []digest.Digest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]digest.Digest(nil), r.blobs...)
}

// missingBlobError is a blob an image lists that its route does not hold and cannot fetch.
type missingBlobError struct{ d digest.Digest }

func (e *missingBlobError) Error() string {
	return fmt.Sprintf("blob %s is not in this repository", e.d)
}

// ensure makes sure a blob of the given size is in the store (for a pull route, by fetching it
// once, reading no more than its descriptor says).
func (s *Service) ensure(ctx context.Context, repo string, d digest.Digest, size int64) error {
	if _, err := s.content.BlobStat(ctx, repo, d); err == nil {
		return nil
	}
	rt, err := s.routes.Resolve(repo, "")
	if err != nil || rt.Route.Kind != route.Pull || s.puller == nil {
		return &missingBlobError{d}
	}
	return s.puller.EnsureBlob(ctx, rt, d, size)
}

func (s *Service) readBlob(ctx context.Context, repo string, d digest.Digest, limit int64) ([]byte, error) {
	desc, err := s.content.BlobStat(ctx, repo, d)
	if err != nil {
		return nil, err
	}
	rc, err := s.content.BlobReader(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}

// match matches a scan's inventory against the database in place and records the findings.
func (s *Service) match(ctx context.Context, d digest.Digest, res *scan.Result) error {
	found, info, err := s.db.Match(ctx, res.Inventory.Packages)
	if err != nil {
		return err
	}
	if found == nil {
		found = []vulndb.Finding{}
	}
	b, err := json.Marshal(found)
	if err != nil {
		return err
	}
	for _, f := range found {
		s.metrics.finding("vulnerability", f.Severity)
	}
	return s.meta.ScanVulnsPut(ctx, d, info.Version, b, time.Now().UTC())
}

// Rematch matches every stored inventory not yet matched with the database in place. It reads
// scan results from the metadata store, never a layer.
func (s *Service) Rematch(ctx context.Context) error {
	info, err := s.db.Info()
	if err != nil {
		return err
	}
	for {
		todo, err := s.meta.ScansToMatch(ctx, info.Version, 100)
		if err != nil || len(todo) == 0 {
			return err
		}
		for _, d := range todo {
			sc, err := s.meta.ScanGet(ctx, d)
			if err != nil {
				return err
			}
			var res scan.Result
			if err := json.Unmarshal(sc.Result, &res); err != nil || res.Inventory == nil {
				// an external scanner's result, or an unreadable one: nothing to match
				// nothing to match (an unreadable or inventory-less result): mark it matched so
				// it is not asked for again, keeping whatever vulnerabilities it has
				s.log.Warn("stored scan has no inventory to re-match", "digest", d, "err", err)
				if err := s.meta.ScanVulnsPut(ctx, d, info.Version, sc.Vulns, time.Now().UTC()); err != nil {
					return err
				}
				continue
			}
			if err := s.match(ctx, d, &res); err != nil {
				return err
			}
			s.metrics.rematched.Inc()
			s.decided(ctx, sc.Repo, d)
		}
	}
}

// attachSBOM stores the image's CycloneDX and SPDX SBOMs as OCI 1.1 referrers of it in repo.
func (s *Service) attachSBOM(ctx context.Context, repo string, d digest.Digest, res *scan.Result) error {
	cdx, err := sbom.CycloneDX(repo, d, res.Inventory, res.Started)
	if err != nil {
		return err
	}
	if err := s.attach(ctx, repo, d, res, cdx, sbom.MediaType, "sbom.cdx.json"); err != nil {
		return err
	}
	spdxDoc, err := sbom.SPDX(repo, d, res.Inventory, res.Started)
	if err != nil {
		return err
	}
	return s.attach(ctx, repo, d, res, spdxDoc, sbom.SPDXMediaType, "sbom.spdx.json")
}

// attach stores doc as an artifact whose subject is image d.
func (s *Service) attach(ctx context.Context, repo string, d digest.Digest, res *scan.Result, doc []byte, mediaType, title string) error {
	empty := []byte("{}")
	for _, b := range [][]byte{doc, empty} {
		if err := s.putBlob(ctx, repo, b); err != nil {
			return err
		}
	}
	m := v1.Manifest{
		MediaType:    v1.MediaTypeImageManifest,
		ArtifactType: mediaType,
		Config:       v1.Descriptor{MediaType: v1.MediaTypeEmptyJSON, Digest: digest.FromBytes(empty), Size: int64(len(empty))},
		Layers: []v1.Descriptor{{MediaType: mediaType, Digest: digest.FromBytes(doc), Size: int64(len(doc)),
			Annotations: map[string]string{v1.AnnotationTitle: title}}},
		Subject:     &v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: d},
		Annotations: map[string]string{v1.AnnotationCreated: res.Started.Format(time.RFC3339), "dev.gatehouse.scanner": res.Scanner},
	}
	m.SchemaVersion = 2
	if rec, err := s.meta.ManifestGet(ctx, repo, d); err == nil {
		m.Subject.MediaType, m.Subject.Size = rec.MediaType, rec.Size
	}
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	md := digest.FromBytes(body)
	if err := s.content.ManifestPut(ctx, md, body); err != nil {
		return err
	}
	return s.meta.ManifestPut(ctx, meta.Manifest{Repo: repo, Digest: md, MediaType: v1.MediaTypeImageManifest, Size: int64(len(body)),
		ArtifactType: mediaType, Subject: d, Annotations: m.Annotations, Created: time.Now().UTC()})
}

func (s *Service) putBlob(ctx context.Context, repo string, b []byte) error {
	d := digest.FromBytes(b)
	if _, err := s.content.BlobStat(ctx, repo, d); err == nil {
		return nil
	}
	u, err := s.content.UploadCreate(ctx, repo)
	if err != nil {
		return err
	}
	if _, err := u.Write(b); err != nil {
		u.Cancel(ctx)
		return err
	}
	_, err = s.content.BlobCommit(ctx, u, d)
	return err
}

// countingReader counts a layer's bytes as the scan reads them; closed, it reads what the scan
// left (trailing bytes after the tar stream) and calls done if the whole blob passed through.
type countingReader struct {
	rc    io.ReadCloser
	count interface{ Add(float64) }
	size  int64
	n     int64
	eof   bool
	done  func()
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	c.count.Add(float64(n))
	c.n += int64(n)
	if err == io.EOF {
		c.eof = true
	}
	return n, err
}

func (c *countingReader) Close() error {
	if !c.eof {
		_, err := io.Copy(io.Discard, c)
		c.eof = c.eof || err == nil
	}
	if c.eof && c.n == c.size && c.done != nil {
		c.done()
	}
	return c.rc.Close()
}
