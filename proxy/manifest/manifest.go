package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime"
	"net/url"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
)

// Manifest media types Gatehouse stores.
const (
	OCIManifest    = v1.MediaTypeImageManifest
	OCIIndex       = v1.MediaTypeImageIndex
	DockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	DockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	schema1        = "application/vnd.docker.distribution.manifest.v1+json"
	schema1Signed  = "application/vnd.docker.distribution.manifest.v1+prettyjws"
)

// MediaTypes are the manifest media types Gatehouse accepts and stores.
var MediaTypes = []string{OCIManifest, OCIIndex, DockerManifest, DockerList}

// nonDistributable layers are fetched by clients from their URLs, so a push need not carry them.
var nonDistributable = map[string]bool{
	"application/vnd.oci.image.layer.nondistributable.v1.tar":      true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": true,
	"application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": true,
	"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":    true,
}

// Parsed is what Gatehouse needs to know of a manifest to store and index it.
type Parsed struct {
	MediaType    string
	Blobs        []v1.Descriptor // config and layers that must already be in the repository
	Manifests    []v1.Descriptor // an index's children, which must already be in the repository
	Subject      *v1.Descriptor
	ArtifactType string
	Annotations  map[string]string
}

type rawManifest struct {
	SchemaVersion *int              `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	ArtifactType  string            `json:"artifactType"`
	Config        *v1.Descriptor    `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Manifests     []v1.Descriptor   `json:"manifests"`
	Subject       *v1.Descriptor    `json:"subject"`
	Annotations   map[string]string `json:"annotations"`
	FSLayers      json.RawMessage   `json:"fsLayers"`
}

// Parse checks a manifest: its media type (from Content-Type, which must agree
// with the body's mediaType), its JSON shape, and every descriptor in it.
func Parse(contentType string, body []byte, algs []digest.Algorithm) (Parsed, error) {
	ct := contentType
	if ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err == nil {
			ct = mt
		}
	}
	var raw rawManifest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return Parsed{}, apierr.New(apierr.ManifestInvalid, "the manifest is not valid JSON: %v", err)
	}
	if dec.More() {
		return Parsed{}, apierr.New(apierr.ManifestInvalid, "the manifest has trailing data after its JSON object")
	}
	if ct == schema1 || ct == schema1Signed || raw.MediaType == schema1 || raw.MediaType == schema1Signed ||
		(raw.SchemaVersion != nil && *raw.SchemaVersion == 1) || len(raw.FSLayers) > 0 {
		return Parsed{}, apierr.New(apierr.ManifestInvalid,
			"Docker schema1 manifests are not supported (deprecated since 2017 and unsigned by modern tools); push the image as OCI or Docker schema2, e.g. with `skopeo copy --format oci`")
	}
	mt := ct
	if !IsMediaType(mt) {
		if ct != "" && ct != "application/json" && ct != "application/octet-stream" {
			return Parsed{}, apierr.New(apierr.ManifestInvalid,
				"Content-Type %q is not a manifest media type; send one of %s", contentType, strings.Join(MediaTypes, ", "))
		}
		mt = raw.MediaType // lenient clients that send no manifest type: trust the body
		if !IsMediaType(mt) {
			return Parsed{}, apierr.New(apierr.ManifestInvalid,
				"cannot tell the manifest's media type: Content-Type is %q and the body's mediaType is %q; send one of %s",
				contentType, raw.MediaType, strings.Join(MediaTypes, ", "))
		}
	}
	if raw.MediaType != "" && raw.MediaType != mt {
		return Parsed{}, apierr.New(apierr.ManifestInvalid,
			"Content-Type %q does not match the manifest's mediaType %q", mt, raw.MediaType)
	}
	if raw.SchemaVersion == nil || *raw.SchemaVersion != 2 {
		return Parsed{}, apierr.New(apierr.ManifestInvalid, "schemaVersion must be 2")
	}
	p := Parsed{MediaType: mt, Subject: raw.Subject, ArtifactType: raw.ArtifactType, Annotations: raw.Annotations}
	switch mt {
	case OCIManifest, DockerManifest:
		if raw.Config == nil {
			return Parsed{}, apierr.New(apierr.ManifestInvalid, "an image manifest needs a config descriptor")
		}
		if raw.Manifests != nil {
			return Parsed{}, apierr.New(apierr.ManifestInvalid, "an image manifest has no manifests field; is this an index?")
		}
		if raw.Layers == nil && mt == DockerManifest {
			return Parsed{}, apierr.New(apierr.ManifestInvalid, "a Docker schema2 manifest needs a layers list")
		}
		if err := checkDescriptor("config", *raw.Config, algs); err != nil {
			return Parsed{}, err
		}
		p.Blobs = append(p.Blobs, *raw.Config)
		for i, l := range raw.Layers {
			if err := checkDescriptor(fmt.Sprintf("layers[%d]", i), l, algs); err != nil {
				return Parsed{}, err
			}
			if nonDistributable[l.MediaType] {
				if err := checkURLs(fmt.Sprintf("layers[%d]", i), l.URLs); err != nil {
					return Parsed{}, err
				}
				continue
			}
			p.Blobs = append(p.Blobs, l)
		}
		if p.ArtifactType == "" && mt == OCIManifest {
			p.ArtifactType = raw.Config.MediaType
		}
	case OCIIndex, DockerList:
		if raw.Manifests == nil {
			return Parsed{}, apierr.New(apierr.ManifestInvalid, "an index needs a manifests list")
		}
		if raw.Config != nil || raw.Layers != nil {
			return Parsed{}, apierr.New(apierr.ManifestInvalid, "an index has no config or layers; is this an image manifest?")
		}
		for i, m := range raw.Manifests {
			if err := checkDescriptor(fmt.Sprintf("manifests[%d]", i), m, algs); err != nil {
				return Parsed{}, err
			}
			p.Manifests = append(p.Manifests, m)
		}
	}
	if raw.Subject != nil {
		if err := checkDescriptor("subject", *raw.Subject, algs); err != nil {
			return Parsed{}, err
		}
	}
	return p, nil
}

