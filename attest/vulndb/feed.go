package vulndb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// OSVBucket is OSV's public bucket: <OSVBucket>/<Ecosystem>/all.zip holds every record of an
// ecosystem.
const OSVBucket = "https://osv-vulnerabilities.storage.googleapis.com"

// Ecosystems are the OSV ecosystems the built-in scanner inventories, and so the default feed:
// what osv-scalibr 0.5.3's extractors in the groups Gatehouse runs (attest/inventory.Groups) name
// their packages with — dpkg (Debian, Ubuntu), apk (Alpine, Wolfi, Chainguard), rpm (Red Hat,
// Rocky Linux, AlmaLinux, openSUSE, SUSE, openEuler), and the Go, npm, PyPI, Maven, crates.io,
// RubyGems, Packagist and NuGet extractors.
var Ecosystems = []string{
	"Debian", "Ubuntu", "Alpine", "Wolfi", "Chainguard", "Red Hat", "Rocky Linux", "AlmaLinux", "openSUSE", "SUSE", "openEuler",
	"Go", "npm", "PyPI", "Maven", "crates.io", "RubyGems", "Packagist", "NuGet",
}

// Source is one place OSV records come from: an http(s) URL of a zip archive, a zip or JSON
// file, or a directory of them.
type Source struct {
	Name string // how it is reported (the ecosystem of a bucket source, else its location)
	URL  string
}

// Sources turns configured sources into Sources: an http(s) URL ending .zip or .json is one
// archive; any other http(s) URL is a base in OSV's bucket layout, one source per ecosystem; a
// path is a local zip, JSON file or directory.
func Sources(specs, ecosystems []string) []Source {
	var out []Source
	for _, s := range specs {
		u, err := url.Parse(s)
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https"):
			out = append(out, Source{Name: s, URL: s})
		case strings.HasSuffix(u.Path, ".zip") || strings.HasSuffix(u.Path, ".json"):
			out = append(out, Source{Name: s, URL: s})
		default:
			out = append(out, BucketSources(s, ecosystems)...)
		}
	}
	return out
}

// BucketSources are the sources of a base URL in OSV's bucket layout, one per ecosystem.
func BucketSources(base string, ecosystems []string) []Source {
	out := make([]Source, 0, len(ecosystems))
	for _, e := range ecosystems {
		out = append(out, Source{Name: e, URL: strings.TrimSuffix(base, "/") + "/" + url.PathEscape(e) + "/all.zip"})
	}
	return out
}

// SourceStatus is what the feed knows of one source.
type SourceStatus struct {
	Name        string    `json:"name"`
	URL         string    `json:"url"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Records     int       `json:"records"`
	// Archive is the copy of the source's last good archive that the database was built from
	// (kept so that an unchanged source is not fetched again, and a failing one is rebuilt from it).
	Archive      string `json:"archive,omitempty"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
}

// Feed keeps the database at Path current from its sources. Each update fetches every source
// (Parallel at a time, with conditional requests, so an archive that did not change is not sent
// again), checks what it fetched, and builds one new database from all of them that replaces the
// old one in one rename. A source that cannot be fetched or read keeps its previous archive in
// the new database, and is reported.
type Feed struct {
	Path     string   // the database
	Cache    string   // where the sources' archives and their state are kept
	Sources  []Source // in order: a record in a later source replaces one with its id
	Client   *http.Client
	Parallel int           // sources fetched at once (default 4)
	Stall    time.Duration // a download that brings no byte for this long is cut (default 1m)
	MaxSize  int64         // an archive larger than this is refused (default 4 GiB)
	Progress io.Writer     // progress bars (nil: none)
	Timeout  time.Duration // one source's fetch may take this long in all (default 30m)

	mu      sync.Mutex  // one update at a time
	running atomic.Bool // Run is keeping the database current
	handle  atomic.Pointer[DB]
	last    atomic.Pointer[UpdateOutcome]
	lastErr atomic.Value // string: why the last update failed ("" when it did not)
}

// UpdateOutcome is how the last update in the background went.
type UpdateOutcome struct {
	At      time.Time
	Took    time.Duration
	Changed bool
	Err     string // "" when it worked
}

