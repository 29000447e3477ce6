package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/storage/content"
)

func uploadLocation(repo, id string) string { return "/v2/" + repo + "/blobs/uploads/" + id }

// uploadHeaders describes an open session: where to send the next request and what it holds.
func uploadHeaders(w http.ResponseWriter, repo string, u content.Upload) {
	end := u.Size() - 1
	if end < 0 {
		end = 0 // distribution's convention for an empty session
	}
	hd := w.Header()
	hd.Set("Location", uploadLocation(repo, u.ID()))
	hd.Set("Range", fmt.Sprintf("0-%d", end))
	hd.Set("Docker-Upload-UUID", u.ID())
	hd.Set("Content-Length", "0")
}

func blobCreated(w http.ResponseWriter, repo string, d digest.Digest) {
	hd := w.Header()
	hd.Set("Location", "/v2/"+repo+"/blobs/"+d.String())
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// uploadStart opens an upload (end-4a/4b), takes a monolithic upload (?digest=), or mounts a blob
// from another repository (?mount=&from=, end-11) or from anywhere (?mount= alone, OCI 1.1).
func (h *Handler) uploadStart(w http.ResponseWriter, r *http.Request, t Target) error {
	ctx := r.Context()
	q := r.URL.Query()
	if mount := q.Get("mount"); mount != "" {
		d, err := ParseDigest(mount, h.opts.algorithms)
		if err != nil {
			return err
		}
		mounted, err := h.mount(r, t, q.Get("from"), d)
		if err != nil {
			return err
		}
		if mounted {
			if err := h.recordRepo(r, t.Name); err != nil {
				return err
			}
			blobCreated(w, t.Name, d)
			return nil
		}
		// Not mountable: fall back to a new upload session, as the spec asks.
	}
	if err := h.sessions.reserve(t.Name); err != nil {
		return err
	}
	u, err := h.content.UploadCreate(ctx, t.Name)
	if err != nil {
		h.sessions.unreserve(t.Name)
		return apierr.Unavailablef(err, "storage could not open an upload session")
	}
	h.sessions.opened(t.Name, u.ID(), u.StartedAt())
	if dq := q.Get("digest"); dq != "" && q.Get("mount") == "" {
		d, err := ParseDigest(dq, h.opts.algorithms)
		if err != nil {
			u.Cancel(ctx)
			h.sessions.closed(u.ID())
			return err
		}
		return h.finish(w, r, t.Name, u, d)
	}
	if err := u.Close(); err != nil {
		return apierr.Unavailablef(err, "storage could not save the upload session")
	}
	uploadHeaders(w, t.Name, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// mount links blob d into repo without an upload; false means the caller should upload it.
func (h *Handler) mount(r *http.Request, t Target, from string, d digest.Digest) (bool, error) {
	ctx := r.Context()
	repo := t.Name
	if from != "" {
		if err := ValidateName(from, h.opts.maxNameLength); err != nil {
			return false, err
		}
		frt, err := h.routes.Resolve(from, "")
		if err != nil {
			return false, nil // a source no route serves holds nothing to mount
		}
		from = frt.Name
		_, err = h.content.BlobMount(ctx, repo, from, d)
		if errors.Is(err, content.ErrBlobUnknown) {
			return false, nil
		}
		if err != nil {
			return false, apierr.Unavailablef(err, "storage could not mount blob %s from %s", d, from)
		}
		return true, nil
	}
	if h.gated(t) && !h.gate.Mountable(d) {
		// without a source, only a blob of an admitted image (whose scan read it) is linked: a
		// pusher who learned a quarantined layer's digest must upload its bytes to use it
		return false, nil
	}
	_, err := h.content.BlobMountAnywhere(ctx, repo, d)
	if errors.Is(err, content.ErrBlobUnknown) {
		return false, nil
	}
	if err != nil {
		return false, apierr.Unavailablef(err, "storage could not mount blob %s", d)
	}
	return true, nil
}

func (h *Handler) recordRepo(r *http.Request, repo string) error {
	if err := h.meta.RepositoryPut(r.Context(), repo); err != nil {
		return apierr.Unavailablef(err, "the metadata store did not record repository %s", repo)
	}
	return nil
}

// resume reopens the session a request names, refusing unknown and expired ones.
func (h *Handler) resume(r *http.Request, t Target) (content.Upload, error) {
	u, err := h.content.UploadResume(r.Context(), t.Name, t.Ref)
	if errors.Is(err, content.ErrUploadUnknown) {
		h.sessions.closed(t.Ref) // purged, or closed for idling
		return nil, apierr.New(apierr.BlobUploadUnknown, "upload %s is not open in repository %s (finished, cancelled, expired, or never started); start a new one with POST /v2/%s/blobs/uploads/", t.Ref, t.Name, t.Name)
	}
	if err != nil {
		return nil, apierr.Unavailablef(err, "storage could not reopen upload %s", t.Ref)
	}
	if h.opts.uploadExpiry > 0 && time.Since(u.StartedAt()) > h.opts.uploadExpiry {
		u.Cancel(r.Context())
		h.sessions.closed(t.Ref)
		return nil, apierr.New(apierr.BlobUploadUnknown, "upload %s expired: it was started %s ago and sessions last %s (uploads.expiry); start a new one", t.Ref, time.Since(u.StartedAt()).Round(time.Second), h.opts.uploadExpiry)
	}
	return u, nil
}

// parseContentRange reads the "<start>-<end>" (inclusive, in bytes) the spec's chunked upload
// sends; a "bytes " or "bytes=" prefix and a "/<size>" or "/*" suffix are tolerated. It never
// overflows: both ends are plain decimal numbers, end >= start, and end+1 (the session's size
// after the chunk) fits an int64.
func parseContentRange(s string) (start, end int64, err error) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(s, "bytes "), "bytes=")
	if rng, size, ok := strings.Cut(s, "/"); ok {
		if size != "*" && !isDecimal(size) {
			return 0, 0, fmt.Errorf("the size after '/' is %q, not a number or '*'", size)
		}
		s = rng
	}
	a, b, ok := strings.Cut(s, "-")
	switch {
	case !ok:
		return 0, 0, errors.New("there is no '-' between start and end")
	case a == "":
		return 0, 0, errors.New("the start is missing (or negative)")
	case b == "":
		return 0, 0, errors.New("the end is missing")
	case !isDecimal(a):
		return 0, 0, fmt.Errorf("the start %q is not a decimal byte offset", a)
	case !isDecimal(b):
		return 0, 0, fmt.Errorf("the end %q is not a decimal byte offset", b)
	}
	if start, err = strconv.ParseInt(a, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("the start %s is past the largest offset, %d", a, int64(math.MaxInt64))
	}
	if end, err = strconv.ParseInt(b, 10, 64); err != nil || end == math.MaxInt64 {
		return 0, 0, fmt.Errorf("the end %s is past the largest offset, %d", b, int64(math.MaxInt64-1))
	}
	if end < start {
		return 0, 0, fmt.Errorf("the end %d is before the start %d", end, start)
	}
	return start, end, nil
}

func isDecimal(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// appendBody writes a request body to the session, checking Content-Range against what the
// session holds (out-of-order chunks get 416 with the session's current range) and the session's
// size against limits.blob_size.
func (h *Handler) appendBody(w http.ResponseWriter, r *http.Request, repo string, u content.Upload) error {
	var wantLen int64 = -1
	limit := h.opts.maxBlobSize
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, end, err := parseContentRange(cr)
		if err != nil {
			uploadHeaders(w, repo, u)
			return apierr.New(apierr.RangeInvalid, "Content-Range %q is refused: %v; send <start>-<end>, the inclusive byte offsets of the chunk", cr, err)
		}
		if start != u.Size() {
			uploadHeaders(w, repo, u)
			return apierr.New(apierr.RangeInvalid, "chunk starts at byte %d but the upload holds %d bytes; send the chunk that starts at %d", start, u.Size(), u.Size())
		}
		if limit > 0 && end >= limit {
			uploadHeaders(w, repo, u)
			return apierr.New(apierr.RangeInvalid, "Content-Range %q ends past byte %d: blobs here are at most %d bytes (limits.blob_size)", cr, limit-1, limit)
		}
		wantLen = end - start + 1
		if r.ContentLength >= 0 && r.ContentLength != wantLen {
			return apierr.New(apierr.SizeInvalid, "Content-Range %q covers %d bytes but Content-Length is %d", cr, wantLen, r.ContentLength)
		}
	}
	body := io.Reader(r.Body)
	var room *io.LimitedReader
	if limit > 0 {
		left := max(limit-u.Size(), 0)
		if r.ContentLength > left {
			return errBlobTooLarge(u.Size()+r.ContentLength, limit)
		}
		room = &io.LimitedReader{R: r.Body, N: left}
		body = room
	}
	n, err := u.ReadFrom(body)
	if err != nil {
		var stalled *bodyStalledError
		if errors.As(err, &stalled) {
			return apierr.New(apierr.BlobUploadInvalid, "the chunk stalled after %d bytes: %v; ask GET %s for the range kept and resume", n, err, uploadLocation(repo, u.ID())).WithStatus(http.StatusRequestTimeout).WithCause(err)
		}
		return apierr.New(apierr.BlobUploadInvalid, "the chunk was cut off after %d bytes: %v; ask GET %s for the range kept and resume", n, err, uploadLocation(repo, u.ID())).WithStatus(http.StatusBadRequest).WithCause(err)
	}
	if room != nil && room.N == 0 {
		if k, _ := r.Body.Read(make([]byte, 1)); k > 0 {
			return errBlobTooLarge(limit+1, limit)
		}
	}
	if wantLen >= 0 && n != wantLen {
		return apierr.New(apierr.SizeInvalid, "Content-Range announced %d bytes but %d arrived", wantLen, n)
	}
	return nil
}

func errBlobTooLarge(size, limit int64) error {
	return apierr.New(apierr.SizeInvalid, "the blob would be at least %d bytes; blobs here are at most %d bytes (limits.blob_size)", size, limit).WithStatus(http.StatusRequestEntityTooLarge)
}

// uploadPatch appends a chunk (end-5).
func (h *Handler) uploadPatch(w http.ResponseWriter, r *http.Request, t Target) error {
	defer h.uploads.lock(t.Ref)()
	u, err := h.resume(r, t)
	if err != nil {
		return err
	}
	defer u.Close()
	h.sessions.touch(t.Ref)
	defer h.sessions.touch(t.Ref) // a long chunk counts as activity until its last byte
	if err := h.appendBody(w, r, t.Name, u); err != nil {
		return err
	}
	uploadHeaders(w, t.Name, u)
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// uploadPut closes a session with an optional last chunk and the blob's digest (end-6).
func (h *Handler) uploadPut(w http.ResponseWriter, r *http.Request, t Target) error {
	defer h.uploads.lock(t.Ref)()
	dq := r.URL.Query().Get("digest")
	if dq == "" {
		return apierr.New(apierr.DigestInvalid, "closing an upload needs ?digest=<the blob's digest>")
	}
	d, err := ParseDigest(dq, h.opts.algorithms)
	if err != nil {
		return err
	}
	u, err := h.resume(r, t)
	if err != nil {
		return err
	}
	if r.ContentLength != 0 {
		h.sessions.touch(t.Ref)
		if err := h.appendBody(w, r, t.Name, u); err != nil {
			h.sessions.touch(t.Ref)
			u.Close()
			return err
		}
	}
	return h.finish(w, r, t.Name, u, d)
}

// finish commits a session under the claimed digest; a mismatch cancels it.
func (h *Handler) finish(w http.ResponseWriter, r *http.Request, repo string, u content.Upload, d digest.Digest) error {
	ctx := r.Context()
	defer h.sessions.closed(u.ID()) // committed or cancelled: its slot is free
	if r.Method == http.MethodPost {
		if err := h.appendBody(w, r, repo, u); err != nil {
			u.Cancel(ctx)
			return err
		}
	}
	size := u.Size()
	if _, err := h.content.BlobCommit(ctx, u, d); err != nil {
		u.Cancel(ctx)
		// after a failed commit distribution's Cancel refuses ("already committed") and the
		// session's bytes would stay until the purge
		if err := h.content.UploadDelete(ctx, repo, u.ID()); err != nil {
			h.opts.logger.Warn("could not remove a failed upload session", "repo", repo, "upload", u.ID(), "err", err)
		}
		var bad distribution.ErrBlobInvalidDigest
		if errors.As(err, &bad) {
			return apierr.New(apierr.DigestInvalid, "the %d uploaded bytes do not have digest %s; the upload is discarded", size, d)
		}
		return apierr.Unavailablef(err, "storage could not commit blob %s", d)
	}
	if err := h.recordRepo(r, repo); err != nil {
		return err
	}
	blobCreated(w, repo, d)
	return nil
}

// uploadStatus reports how much of a session has arrived (end-13).
func (h *Handler) uploadStatus(w http.ResponseWriter, r *http.Request, t Target) error {
	defer h.uploads.lock(t.Ref)()
	u, err := h.resume(r, t)
	if err != nil {
		return err
	}
	defer u.Close()
	uploadHeaders(w, t.Name, u)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// uploadCancel abandons a session (end-?; DELETE on the upload URL).
func (h *Handler) uploadCancel(w http.ResponseWriter, r *http.Request, t Target) error {
	defer h.uploads.lock(t.Ref)()
	u, err := h.resume(r, t)
	if err != nil {
		return err
	}
	if err := u.Cancel(r.Context()); err != nil {
		return apierr.Unavailablef(err, "storage could not cancel upload %s", t.Ref)
	}
	h.sessions.closed(t.Ref)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// sessionStore is what the session count needs of storage (a part of Content).
type sessionStore interface {
	UploadList(ctx context.Context) ([]content.UploadInfo, error)
	UploadStat(ctx context.Context, repo, id string) (content.UploadInfo, error)
	UploadDelete(ctx context.Context, repo, id string) error
}

var _ sessionStore = Content(nil)

// uploadSessions counts the open upload sessions, in all and per repository, refuses a new one
// past either cap, and closes a session that sees no PATCH or PUT for the idle timeout (the
// expiry stays the absolute bound, checked on every request and by the purge). The count starts
// from what storage holds, so a restart forgets no session; a session that finishes, is
// cancelled, or turns out gone frees its slot at once.
type uploadSessions struct {
	max, perRepo int           // 0: no cap
	idle         time.Duration // 0: sessions are closed only by the expiry
	store        sessionStore
	locks        *uploadLocks
	log          *slog.Logger

	mu    sync.Mutex
	open  map[string]*uploadSession // by session ID
	repos map[string]int            // open and reserved, by repository
	total int                       // open and reserved
}

type uploadSession struct {
	repo  string
	last  time.Time // the last PATCH or PUT (or the start)
	timer *time.Timer
}

func newUploadSessions(o options, store sessionStore, locks *uploadLocks) *uploadSessions {
	return &uploadSessions{max: o.maxSessions, perRepo: o.maxSessionsPerRepo, idle: o.uploadIdle,
		store: store, locks: locks, log: o.logger, open: map[string]*uploadSession{}, repos: map[string]int{}}
}

// load counts the sessions storage already holds (left by the previous run), each idle since its
// bytes last changed.
func (s *uploadSessions) load(ctx context.Context) error {
	list, err := s.store.UploadList(ctx)
	if err != nil {
		return err
	}
	for _, u := range list {
		last := u.Modified
		if last.IsZero() || u.StartedAt.After(last) {
			last = u.StartedAt
		}
		if last.IsZero() {
			last = time.Now()
		}
		s.mu.Lock()
		s.total++
		s.repos[u.Repo]++
		s.adopt(u.Repo, u.ID, last)
		s.mu.Unlock()
	}
	return nil
}

func (s *uploadSessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// reserve takes a slot for a new session of repo, or says which cap is full. The caller then
// calls opened with the session's ID, or unreserve if it could not be created.
func (s *uploadSessions) reserve(repo string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// 429 TOOMANYREQUESTS with Retry-After: the spec's code for a client to back off, and one
	// that distribution's, containerd's and go-containerregistry's clients retry.
	refuse := func(format string, args ...any) error {
		hint, secs := "", 10
		if s.idle > 0 {
			hint = fmt.Sprintf(" (a session with no PATCH or PUT for %s is closed)", s.idle)
			secs = max(int(min(s.idle, time.Minute)/time.Second), 1)
		}
		return apierr.New(apierr.TooManyRequests, format+"; finish or cancel (DELETE) an open one, or retry later"+hint, args...).
			WithHeader("Retry-After", strconv.Itoa(secs))
	}
	if s.perRepo > 0 && s.repos[repo] >= s.perRepo {
		return refuse("repository %s has %d upload sessions open, the most uploads.max_sessions_per_repository allows", repo, s.repos[repo])
	}
	if s.max > 0 && s.total >= s.max {
		return refuse("Gatehouse has %d upload sessions open, the most uploads.max_sessions allows", s.total)
	}
	s.total++
	s.repos[repo]++
	return nil
}

func (s *uploadSessions) unreserve(repo string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop(repo)
}

func (s *uploadSessions) drop(repo string) {
	s.total--
	if s.repos[repo]--; s.repos[repo] <= 0 {
		delete(s.repos, repo)
	}
}

// opened gives a reserved slot its session.
func (s *uploadSessions) opened(repo, id string, started time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if started.IsZero() {
		started = time.Now()
	}
	s.adopt(repo, id, started)
}

// adopt tracks a counted session; s.mu is held.
func (s *uploadSessions) adopt(repo, id string, last time.Time) {
	e := &uploadSession{repo: repo, last: last}
	s.open[id] = e
	if s.idle > 0 {
		e.timer = time.AfterFunc(time.Until(last.Add(s.idle)), func() { s.reap(id) })
	}
}

// touch records activity on a session.
func (s *uploadSessions) touch(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.open[id]; ok {
		e.last = time.Now()
	}
}

// closed frees the slot of a session that is gone (committed, cancelled, expired, purged).
func (s *uploadSessions) closed(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.open[id]
	if !ok {
		return
	}
	if e.timer != nil {
		e.timer.Stop()
	}
	delete(s.open, id)
	s.drop(e.repo)
}

// reap closes a session once it has been idle for the idle timeout, removing its bytes. It holds
// the session's lock, so it never cuts a request on it short; activity it missed (a request
// that finished meanwhile, bytes storage shows written) puts the deadline off.
func (s *uploadSessions) reap(id string) {
	defer s.locks.lock(id)()
	s.mu.Lock()
	e, ok := s.open[id]
	var repo string
	var last time.Time
	if ok {
		repo, last = e.repo, e.last
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := s.store.UploadStat(ctx, repo, id)
	switch {
	case errors.Is(err, content.ErrUploadUnknown):
		s.closed(id) // purged meanwhile
		return
	case err != nil:
		s.log.Warn("could not check an idle upload session; trying again later", "repo", repo, "upload", id, "err", err)
		s.later(id, s.idle)
		return
	}
	if info.Modified.After(last) {
		last = info.Modified
	}
	if wait := time.Until(last.Add(s.idle)); wait > 0 {
		s.later(id, wait)
		return
	}
	if err := s.store.UploadDelete(ctx, repo, id); err != nil {
		s.log.Warn("could not remove an idle upload session; trying again later", "repo", repo, "upload", id, "err", err)
		s.later(id, s.idle)
		return
	}
	s.closed(id)
	s.log.Info("closed an idle upload session", "repo", repo, "upload", id, "idle", time.Since(last).Round(time.Second), "limit", s.idle)
}

func (s *uploadSessions) later(id string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.open[id]; ok && e.timer != nil {
		e.timer.Reset(d)
	}
}

// PurgeUploads deletes the upload sessions older than the upload expiry, every interval, until
// ctx ends (a session is refused once expired; this frees its bytes).
func (h *Handler) PurgeUploads(ctx context.Context, every time.Duration) {
	if every <= 0 || h.opts.uploadExpiry <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, errs := h.content.PurgeUploads(ctx, time.Now().Add(-h.opts.uploadExpiry))
			if n > 0 || len(errs) > 0 {
				h.opts.logger.Info("purged expired upload sessions", "files", n, "errors", len(errs))
			}
		}
	}
}