// IsMediaType reports whether mt is one of the manifest media types Gatehouse stores.
func IsMediaType(mt string) bool { return slices.Contains(MediaTypes, mt) }

func checkDescriptor(where string, d v1.Descriptor, algs []digest.Algorithm) error {
	if d.MediaType == "" {
		return apierr.New(apierr.ManifestInvalid, "%s has no mediaType", where)
	}
	if err := d.Digest.Validate(); err != nil {
		return apierr.New(apierr.ManifestInvalid, "%s: %q is not a valid digest: %v", where, d.Digest, err)
	}
	if !slices.Contains(algs, d.Digest.Algorithm()) {
		return apierr.New(apierr.ManifestInvalid, "%s: digest algorithm %q is not accepted here", where, d.Digest.Algorithm())
	}
	if d.Size < 0 {
		return apierr.New(apierr.ManifestInvalid, "%s has a negative size", where)
	}
	if len(d.Data) > 0 {
		if int64(len(d.Data)) != d.Size || d.Digest.Algorithm().FromBytes(d.Data) != d.Digest {
			return apierr.New(apierr.ManifestInvalid, "%s: the embedded data does not match its digest and size", where)
		}
	}
	return nil
}

func checkURLs(where string, urls []string) error {
	if len(urls) == 0 {
		return apierr.New(apierr.ManifestInvalid, "%s is non-distributable but names no URLs to fetch it from", where)
	}
	for _, u := range urls {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			return apierr.New(apierr.ManifestInvalid, "%s: URL %q is not an absolute http(s) URL", where, u)
		}
	}
	return nil
}

// Runnable says whether a layer media type is one container runtimes unpack into a filesystem
// (containerd's images.IsLayerType: the OCI and Docker layer types, distributable or not).
// Matching by prefix also catches compressions and variants not listed anywhere yet.
func Runnable(mediaType string) bool {
	mt, _, _ := strings.Cut(mediaType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return strings.HasPrefix(mt, "application/vnd.oci.image.layer.") || strings.HasPrefix(mt, "application/vnd.docker.image.rootfs.")
}
