package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// cachedManifest is a manifest as served: small, immutable, keyed by repository and digest, so a
// cached pull reads no database and no storage.
type cachedManifest struct {
	mediaType string
	body      []byte
}

// maxCachedManifest keeps the cache's worst case bounded (entries × this).
const maxCachedManifest = 256 << 10

func cacheKey(repo string, d digest.Digest) string { return repo + "@" + d.String() }

// resolve turns a manifest reference (tag or digest) into a digest. On a pull route a tag is
// resolved through the cache and its upstream; stale then says why a cached tag is served.
func (h *Handler) resolve(ctx context.Context, t Target) (d digest.Digest, stale string, err error) {
	if IsDigest(t.Ref) {
		d, err := ParseDigest(t.Ref, h.opts.algorithms)
		return d, "", err
	}
	if err := ValidateTag(t.Ref); err != nil {
		return "", "", err
	}
	if t.Route.Route != nil && t.Route.Route.Kind == route.Pull {
		return h.puller.Tag(ctx, t.Route, t.Ref)
	}
	d, err = h.meta.TagGet(ctx, t.Name, t.Ref)
	if errors.Is(err, meta.ErrNotFound) {
		return "", "", apierr.New(apierr.ManifestUnknown, "tag %q is not in repository %s", t.Ref, t.Name)
	}
	if err != nil {
		return "", "", apierr.Unavailablef(err, "the metadata store did not answer while resolving tag %q", t.Ref)
	}
	return d, "", nil
}

// manifest returns a manifest of the target's repository, from memory when it can; on a pull
// route a miss fetches it from the upstream first.
func (h *Handler) manifest(ctx context.Context, t Target, d digest.Digest) (cachedManifest, error) {
	repo := t.Name
	key := cacheKey(repo, d)
	if h.cache != nil {
		if m, ok := h.cache.Get(key); ok {
			return m, nil
		}
	}
	if t.Route.Route != nil && t.Route.Route.Kind == route.Pull {
		if err := h.puller.Manifest(ctx, t.Route, d); err != nil {
			return cachedManifest{}, err
		}
	}
	rec, err := h.meta.ManifestGet(ctx, repo, d)
	if errors.Is(err, meta.ErrNotFound) {
		return cachedManifest{}, apierr.New(apierr.ManifestUnknown, "manifest %s is not in repository %s", d, repo)
	}
	if err != nil {
		return cachedManifest{}, apierr.Unavailablef(err, "the metadata store did not answer while looking up manifest %s", d)
	}
	body, err := h.content.ManifestGet(ctx, d)
	if err != nil {
		// Recorded but unreadable or corrupt: never serve something else in its place.
		return cachedManifest{}, apierr.Unavailablef(err, "manifest %s is recorded but its bytes could not be read intact from storage", d)
	}
	m := cachedManifest{mediaType: rec.MediaType, body: body}
	if h.cache != nil && len(body) <= maxCachedManifest {
		h.cache.Add(key, m)
	}
	return m, nil
}

// manifestGet serves GET and HEAD of a manifest by tag or digest (end-3).
func (h *Handler) manifestGet(w http.ResponseWriter, r *http.Request, t Target) error {
	ctx := r.Context()
	d, stale, err := h.resolve(ctx, t)
	if err != nil {
		return err
	}
	m, err := h.manifest(ctx, t, d)
	if err != nil {
		return err
	}
	if h.gated(t) {
		if d, m, err = h.passGate(ctx, w, t, d, m); err != nil {
			return err
		}
	} else if h.gate != nil {
		h.gate.Submit(t.Route, d, m.mediaType) // audit: admitted and recorded, served whatever it says
	}
	hd := w.Header()
	if stale != "" {
		setStale(w, stale)
	}
	hd.Set("Content-Type", m.mediaType)
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Length", strconv.Itoa(len(m.body)))
	hd.Set("ETag", `"`+d.String()+`"`)
	if inm := r.Header.Get("If-None-Match"); inm != "" && inm == `"`+d.String()+`"` {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(m.body)
	}
	return nil
}

