package api

import (
	"net/http"
	"net/url"
	"strconv"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// maxPage caps one page of a listing; a client asking for more gets this many and a Link.
const maxPage = 1000

// pageParams reads n and last; absent n means "up to maxPage".
func pageParams(r *http.Request) (meta.Page, error) {
	q := r.URL.Query()
	p := meta.Page{Last: q.Get("last"), N: maxPage}
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			return meta.Page{}, apierr.New(apierr.PaginationInvalid, "n=%q is not a non-negative integer", ns)
		}
		p.N = min(n, maxPage)
	}
	return p, nil
}

// setNextLink adds the RFC 5988 Link header to the next page.
func setNextLink(w http.ResponseWriter, path string, p meta.Page, last string) {
	q := url.Values{"n": {strconv.Itoa(p.N)}, "last": {last}}
	w.Header().Set("Link", "<"+path+"?"+q.Encode()+`>; rel="next"`)
}

// tagsList lists a repository's tags (end-8a/8b).
func (h *Handler) tagsList(w http.ResponseWriter, r *http.Request, t Target) error {
	p, err := pageParams(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if t.Route.Route != nil && t.Route.Route.Kind == route.Pull {
		return h.pullTags(w, r, t, p)
	}
	ok, err := h.meta.RepositoryExists(ctx, t.Name)
	if err != nil {
		return apierr.Unavailablef(err, "the metadata store did not answer")
	}
	if !ok {
		return apierr.New(apierr.NameUnknown, "repository %s is not known to this registry", t.Name)
	}
	tags := []string{}
	more := false
	if p.N > 0 {
		got, m, err := h.meta.TagList(ctx, t.Name, p)
		if err != nil {
			return apierr.Unavailablef(err, "the metadata store did not list tags")
		}
		tags = append(tags, got...)
		more = m
	}
	if more {
		setNextLink(w, "/v2/"+t.Name+"/tags/list", p, tags[len(tags)-1])
	}
	return writeJSON(w, r, http.StatusOK, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{t.Name, tags})
}

// pullTags lists a pull route repository's tags as its upstream has them (the cached ones while
// the upstream cannot answer, marked stale).
func (h *Handler) pullTags(w http.ResponseWriter, r *http.Request, t Target, p meta.Page) error {
	tags := []string{}
	if p.N > 0 {
		got, more, stale, err := h.puller.Tags(r.Context(), t.Route, p)
		if err != nil {
			return err
		}
		if stale != "" {
			setStale(w, stale)
		}
		tags = append(tags, got...)
		if more && len(tags) > 0 {
			setNextLink(w, "/v2/"+t.Name+"/tags/list", p, tags[len(tags)-1])
		}
	}
	return writeJSON(w, r, http.StatusOK, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{t.Name, tags})
}

// catalog lists repositories.
func (h *Handler) catalog(w http.ResponseWriter, r *http.Request, _ Target) error {
	p, err := pageParams(r)
	if err != nil {
		return err
	}
	repos := []string{}
	more := false
	if p.N > 0 {
		got, m, err := h.meta.Catalog(r.Context(), p)
		if err != nil {
			return apierr.Unavailablef(err, "the metadata store did not list repositories")
		}
		repos = append(repos, got...)
		more = m
	}
	if more {
		setNextLink(w, "/v2/_catalog", p, repos[len(repos)-1])
	}
	return writeJSON(w, r, http.StatusOK, "application/json", struct {
		Repositories []string `json:"repositories"`
	}{repos})
}

// referrers lists the manifests whose subject is a digest, as an image index (end-12a/12b).
func (h *Handler) referrers(w http.ResponseWriter, r *http.Request, t Target) error {
	d, err := ParseDigest(t.Ref, h.opts.algorithms)
	if err != nil {
		return err
	}
	artifactType := r.URL.Query().Get("artifactType")
	list, err := h.meta.Referrers(r.Context(), t.Name, d, artifactType)
	if err != nil {
		return apierr.Unavailablef(err, "the metadata store did not list referrers of %s", d)
	}
	idx := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: make([]v1.Descriptor, 0, len(list))}
	idx.SchemaVersion = 2
	for _, m := range list {
		idx.Manifests = append(idx.Manifests, v1.Descriptor{
			MediaType: m.MediaType, Digest: m.Digest, Size: m.Size,
			ArtifactType: m.ArtifactType, Annotations: m.Annotations,
		})
	}
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	return writeJSON(w, r, http.StatusOK, v1.MediaTypeImageIndex, idx)
}
