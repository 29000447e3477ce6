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
	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Scanner produces a scan result for an image (the built-in scanner).
type Scanner interface {
	Scan(ctx context.Context, img scan.Image) (*scan.Result, error)
}

var _ Scanner = (*scan.Scanner)(nil)

// Metadata is what scanning reads and records.
type Metadata interface {
	ManifestGet(ctx context.Context, repo string, d digest.Digest) (meta.Manifest, error)
	ScanPut(ctx context.Context, sc meta.Scan) error
	ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error)
	ScanVulnsPut(ctx context.Context, d digest.Digest, dbVersion string, vulns []byte, at time.Time) error
}

// Content is what scanning reads of the content store.
type Content interface {
	ManifestGet(ctx context.Context, d digest.Digest) ([]byte, error)
	BlobOpen(ctx context.Context, repo string, d digest.Digest) (io.ReadSeekCloser, int64, error)
	BlobStat(ctx context.Context, repo string, d digest.Digest) (v1.Descriptor, error)
}

// Fill fetches a pull route's blob from its upstream into the store (proxy/pull).
type Fill interface {
	EnsureBlob(ctx context.Context, rt route.Resolved, d digest.Digest, size int64) error
}

// Evidence is what scanning knows of an image: its stored scan record and, when this call
// scanned it, the result itself (so it is not read back to match or to attach the SBOM).
type Evidence struct {
	Scan   meta.Scan
	Result *scan.Result // nil when the stored scan was reused, or the scan failed
}

// Service runs scans (at most workers at once, whoever asks) and stores their evidence.
type Service struct {
	content Content
	meta    Metadata
	scanner Scanner
	db      *vulndb.DB
	fill    Fill
	log     *slog.Logger
	metrics *Metrics
	// RegistryURL is how external scanners reach Gatehouse to pull the image.
	RegistryURL string

	slots    chan struct{} // one per scan that may run at once, whoever asked for it
	fetches  chan struct{} // one per image whose blobs a pull route may be fetching for a scan at once
	mu       sync.Mutex
	inflight map[digest.Digest]chan struct{}
}

// New returns a scanning service that runs at most workers scans at once, whether a push, a
// first pull or a background admission asked for them.
func New(c Content, md Metadata, sc Scanner, db *vulndb.DB, fill Fill, log *slog.Logger, m *Metrics, workers int) *Service {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Service{content: c, meta: md, scanner: sc, db: db, fill: fill, log: log, metrics: m,
		slots: make(chan struct{}, max(workers, 1)), fetches: make(chan struct{}, 4*max(workers, 1)), inflight: map[digest.Digest]chan struct{}{}}
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

// ErrNotImage is the answer for a manifest that is no image (an artifact: a signature, an SBOM,
// a chart): there is nothing to scan.
var ErrNotImage = errors.New("not an image manifest")

// Evidence returns the image's stored scan unless it has none that may stand for the route, and
// otherwise scans it (once, however many ask at the same time). A scan that failed is recorded
// and returned with its error: the image is refused saying why. An error with no recorded scan
// (a shutdown, an unreadable store) means nothing is known of the image.
func (s *Service) Evidence(ctx context.Context, rt route.Resolved, d digest.Digest) (Evidence, error) {
	for {
		stored, err := s.meta.ScanGet(ctx, d)
		if err == nil && usable(rt, stored) {
			return Evidence{Scan: stored}, nil
		}
		if err != nil && !errors.Is(err, meta.ErrNotFound) {
			return Evidence{}, fmt.Errorf("reading the stored scan of %s: %w", d, err)
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
				return Evidence{}, ctx.Err()
			}
		}
		ev, err := s.scanInSlot(ctx, rt, d)
		s.mu.Lock()
		delete(s.inflight, d)
		close(wait)
		s.mu.Unlock()
		return ev, err
	}
}

