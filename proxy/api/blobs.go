package api

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
)

// blobStat finds a blob linked into repo, with OCI errors for the unknown and the unreachable.
func (h *Handler) blobStat(r *http.Request, repo string, d digest.Digest) (v1.Descriptor, error) {
	desc, err := h.content.BlobStat(r.Context(), repo, d)
	if errors.Is(err, content.ErrBlobUnknown) {
		return v1.Descriptor{}, apierr.New(apierr.BlobUnknown, "blob %s is not in repository %s", d, repo)
	}
	if err != nil {
		return v1.Descriptor{}, apierr.Unavailablef(err, "storage did not answer while looking up blob %s", d)
	}
	return desc, nil
}

// blobGet serves GET and HEAD of a blob, with Range (end-2, end-10).
func (h *Handler) blobGet(w http.ResponseWriter, r *http.Request, t Target) error {
	d, err := ParseDigest(t.Ref, h.opts.algorithms)
	if err != nil {
		return err
	}
	pullRoute := t.Route.Route != nil && t.Route.Route.Kind == route.Pull
	// Pushers HEAD blobs to skip uploads, so HEAD on a push route is not gated; it says only
	// that a blob exists, never its bytes.
	if h.gated(t) && (r.Method == http.MethodGet || pullRoute) {
		if err := h.gate.Blob(r.Context(), t.Route, d); err != nil {
			return err
		}
	}
	desc, err := h.blobStat(r, t.Name, d)
	if err != nil && pullRoute && apierr.From(err).Code == apierr.BlobUnknown {
		if r.Method == http.MethodHead {
			size, err := h.puller.BlobHead(r.Context(), t.Route, d)
			if err != nil {
				return err
			}
			w.Header().Set("Docker-Content-Digest", d.String())
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
			w.WriteHeader(http.StatusOK)
			return nil
		}
		// Stream the first fetch to this client unless it asked for a range (then fetch whole
		// and serve the range from the store).
		var stream http.ResponseWriter
		if r.Header.Get("Range") == "" {
			stream = w
		}
		var served bool
		served, err = h.puller.Blob(r.Context(), t.Route, d, stream)
		if served {
			if err != nil {
				h.opts.logger.Warn("aborting a blob response: the upstream transfer failed", "repo", t.Name, "digest", d, "err", err)
				panic(http.ErrAbortHandler) // the client must see a cut-off body, not a complete wrong one
			}
			return nil
		}
		if err != nil {
			return err
		}
		desc, err = h.blobStat(r, t.Name, d)
	}
	if err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("ETag", `"`+d.String()+`"`)
	hd.Set("Cache-Control", "max-age=31536000")
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("Accept-Ranges", "bytes")
	if r.Method == http.MethodHead {
		hd.Set("Content-Length", strconv.FormatInt(desc.Size, 10))
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if u, err := h.content.BlobRedirectURL(r, desc); err != nil {
		return apierr.Unavailablef(err, "storage could not sign a URL for blob %s", d)
	} else if u != "" {
		http.Redirect(w, r, u, http.StatusTemporaryRedirect)
		return nil
	}
	rc, err := h.content.BlobReader(r.Context(), desc)
	if err != nil {
		return apierr.Unavailablef(err, "storage could not open blob %s", d)
	}
	defer rc.Close()
	// ServeContent answers Range and If-None-Match; from an *os.File the body leaves via sendfile.
	http.ServeContent(w, r, "", time.Time{}, rc)
	if sw, ok := w.(*statusWriter); ok && pullRoute {
		h.puller.CountServed(t.Route, sw.written)
	}
	return nil
}

// blobDelete unlinks a blob from a repository (end-10).
func (h *Handler) blobDelete(w http.ResponseWriter, r *http.Request, t Target) error {
	if !h.opts.deleteEnabled {
		return errDeleteDisabled
	}
	d, err := ParseDigest(t.Ref, h.opts.algorithms)
	if err != nil {
		return err
	}
	err = h.content.BlobDelete(r.Context(), t.Name, d)
	if errors.Is(err, content.ErrBlobUnknown) {
		return apierr.New(apierr.BlobUnknown, "blob %s is not in repository %s", d, t.Name)
	}
	if err != nil {
		return apierr.Unavailablef(err, "storage did not delete blob %s", d)
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	return nil
}