// LastUpdate is how the last update in the background went (nil before the first ends).
func (f *Feed) LastUpdate() *UpdateOutcome { return f.last.Load() }

// Fetching says whether admissions should wait for a first database: Run is under way and none is
// in place yet. why says what the feed is doing (its last failure, if any).
func (f *Feed) Fetching() (fetching bool, why string) {
	db := f.handle.Load()
	if !f.running.Load() || db == nil {
		return false, ""
	}
	if _, err := db.Info(); err == nil {
		return false, ""
	}
	why = fmt.Sprintf("the vulnerability database is being fetched from %s", sourcesName(f.Sources))
	if e, _ := f.lastErr.Load().(string); e != "" {
		why += " (the last attempt failed: " + e + ")"
	}
	return true, why
}

// Update runs one update. It returns the database now in place (changed says whether this
// update replaced it) and the status of every source; err is non-nil when no database could be
// built at all. Sources that failed are reported in the status, not in err, while others worked.
func (f *Feed) Update(ctx context.Context) (info Info, changed bool, status []SourceStatus, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := os.MkdirAll(f.Cache, 0o750); err != nil {
		return Info{}, false, nil, err
	}
	prev := f.loadState()
	status = make([]SourceStatus, len(f.Sources))
	fetched := make([]string, len(f.Sources)) // a new archive to build from ("" when unchanged or failed)
	eg, ectx := errgroup.WithContext(ctx)
	par := f.Parallel
	if par <= 0 {
		par = 4
	}
	eg.SetLimit(par)
	for i, s := range f.Sources {
		st := prev[s.URL]
		st.Name, st.URL, st.LastAttempt = s.Name, s.URL, time.Now().UTC()
		status[i] = st
		eg.Go(func() error {
			file, err := f.fetch(ectx, s, &status[i])
			if err != nil {
				status[i].LastError = err.Error()
				return nil // reported; the previous archive stands in
			}
			fetched[i] = file
			return nil
		})
	}
	eg.Wait()
	defer func() {
		for _, file := range fetched {
			if f.fetchedHere(file) {
				os.Remove(file) // a download that was not kept
			}
		}
	}()
	if ctx.Err() != nil {
		return Info{}, false, status, ctx.Err() // stopped, not failed: the state stays as it was
	}
	cur, curErr := Open(f.Path).Info()
	anyNew := false
	for _, file := range fetched {
		anyNew = anyNew || file != ""
	}
	if !anyNew && curErr == nil {
		f.saveState(status)
		return cur, false, status, nil // nothing changed upstream
	}
	b, err := newBuilder(ctx, f.Path, f.Progress)
	if err != nil {
		return Info{}, false, status, err
	}
	defer b.abort()
	for i := range f.Sources {
		st := &status[i]
		if fetched[i] != "" {
			n, err := b.add(fetched[i])
			if ctx.Err() != nil {
				return Info{}, false, status, ctx.Err() // stopped, not failed: the state stays as it was
			}
			if err == nil {
				keep, kerr := f.keep(fetched[i], f.Sources[i])
				if kerr != nil {
					return Info{}, false, status, kerr
				}
				fetched[i] = keep
				st.Archive, st.Records, st.LastSuccess, st.LastError = keep, n, time.Now().UTC(), ""
				continue
			}
			st.LastError = fmt.Sprintf("the archive fetched from %s cannot be read: %v", st.URL, err)
			st.ETag, st.LastModified = prev[st.URL].ETag, prev[st.URL].LastModified
		}
		if st.Archive == "" {
			continue // never fetched well: this source adds nothing yet
		}
		n, err := b.add(st.Archive)
		if ctx.Err() != nil {
			return Info{}, false, status, ctx.Err()
		}
		if err != nil {
			st.LastError = strings.TrimPrefix(fmt.Sprintf("%s; the previous archive cannot be read either (it is fetched again, whole, at the next update): %v", st.LastError, err), "; ")
			st.Archive, st.ETag, st.LastModified = "", "", ""
			continue
		}
		st.Records = n
	}
	info, err = b.finish(sourcesName(f.Sources))
	if ctx.Err() != nil {
		return Info{}, false, status, ctx.Err()
	}
	if err != nil {
		f.saveState(status)
		return Info{}, false, status, fmt.Errorf("no database could be built from the sources: %w (%s)", err, failures(status))
	}
	f.saveState(status)
	return info, true, status, nil
}