// usable says whether a stored scan may stand for a route: a route scanned by the built-in
// scanner never takes an external scanner's result (it looks for less: no malware, no secrets),
// so a pusher cannot have a digest judged by a weaker scanner on another route.
func usable(rt route.Resolved, sc meta.Scan) bool {
	return !strings.HasPrefix(sc.Scanner, externalPrefix) || (rt.Route != nil && rt.Route.Admission.Scanner != nil)
}

// externalPrefix begins the scanner name of a result an external scanner made.
const externalPrefix = "external: "

// scanInSlot fetches what the image needs (a pull route's blobs, from the upstream), then waits
// for a free slot (first come, first served) and scans: a slow upstream holds its own admission,
// never a slot other images are waiting for.
func (s *Service) scanInSlot(ctx context.Context, rt route.Resolved, d digest.Digest) (Evidence, error) {
	var ext route.ExternalScanner
	if rt.Route != nil {
		ext = rt.Route.Admission.Scanner
	}
	start := time.Now()
	var img scan.Image
	var read *readSet
	var ierr error
	if ext == nil {
		img, read, ierr = s.prepare(ctx, rt, d)
		var missing *missingBlobError
		if ierr != nil && !errors.As(ierr, &missing) {
			return Evidence{}, ierr
		}
	}
	s.metrics.queued.Inc()
	select {
	case s.slots <- struct{}{}:
		s.metrics.queued.Dec()
	case <-ctx.Done():
		s.metrics.queued.Dec()
		return Evidence{}, ctx.Err()
	}
	s.metrics.running.Inc()
	defer func() { s.metrics.running.Dec(); <-s.slots }()
	if ext != nil {
		return s.scanExternal(ctx, ext, rt.Name, d)
	}
	return s.scan(ctx, rt.Name, d, start, img, read, ierr)
}

// prepare reads what a scan of the image needs, fetching a pull route's blobs from the upstream
// in a fetch slot of their own (four per scan slot): fetches are bounded, and a slow upstream
// holds only its own route's fetches, never a push route's admission or a scan slot.
func (s *Service) prepare(ctx context.Context, rt route.Resolved, d digest.Digest) (scan.Image, *readSet, error) {
	if rt.Route != nil && rt.Route.Kind == route.Pull {
		select {
		case s.fetches <- struct{}{}:
			defer func() { <-s.fetches }()
		case <-ctx.Done():
			return scan.Image{}, nil, ctx.Err()
		}
	}
	return s.image(ctx, rt, d)
}

// failed records a scan that could not be made, so the image is refused saying why. A panic is
// logged here with its stack, once; the record and the clients get its message only.
func (s *Service) failed(ctx context.Context, repo string, d digest.Digest, start time.Time, err error) (Evidence, error) {
	var p interface{ PanicStack() string }
	if errors.As(err, &p) {
		s.log.Error("the scan panicked; the image is refused as a failed scan", "repo", repo, "digest", d, "err", err, "stack", p.PanicStack())
	}
	sc := meta.Scan{Digest: d, Repo: repo, Scanned: start.UTC(), Scanner: scan.Version, Duration: time.Since(start), Error: err.Error()}
	if perr := s.meta.ScanPut(ctx, sc); perr != nil {
		return Evidence{}, perr
	}
	s.metrics.scanned("failed", time.Since(start))
	return Evidence{Scan: sc}, err
}