// manifestPut stores a pushed manifest (end-7), with the OCI 1.1 subject and tag parameters.
func (h *Handler) manifestPut(w http.ResponseWriter, r *http.Request, t Target) error {
	ctx := r.Context()
	limit := h.opts.maxManifestSize
	if r.ContentLength > limit {
		return tooLarge(r.ContentLength, limit)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return apierr.New(apierr.ManifestInvalid, "reading the manifest body failed: %v", err)
	}
	if int64(len(body)) > limit {
		return tooLarge(-1, limit)
	}
	if len(body) == 0 {
		return apierr.New(apierr.ManifestInvalid, "the manifest body is empty")
	}
	p, err := manifest.Parse(r.Header.Get("Content-Type"), body, h.opts.algorithms)
	if err != nil {
		return err
	}
	var d digest.Digest
	var tags []string
	if IsDigest(t.Ref) {
		if d, err = ParseDigest(t.Ref, h.opts.algorithms); err != nil {
			return err
		}
		if got := d.Algorithm().FromBytes(body); got != d {
			return apierr.New(apierr.DigestInvalid, "the manifest body has digest %s, not %s as the URL claims", got, d)
		}
	} else {
		if err := ValidateTag(t.Ref); err != nil {
			return err
		}
		d, tags = digest.FromBytes(body), []string{t.Ref}
	}
	for _, tag := range r.URL.Query()["tag"] {
		if err := ValidateTag(tag); err != nil {
			return err
		}
		tags = append(tags, tag)
	}
	for _, b := range p.Blobs {
		if _, err := h.content.BlobStat(ctx, t.Name, b.Digest); err != nil {
			if errors.Is(err, content.ErrBlobUnknown) {
				return apierr.New(apierr.ManifestBlobUnknown, "the manifest references blob %s (%s), which is not in repository %s; push it first", b.Digest, b.MediaType, t.Name).
					WithDetail(map[string]string{"digest": b.Digest.String()})
			}
			return apierr.Unavailablef(err, "storage did not answer while checking blob %s", b.Digest)
		}
	}
	for _, c := range p.Manifests {
		if _, err := h.meta.ManifestGet(ctx, t.Name, c.Digest); err != nil {
			if errors.Is(err, meta.ErrNotFound) {
				return apierr.New(apierr.ManifestBlobUnknown, "the index references manifest %s, which is not in repository %s; push it first", c.Digest, t.Name).
					WithDetail(map[string]string{"digest": c.Digest.String()})
			}
			return apierr.Unavailablef(err, "the metadata store did not answer while checking manifest %s", c.Digest)
		}
	}
	if err := h.content.ManifestPut(ctx, d, body); err != nil {
		return apierr.Unavailablef(err, "storage did not accept the manifest bytes")
	}
	rec := meta.Manifest{Repo: t.Name, Digest: d, MediaType: p.MediaType, Size: int64(len(body)),
		ArtifactType: p.ArtifactType, Annotations: p.Annotations, Created: time.Now().UTC()}
	if p.Subject != nil {
		rec.Subject = p.Subject.Digest
	}
	if err := h.meta.ManifestPut(ctx, rec, tags...); err != nil {
		return apierr.Unavailablef(err, "the metadata store did not record the manifest")
	}
	if h.gated(t) {
		// admitted synchronously: a refusal is the push's answer, and the content stays, quarantined, for review
		if err := h.gate.Manifest(ctx, t.Route, d, body); err != nil {
			return err
		}
	} else if h.gate != nil {
		h.gate.Submit(t.Route, d, p.MediaType)
	}
	hd := w.Header()
	hd.Set("Location", "/v2/"+t.Name+"/manifests/"+d.String())
	hd.Set("Docker-Content-Digest", d.String())
	if p.Subject != nil {
		hd.Set("OCI-Subject", p.Subject.Digest.String())
	}
	for _, tag := range tags {
		hd.Add("OCI-Tag", tag)
	}
	hd.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	return nil
}

