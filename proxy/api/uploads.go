package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
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
	u, err := h.content.UploadCreate(ctx, t.Name)
	if err != nil {
		return apierr.Unavailablef(err, "storage could not open an upload session")
	}
	if dq := q.Get("digest"); dq != "" && q.Get("mount") == "" {
		d, err := ParseDigest(dq, h.opts.algorithms)
		if err != nil {
			u.Cancel(ctx)
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
		return nil, apierr.New(apierr.BlobUploadUnknown, "upload %s is not open in repository %s (finished, cancelled, expired, or never started); start a new one with POST /v2/%s/blobs/uploads/", t.Ref, t.Name, t.Name)
	}
	if err != nil {
		return nil, apierr.Unavailablef(err, "storage could not reopen upload %s", t.Ref)
	}
	if h.opts.uploadExpiry > 0 && time.Since(u.StartedAt()) > h.opts.uploadExpiry {
		u.Cancel(r.Context())
		return nil, apierr.New(apierr.BlobUploadUnknown, "upload %s expired: it was started %s ago and sessions last %s (uploads.expiry); start a new one", t.Ref, time.Since(u.StartedAt()).Round(time.Second), h.opts.uploadExpiry)
	}
	return u, nil
}

// parseContentRange reads the "<start>-<end>" the spec's chunked upload sends (a "bytes " prefix
// and "/<size>" suffix are tolerated).
func parseContentRange(s string) (start, end int64, err error) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(s, "bytes "), "bytes=")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("no '-'")
	}
	if start, err = strconv.ParseInt(a, 10, 64); err != nil || start < 0 {
		return 0, 0, fmt.Errorf("bad start %q", a)
	}
	if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
		return 0, 0, fmt.Errorf("bad end %q", b)
	}
	return start, end, nil
}

// appendBody writes a request body to the session, checking Content-Range against what the
// session holds (out-of-order chunks get 416 with the session's current range).
func (h *Handler) appendBody(w http.ResponseWriter, r *http.Request, repo string, u content.Upload) error {
	var wantLen int64 = -1
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, end, err := parseContentRange(cr)
		if err != nil {
			return apierr.New(apierr.BlobUploadInvalid, "Content-Range %q is not <start>-<end>: %v", cr, err).WithStatus(http.StatusBadRequest)
		}
		if start != u.Size() {
			uploadHeaders(w, repo, u)
			return apierr.New(apierr.RangeInvalid, "chunk starts at byte %d but the upload holds %d bytes; send the chunk that starts at %d", start, u.Size(), u.Size())
		}
		wantLen = end - start + 1
		if r.ContentLength >= 0 && r.ContentLength != wantLen {
			return apierr.New(apierr.SizeInvalid, "Content-Range %q covers %d bytes but Content-Length is %d", cr, wantLen, r.ContentLength)
		}
	}
	n, err := u.ReadFrom(r.Body)
	if err != nil {
		return apierr.New(apierr.BlobUploadInvalid, "the chunk was cut off after %d bytes: %v; ask GET %s for the range kept and resume", n, err, uploadLocation(repo, u.ID())).WithStatus(http.StatusBadRequest).WithCause(err)
	}
	if wantLen >= 0 && n != wantLen {
		return apierr.New(apierr.SizeInvalid, "Content-Range announced %d bytes but %d arrived", wantLen, n)
	}
	return nil
}

// uploadPatch appends a chunk (end-5).
func (h *Handler) uploadPatch(w http.ResponseWriter, r *http.Request, t Target) error {
	defer h.uploads.lock(t.Ref)()
	u, err := h.resume(r, t)
	if err != nil {
		return err
	}
	defer u.Close()
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
		if err := h.appendBody(w, r, t.Name, u); err != nil {
			u.Close()
			return err
		}
	}
	return h.finish(w, r, t.Name, u, d)
}

// finish commits a session under the claimed digest; a mismatch cancels it.
func (h *Handler) finish(w http.ResponseWriter, r *http.Request, repo string, u content.Upload, d digest.Digest) error {
	ctx := r.Context()
	if r.Method == http.MethodPost {
		if err := h.appendBody(w, r, repo, u); err != nil {
			u.Cancel(ctx)
			return err
		}
	}
	size := u.Size()
	if _, err := h.content.BlobCommit(ctx, u, d); err != nil {
		u.Cancel(ctx)
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
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNoContent)
	return nil
}