// fetch brings a source's archive into the cache when it changed, returning its path ("" when
// the copy in the cache is current). Local sources are read where they are.
func (f *Feed) fetch(ctx context.Context, s Source, st *SourceStatus) (string, error) {
	u, err := url.Parse(s.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		sig, err := localSignature(s.URL)
		if err != nil {
			return "", fmt.Errorf("source %s: %w", s.Name, err)
		}
		if sig == st.ETag && st.Archive == s.URL {
			st.LastSuccess, st.LastError = time.Now().UTC(), ""
			return "", nil // unchanged since the last update
		}
		st.ETag = sig
		return s.URL, nil
	}
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if err != nil {
		return "", err
	}
	if st.Archive != "" {
		if _, err := os.Stat(st.Archive); err == nil {
			if st.ETag != "" {
				req.Header.Set("If-None-Match", st.ETag)
			}
			if st.LastModified != "" {
				req.Header.Set("If-Modified-Since", st.LastModified)
			}
		}
	}
	client := f.Client
	if client == nil {
		client = f.defaultClient()
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetching %s: %w", s.URL, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && st.Archive != "":
		st.LastSuccess, st.LastError = time.Now().UTC(), ""
		return "", nil
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("fetching %s: %s", s.URL, resp.Status)
	}
	limit := f.MaxSize
	if limit <= 0 {
		limit = 4 << 30
	}
	if resp.ContentLength > limit {
		return "", fmt.Errorf("fetching %s: the archive is %d bytes, more than the %d accepted", s.URL, resp.ContentLength, limit)
	}
	tmp, err := os.CreateTemp(f.Cache, "fetch-*.zip")
	if err != nil {
		return "", err
	}
	stall := f.Stall
	if stall <= 0 {
		stall = time.Minute
	}
	body := &stallReader{r: resp.Body, stall: stall}
	body.timer = time.AfterFunc(stall, func() { body.fired.Store(true); cancel() })
	n, err := io.Copy(tmp, io.LimitReader(body, limit+1))
	body.timer.Stop()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil && body.fired.Load():
		err = fmt.Errorf("fetching %s: no byte came for %s after %d bytes; cut off", s.URL, stall, n)
	case err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("fetching %s: not done after %s (%d bytes); cut off", s.URL, timeout, n)
	case err != nil:
		err = fmt.Errorf("fetching %s: %w after %d bytes", s.URL, err, n)
	case n > limit:
		err = fmt.Errorf("fetching %s: the archive is larger than the %d bytes accepted", s.URL, limit)
	case resp.ContentLength >= 0 && n != resp.ContentLength:
		err = fmt.Errorf("fetching %s: %d of %d bytes arrived", s.URL, n, resp.ContentLength)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	st.ETag, st.LastModified = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	return tmp.Name(), nil
}