// scan scans the image that image prepared (err is what image said of it).
func (s *Service) scan(ctx context.Context, repo string, d digest.Digest, start time.Time, img scan.Image, read *readSet, err error) (Evidence, error) {
	var missing *missingBlobError
	if errors.As(err, &missing) {
		// a push route lacks a blob the image lists: nothing can be scanned that is not there
		// (and nothing is fetched from a layer's third-party urls), so it is refused, saying why
		return s.failed(ctx, repo, d, start, err)
	}
	if err != nil {
		return Evidence{}, err
	}
	res, err := s.scanGuarded(ctx, img)
	if err != nil {
		if ctx.Err() != nil && !errors.As(err, new(*scan.TimeoutError)) {
			return Evidence{}, err // whoever asked has gone (a shutdown): nothing is known of the image
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

// record stores a scan's result. Encoding it reads what the image holds, so a panic in it fails
// the scan like one in the scanner, never the process.
func (s *Service) record(ctx context.Context, repo string, d digest.Digest, start time.Time, res *scan.Result, read *readSet) (ev Evidence, err error) {
	defer func() {
		if v := recover(); v != nil {
			ev, err = s.failed(ctx, repo, d, start, fmt.Errorf("scan %s: %w", d, inventory.Recovered(v, "recording the scan")))
		}
	}()
	res.Blobs = read.list()
	body, err := json.Marshal(res)
	if err != nil {
		return Evidence{}, err
	}
	sc := meta.Scan{Digest: d, Repo: repo, Scanned: res.Started, Scanner: res.Scanner, Duration: res.Duration, Complete: res.Complete, Result: body}
	if err := s.meta.ScanPut(ctx, sc); err != nil {
		return Evidence{}, err
	}
	outcome := "complete"
	if !res.Complete {
		outcome = "incomplete"
	}
	s.metrics.scanned(outcome, res.Duration)
	for _, f := range res.Findings {
		s.metrics.finding(f.Kind, f.Severity)
	}
	s.log.Info("image scanned", "repo", repo, "digest", d, "packages", len(res.Inventory.Packages), "findings", len(res.Findings),
		"complete", res.Complete, "took", res.Duration.Round(time.Millisecond))
	return Evidence{Scan: sc, Result: res}, nil
}

// scanExternal has an external scanner scan the image and records its vulnerabilities.
func (s *Service) scanExternal(ctx context.Context, ext route.ExternalScanner, repo string, d digest.Digest) (Evidence, error) {
	rec, err := s.meta.ManifestGet(ctx, repo, d)
	if err != nil {
		return Evidence{}, fmt.Errorf("manifest %s of %s: %w", d, repo, err)
	}
	if !manifest.IsImage(rec.MediaType) {
		return Evidence{}, ErrNotImage
	}
	start := time.Now()
	found, scanner, err := ext.Scan(ctx, harbor.Image{RegistryURL: s.RegistryURL, Repository: repo, Digest: d, MediaType: rec.MediaType})
	sc := meta.Scan{Digest: d, Repo: repo, Scanned: start.UTC(), Scanner: externalPrefix + scanner, Duration: time.Since(start)}
	if err != nil {
		sc.Error = err.Error()
		s.metrics.scanned("failed", sc.Duration)
		if perr := s.meta.ScanPut(ctx, sc); perr != nil {
			return Evidence{}, perr
		}
		return Evidence{Scan: sc}, err
	}
	if found == nil {
		found = []vulndb.Finding{}
	}
	sc.Complete = true
	// the external scanner pulled the image through Gatehouse itself: it read every blob it lists
	var blobs []digest.Digest
	if body, err := s.content.ManifestGet(ctx, d); err == nil {
		if m, err := manifest.Read(body); err == nil {
			blobs = m.Blobs()
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
		return Evidence{}, err
	}
	return Evidence{Scan: sc}, nil
}

// image reads an image manifest's config and layers from the store, fetching what a pull
// route has not cached yet. Every layer is read, whatever its descriptor says (a layer with urls
// included): what the gate may serve is what the scan read, which read records as it happens.
func (s *Service) image(ctx context.Context, rt route.Resolved, d digest.Digest) (scan.Image, *readSet, error) {
	repo := rt.Name
	rec, err := s.meta.ManifestGet(ctx, repo, d)
	if err != nil {
		return scan.Image{}, nil, fmt.Errorf("manifest %s of %s: %w", d, repo, err)
	}
	if !manifest.IsImage(rec.MediaType) {
		return scan.Image{}, nil, ErrNotImage
	}
	body, err := s.content.ManifestGet(ctx, d)
	if err != nil {
		return scan.Image{}, nil, err
	}
	m, err := manifest.Read(body)
	if err != nil {
		return scan.Image{}, nil, err
	}
	if !m.Image() {
		return scan.Image{}, nil, ErrNotImage // an artifact (signature, SBOM, ...), not an image
	}
	// (layers a runtime unpacks under a config that says it is something else are scanned as the
	// image they are: a config that is not an image config fails the scan, and so the image)
	read := &readSet{}
	if err := s.ensure(ctx, rt, m.Config.Digest, m.Config.Size); err != nil {
		return scan.Image{}, nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	cfg, err := s.readBlob(ctx, repo, m.Config.Digest, 4<<20)
	if err != nil {
		return scan.Image{}, nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	read.add(m.Config.Digest)
	img := scan.Image{Digest: d, Config: cfg}
	for _, l := range m.Layers {
		if err := s.ensure(ctx, rt, l.Digest, l.Size); err != nil {
			if len(l.URLs) > 0 {
				err = fmt.Errorf("%w (Gatehouse scans every layer it could serve and never fetches one from the urls a descriptor names: push the layer itself)", err)
			}
			return scan.Image{}, nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		ld := l.Digest
		img.Layers = append(img.Layers, layerfs.Layer{Digest: ld, Open: func() (io.ReadCloser, error) {
			rc, size, err := s.content.BlobOpen(ctx, repo, ld)
			if err != nil {
				return nil, err
			}
			return &countingReader{rc: rc, count: s.metrics.layerBytes, size: size, done: func() { read.add(ld) }}, nil
		}})
	}
	return img, read, nil
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
func (s *Service) ensure(ctx context.Context, rt route.Resolved, d digest.Digest, size int64) error {
	if _, err := s.content.BlobStat(ctx, rt.Name, d); err == nil {
		return nil
	}
	if rt.Route == nil || rt.Route.Kind != route.Pull || s.fill == nil {
		return &missingBlobError{d}
	}
	return s.fill.EnsureBlob(ctx, rt, d, size)
}

func (s *Service) readBlob(ctx context.Context, repo string, d digest.Digest, limit int64) ([]byte, error) {
	rc, _, err := s.content.BlobOpen(ctx, repo, d)
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

// Match matches the image's inventory against the vulnerability database in place, unless it was
// matched with it already, and stores what it found. It reads the stored result, never a layer.
// Without a database it changes nothing (the policy refuses an image that was never matched).
// A result with no inventory (a failed scan, an external scanner's) keeps its vulnerabilities
// and is marked as matched, so it is not asked for again.
func (s *Service) Match(ctx context.Context, ev Evidence) (Evidence, error) {
	info, err := s.db.Info()
	if errors.Is(err, vulndb.ErrNoDatabase) {
		return ev, nil
	}
	if err != nil {
		return ev, err
	}
	if ev.Scan.DBVersion == info.Version {
		return ev, nil
	}
	d := ev.Scan.Digest
	res := ev.Result
	if res == nil {
		res = &scan.Result{}
		if len(ev.Scan.Result) > 0 {
			if err := json.Unmarshal(ev.Scan.Result, res); err != nil {
				s.log.Warn("stored scan result cannot be read; it is not matched", "digest", d, "err", err)
			}
		}
	}
	vulns := ev.Scan.Vulns
	if res.Inventory != nil {
		found, got, err := s.db.Match(ctx, res.Inventory.Packages)
		if err != nil {
			return ev, err
		}
		if found == nil {
			found = []vulndb.Finding{}
		}
		if vulns, err = json.Marshal(found); err != nil {
			return ev, err
		}
		for _, f := range found {
			s.metrics.finding("vulnerability", f.Severity)
		}
		if ev.Result == nil {
			s.metrics.rematched.Inc()
		}
		info = got
	}
	if err := s.meta.ScanVulnsPut(ctx, d, info.Version, vulns, time.Now().UTC()); err != nil {
		return ev, err
	}
	sc, err := s.meta.ScanGet(ctx, d)
	if err != nil {
		return ev, err
	}
	ev.Scan = sc
	return ev, nil
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