// passGate passes a manifest through the gate. A tag on a route with tag_fallback that now points
// to a digest under admission or refused serves the digest it last served admitted instead, and
// says so in Gatehouse-Tag-Fallback.
func (h *Handler) passGate(ctx context.Context, w http.ResponseWriter, t Target, d digest.Digest, m cachedManifest) (digest.Digest, cachedManifest, error) {
	byTag := !IsDigest(t.Ref) && t.Route.Route != nil && t.Route.Route.Admission.TagFallback
	var last digest.Digest
	canFallBack := false
	if byTag {
		last, canFallBack = h.gate.LastAdmitted(ctx, t.Name, t.Ref)
		canFallBack = canFallBack && last != d
	}
	var err error
	if canFallBack {
		// a known-good digest is at hand: do not keep the client waiting for the new one
		err = h.gate.ManifestWithin(ctx, t.Route, d, m.body, 0)
	} else {
		err = h.gate.Manifest(ctx, t.Route, d, m.body)
	}
	if err == nil {
		if byTag {
			h.gate.TagServed(ctx, t.Name, t.Ref, d)
		}
		return d, m, nil
	}
	if !canFallBack {
		return "", cachedManifest{}, err
	}
	lm, lerr := h.manifest(ctx, t, last)
	if lerr != nil || h.gate.Manifest(ctx, t.Route, last, lm.body) != nil {
		return "", cachedManifest{}, err // the fallback is gone or refused too: the new digest's answer stands
	}
	why := "refused by policy"
	if apierr.From(err).Code == apierr.Unavailable {
		why = "under admission"
	}
	w.Header().Set("Gatehouse-Tag-Fallback", fmt.Sprintf("tag %s now points to %s (%s); serving %s, the last admitted", t.Ref, d, why, last))
	return last, lm, nil
}

// gated says whether the target's route serves only what is admitted (a route with no mode
// does: fail closed).
func (h *Handler) gated(t Target) bool {
	return h.gate != nil && (t.Route.Route == nil || t.Route.Route.Admission.Enforced())
}

func tooLarge(n, limit int64) error {
	var e *apierr.Error
	if n > 0 {
		e = apierr.New(apierr.SizeInvalid, "the manifest is %d bytes; this registry's limit is %d bytes (limits.manifest_size)", n, limit)
	} else {
		e = apierr.New(apierr.SizeInvalid, "the manifest is larger than this registry's limit of %d bytes (limits.manifest_size)", limit)
	}
	return e.WithStatus(http.StatusRequestEntityTooLarge)
}

// manifestDelete deletes a manifest by digest, or a tag (end-9).
func (h *Handler) manifestDelete(w http.ResponseWriter, r *http.Request, t Target) error {
	if !h.opts.deleteEnabled {
		return errDeleteDisabled
	}
	ctx := r.Context()
	if !IsDigest(t.Ref) {
		if err := ValidateTag(t.Ref); err != nil {
			return err
		}
		err := h.meta.TagDelete(ctx, t.Name, t.Ref)
		if errors.Is(err, meta.ErrNotFound) {
			return apierr.New(apierr.ManifestUnknown, "tag %q is not in repository %s", t.Ref, t.Name)
		}
		if err != nil {
			return apierr.Unavailablef(err, "the metadata store did not delete tag %q", t.Ref)
		}
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	d, err := ParseDigest(t.Ref, h.opts.algorithms)
	if err != nil {
		return err
	}
	err = h.meta.ManifestDelete(ctx, t.Name, d)
	if h.cache != nil {
		h.cache.Remove(cacheKey(t.Name, d))
	}
	if errors.Is(err, meta.ErrNotFound) {
		return apierr.New(apierr.ManifestUnknown, "manifest %s is not in repository %s", d, t.Name)
	}
	if err != nil {
		return apierr.Unavailablef(err, "the metadata store did not delete manifest %s", d)
	}
	w.WriteHeader(http.StatusAccepted)
	return nil
}

// setStale says a response comes from the cache because the upstream cannot answer.
func setStale(w http.ResponseWriter, reason string) {
	w.Header().Set("Warning", `110 gatehouse "Response is Stale"`)
	w.Header().Set("Gatehouse-Stale", reason)
}

var errDeleteDisabled = apierr.New(apierr.Unsupported, "deletion is disabled on this registry (storage.delete: false)").WithStatus(http.StatusMethodNotAllowed)
