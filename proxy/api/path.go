package api

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
)

// Kind names one endpoint of the OCI Distribution API.
type Kind string

// The endpoints, named as in the spec's endpoint table (end-1 … end-13).
const (
	KindBase        Kind = "base"         // /v2/
	KindCatalog     Kind = "catalog"      // /v2/_catalog
	KindManifest    Kind = "manifest"     // /v2/<name>/manifests/<reference>
	KindBlob        Kind = "blob"         // /v2/<name>/blobs/<digest>
	KindUploadStart Kind = "upload_start" // /v2/<name>/blobs/uploads/
	KindUpload      Kind = "upload"       // /v2/<name>/blobs/uploads/<id>
	KindTags        Kind = "tags"         // /v2/<name>/tags/list
	KindReferrers   Kind = "referrers"    // /v2/<name>/referrers/<digest>
)

// Target is what a request path addresses.
type Target struct {
	Kind Kind
	Name string // repository name (after routing: the local name)
	Ref  string // tag, digest or upload id, as sent
	// Route is filled in after parsing, for endpoints that name a repository.
	Route route.Resolved
}

var (
	// nameComponent is one path component of a repository name (distribution-spec "Pulling manifests").
	nameRegexp = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRegexp  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// uploadIDRegexp accepts the ids Gatehouse hands out (UUIDs) and little else.
	uploadIDRegexp = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)
)

// ParsePath resolves an escaped request path to the endpoint it addresses. Repository names
// contain '/', so the endpoint suffix is matched from the end. It returns an OCI error for a
// malformed name; percent-encoding is never decoded into a name (an encoded slash or dot is not
// a way around the grammar).
func ParsePath(escapedPath string, maxNameLen int) (Target, error) {
	if escapedPath == "/v2/" || escapedPath == "/v2" {
		return Target{Kind: KindBase}, nil
	}
	if escapedPath == "/v2/_catalog" {
		return Target{Kind: KindCatalog}, nil
	}
	rest, ok := strings.CutPrefix(escapedPath, "/v2/")
	if !ok {
		return Target{}, errNotFound
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	var t Target
	var nameSegs []string
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		t, nameSegs = Target{Kind: KindTags}, segs[:n-2]
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads" && segs[n-1] == "":
		t, nameSegs = Target{Kind: KindUploadStart}, segs[:n-3]
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		t, nameSegs = Target{Kind: KindUploadStart}, segs[:n-2]
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		t, nameSegs = Target{Kind: KindUpload, Ref: segs[n-1]}, segs[:n-3]
	case n >= 3 && segs[n-2] == "blobs":
		t, nameSegs = Target{Kind: KindBlob, Ref: segs[n-1]}, segs[:n-2]
	case n >= 3 && segs[n-2] == "manifests":
		t, nameSegs = Target{Kind: KindManifest, Ref: segs[n-1]}, segs[:n-2]
	case n >= 3 && segs[n-2] == "referrers":
		t, nameSegs = Target{Kind: KindReferrers, Ref: segs[n-1]}, segs[:n-2]
	default:
		return Target{}, errNotFound
	}
	t.Name = strings.Join(nameSegs, "/")
	if err := ValidateName(t.Name, maxNameLen); err != nil {
		return Target{}, err
	}
	switch t.Kind {
	case KindUpload:
		if !uploadIDRegexp.MatchString(t.Ref) {
			return Target{}, apierr.New(apierr.BlobUploadUnknown, "upload %q is not an upload id this registry issued", t.Ref)
		}
	case KindBlob, KindReferrers:
		if t.Ref == "" {
			return Target{}, apierr.New(apierr.DigestInvalid, "the path ends without a digest")
		}
	case KindManifest:
		if t.Ref == "" {
			return Target{}, apierr.New(apierr.ManifestInvalid, "the path ends without a tag or digest")
		}
	}
	return t, nil
}

var errNotFound = apierr.New(apierr.Unsupported, "no such endpoint in the OCI Distribution API").WithStatus(404)

// ValidateName checks a repository name against the distribution-spec grammar and a length limit.
func ValidateName(name string, maxLen int) error {
	if name == "" {
		return apierr.New(apierr.NameInvalid, "the repository name is empty")
	}
	if strings.Contains(name, "%") {
		return apierr.New(apierr.NameInvalid, "repository name %q contains percent-encoding; names are lower-case letters, digits, '/', '.', '_' and '-'", name)
	}
	if maxLen > 0 && len(name) > maxLen {
		return apierr.New(apierr.NameInvalid, "repository name is %d characters long; the limit is %d", len(name), maxLen)
	}
	if !nameRegexp.MatchString(name) {
		return apierr.New(apierr.NameInvalid, "repository name %q does not match the OCI name grammar: lower-case components of [a-z0-9] separated by '.', '_', '__' or '-', joined by '/'", name)
	}
	return nil
}

// ValidateTag checks a tag against the distribution-spec grammar.
func ValidateTag(tag string) error {
	if !tagRegexp.MatchString(tag) {
		return apierr.New(apierr.TagInvalid, "tag %q does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", tag)
	}
	return nil
}

// IsDigest reports whether ref is shaped like a digest (algorithm:encoded) rather than a tag.
func IsDigest(ref string) bool { return strings.Contains(ref, ":") }

// ParseDigest validates a digest and checks its algorithm against the allow-list.
func ParseDigest(s string, allowed []digest.Algorithm) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", apierr.New(apierr.DigestInvalid, "%q is not a valid digest: %v", s, err)
	}
	for _, a := range allowed {
		if d.Algorithm() == a {
			return d, nil
		}
	}
	return "", apierr.New(apierr.DigestInvalid, "digest algorithm %q is not accepted here; accepted: %s", d.Algorithm(), algList(allowed))
}

func algList(algs []digest.Algorithm) string {
	s := make([]string, len(algs))
	for i, a := range algs {
		s[i] = string(a)
	}
	return fmt.Sprint(strings.Join(s, ", "))
}