// defaultClient answers within the stall for headers too: a source that never answers is cut.
func (f *Feed) defaultClient() *http.Client {
	stall := f.Stall
	if stall <= 0 {
		stall = time.Minute
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = stall
	return &http.Client{Transport: t}
}

// keep moves a fetched archive to its place in the cache (a local source is not copied).
func (f *Feed) keep(file string, s Source) (string, error) {
	if !f.fetchedHere(file) {
		return file, nil
	}
	// named by the source's URL: two sources never share a file, whatever their names
	sum := sha256.Sum256([]byte(s.URL))
	dst := filepath.Join(f.Cache, cacheName(s.Name)+"-"+hex.EncodeToString(sum[:8])+".zip")
	return dst, os.Rename(file, dst)
}

// fetchedHere says whether file is a download of this update (never a local source).
func (f *Feed) fetchedHere(file string) bool {
	return file != "" && strings.HasPrefix(filepath.Base(file), "fetch-") && filepath.Dir(file) == filepath.Clean(f.Cache)
}

// localSignature stands for a local source's content: its files' names, sizes and times.
func localSignature(path string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\n", p, fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	return "local:" + hex.EncodeToString(h.Sum(nil))[:16], err
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func cacheName(name string) string { return unsafeName.ReplaceAllString(name, "_") }

func sourcesName(sources []Source) string {
	if len(sources) == 1 {
		return sources[0].URL
	}
	return fmt.Sprintf("%d sources", len(sources))
}

func failures(status []SourceStatus) string {
	var msgs []string
	for _, st := range status {
		if st.LastError != "" {
			msgs = append(msgs, st.Name+": "+st.LastError)
		}
	}
	if len(msgs) == 0 {
		return "no source failed"
	}
	return strings.Join(msgs, "; ")
}

// State is the feed's record of its sources, kept beside their archives.
func (f *Feed) State() []SourceStatus {
	prev := f.loadState()
	out := make([]SourceStatus, 0, len(f.Sources))
	for _, s := range f.Sources {
		st := prev[s.URL]
		st.Name, st.URL = s.Name, s.URL
		out = append(out, st)
	}
	return out
}

func (f *Feed) statePath() string { return filepath.Join(f.Cache, "sources.json") }

func (f *Feed) loadState() map[string]SourceStatus {
	out := map[string]SourceStatus{}
	b, err := os.ReadFile(f.statePath())
	if err != nil {
		return out
	}
	var list []SourceStatus
	if json.Unmarshal(b, &list) != nil {
		return out
	}
	for _, st := range list {
		out[st.URL] = st
	}
	return out
}

func (f *Feed) saveState(status []SourceStatus) {
	b, err := json.MarshalIndent(status, "", "  ")
	if err != nil {
		return
	}
	tmp := f.statePath() + ".tmp"
	if os.WriteFile(tmp, b, 0o640) == nil {
		os.Rename(tmp, f.statePath())
	}
}

// stallReader has a download cancelled (by timer) when no byte arrives for stall.
type stallReader struct {
	r     io.Reader
	timer *time.Timer
	stall time.Duration
	fired atomic.Bool
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.timer.Reset(s.stall)
	}
	return n, err
}

// Start updates the database every interval, in the background until ctx ends, and at once when
// there is none yet, logging each update's outcome and every source that failed. From its call
// on, Fetching says whether admissions wait for a first database.
func (f *Feed) Start(ctx context.Context, every time.Duration, log *slog.Logger) {
	db := Open(f.Path)
	f.handle.Store(db)
	f.running.Store(true)
	go func() {
		defer db.Close()
		defer f.running.Store(false)
		f.run(ctx, db, every, log)
	}()
}

func (f *Feed) run(ctx context.Context, db *DB, every time.Duration, log *slog.Logger) {
	_, err := db.Info()
	wait, retry := every, 5*time.Second
	if err != nil {
		wait = 0 // no database: fetch one now
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = every
		start := time.Now()
		info, changed, status, err := f.Update(ctx)
		if ctx.Err() != nil {
			return
		}
		for _, st := range status {
			if st.LastError != "" {
				log.Warn("vulnerability source failed; its previous archive stays in the database", "source", st.Name, "err", st.LastError)
			}
		}
		outcome := &UpdateOutcome{At: time.Now().UTC(), Took: time.Since(start), Changed: changed}
		if err != nil {
			outcome.Err = err.Error()
		}
		f.last.Store(outcome)
		f.lastErr.Store(outcome.Err)
		if _, derr := db.Info(); derr != nil {
			// still no database: try again soon (backing off up to the interval)
			wait, retry = min(retry, every), min(2*retry, every)
		}
		switch {
		case err != nil:
			log.Error("vulnerability database update failed; the database in place (if any) stays", "err", err, "took", time.Since(start).Round(time.Millisecond), "next", wait)
		case changed:
			log.Info("vulnerability database updated", "version", info.Version, "records", info.Records, "sources", len(status), "took", time.Since(start).Round(time.Millisecond))
		default:
			log.Info("vulnerability database is current: no source changed", "version", info.Version, "took", time.Since(start).Round(time.Millisecond))
		}
	}
}
