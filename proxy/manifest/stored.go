package manifest

import (
	"encoding/json"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Stored is a stored manifest as Gatehouse reads it back: Parse checked it when it entered, by
// push or from an upstream, so reading it again needs no checks.
type Stored struct {
	MediaType    string            `json:"mediaType"`
	ArtifactType string            `json:"artifactType"`
	Config       *v1.Descriptor    `json:"config"`
	Layers       []v1.Descriptor   `json:"layers"`
	Manifests    []v1.Descriptor   `json:"manifests"`
	Subject      *v1.Descriptor    `json:"subject"`
	Annotations  map[string]string `json:"annotations"`
}

// Read reads a stored manifest.
func Read(body []byte) (Stored, error) {
	var m Stored
	err := json.Unmarshal(body, &m)
	return m, err
}

// IsImage says whether a manifest media type is an image manifest's (not an index's).
func IsImage(mediaType string) bool { return mediaType == OCIManifest || mediaType == DockerManifest }

// Index says whether the manifest lists other manifests (an index or a Docker manifest list).
func (m Stored) Index() bool { return len(m.Manifests) > 0 }

// Blobs lists the blobs the manifest references: its config, then its layers.
func (m Stored) Blobs() []digest.Digest {
	var out []digest.Digest
	if m.Config != nil && m.Config.Digest != "" {
		out = append(out, m.Config.Digest)
	}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// Runnable says whether any of its layers is one a container runtime unpacks.
func (m Stored) Runnable() bool {
	for _, l := range m.Layers {
		if Runnable(l.MediaType) {
			return true
		}
	}
	return false
}

// Image says whether the manifest is an image a scan reads: an image manifest whose config is an
// image config, or whose layers a runtime would unpack whatever its config says. Anything else
// (an index, a signature, an SBOM, a chart) is an artifact.
func (m Stored) Image() bool {
	if m.Index() || m.Config == nil {
		return false
	}
	switch m.Config.MediaType {
	case v1.MediaTypeImageConfig, DockerConfig:
		return true
	}
	return m.Runnable()
}

// DockerConfig is the media type of a Docker image config.
const DockerConfig = "application/vnd.docker.container.image.v1+json"

// Metadata says whether the manifest is metadata about another (a signature, an SBOM, an
// attestation): it has a subject and no layer a runtime would unpack. Anything runnable is an
// image, whatever else it says about itself.
func (m Stored) Metadata() bool {
	return m.Subject != nil && !m.Index() && !m.Runnable()
}
