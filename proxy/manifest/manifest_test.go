package manifest

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
)

var algs = []digest.Algorithm{digest.SHA256, digest.SHA512}

func desc(mt, content string) string {
	return `{"mediaType":"` + mt + `","digest":"` + digest.FromString(content).String() + `","size":` + strconv.Itoa(len(content)) + `}`
}

func TestParseManifest(t *testing.T) {
	cfg := desc("application/vnd.oci.image.config.v1+json", "cfg")
	layer := desc("application/vnd.oci.image.layer.v1.tar+gzip", "layer")
	img := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":` + cfg + `,"layers":[` + layer + `]}`
	tests := []struct {
		name, ct, body string
		wantErr        string // substring of the message; "" = accepted
		wantBlobs      int
		wantChildren   int
		wantArtifact   string
	}{
		{"oci image", OCIManifest, img, "", 2, 0, "application/vnd.oci.image.config.v1+json"},
		{"oci image without body mediaType", OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"layers":[]}`, "", 1, 0, "application/vnd.oci.image.config.v1+json"},
		{"artifact type wins over config", OCIManifest, `{"schemaVersion":2,"artifactType":"application/vnd.example","config":` + cfg + `,"layers":[]}`, "", 1, 0, "application/vnd.example"},
		{"docker schema2", DockerManifest, `{"schemaVersion":2,"mediaType":"` + DockerManifest + `","config":` + cfg + `,"layers":[` + layer + `]}`, "", 2, 0, ""},
		{"oci index", OCIIndex, `{"schemaVersion":2,"mediaType":"` + OCIIndex + `","manifests":[` + desc(OCIManifest, "m") + `]}`, "", 0, 1, ""},
		{"docker list", DockerList, `{"schemaVersion":2,"mediaType":"` + DockerList + `","manifests":[` + desc(DockerManifest, "m") + `]}`, "", 0, 1, ""},
		{"charset parameter", OCIManifest + "; charset=utf-8", img, "", 2, 0, "application/vnd.oci.image.config.v1+json"},
		{"generic content type trusts body", "application/json", img, "", 2, 0, "application/vnd.oci.image.config.v1+json"},
		{"non-distributable layer with URL is not required", OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"layers":[{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"` + digest.FromString("x").String() + `","size":1,"urls":["https://example.com/x"]}]}`, "", 1, 0, "application/vnd.oci.image.config.v1+json"},
		{"embedded data matching", OCIManifest, `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"` + digest.FromString("{}").String() + `","size":2,"data":"e30="},"layers":[]}`, "", 1, 0, "application/vnd.oci.empty.v1+json"},

		{"schema1 by header", schema1Signed, `{"schemaVersion":1}`, "schema1", 0, 0, ""},
		{"schema1 by body", OCIManifest, `{"schemaVersion":1,"fsLayers":[]}`, "schema1", 0, 0, ""},
		{"unknown content type", "application/vnd.example+json", img, "not a manifest media type", 0, 0, ""},
		{"no type anywhere", "", `{"schemaVersion":2,"config":` + cfg + `}`, "cannot tell", 0, 0, ""},
		{"header and body disagree", OCIIndex, img, "does not match", 0, 0, ""},
		{"not JSON", OCIManifest, `{"schemaVersion":`, "not valid JSON", 0, 0, ""},
		{"trailing data", OCIManifest, img + `{}`, "trailing data", 0, 0, ""},
		{"schemaVersion 3", OCIManifest, `{"schemaVersion":3,"config":` + cfg + `}`, "schemaVersion must be 2", 0, 0, ""},
		{"missing config", OCIManifest, `{"schemaVersion":2,"layers":[]}`, "needs a config", 0, 0, ""},
		{"image with manifests", OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"manifests":[]}`, "is this an index", 0, 0, ""},
		{"index without manifests", OCIIndex, `{"schemaVersion":2}`, "needs a manifests list", 0, 0, ""},
		{"index with layers", OCIIndex, `{"schemaVersion":2,"manifests":[],"layers":[]}`, "is this an image manifest", 0, 0, ""},
		{"bad layer digest", OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"layers":[{"mediaType":"x","digest":"sha256:zz","size":1}]}`, "layers[0]", 0, 0, ""},
		{"md5 digest", OCIManifest, `{"schemaVersion":2,"config":{"mediaType":"x","digest":"md5:d41d8cd98f00b204e9800998ecf8427e","size":1}}`, "config", 0, 0, ""},
		{"negative size", OCIManifest, `{"schemaVersion":2,"config":{"mediaType":"x","digest":"` + digest.FromString("a").String() + `","size":-1}}`, "negative size", 0, 0, ""},
		{"descriptor without media type", OCIManifest, `{"schemaVersion":2,"config":{"digest":"` + digest.FromString("a").String() + `","size":1}}`, "no mediaType", 0, 0, ""},
		{"embedded data not matching", OCIManifest, `{"schemaVersion":2,"config":{"mediaType":"x","digest":"` + digest.FromString("{}").String() + `","size":2,"data":"e319"}}`, "embedded data", 0, 0, ""},
		{"non-distributable without URLs", OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"layers":[{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"` + digest.FromString("x").String() + `","size":1}]}`, "names no URLs", 0, 0, ""},
		{"non-distributable with file URL", OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"layers":[{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"` + digest.FromString("x").String() + `","size":1,"urls":["file:///etc/passwd"]}]}`, "not an absolute http(s) URL", 0, 0, ""},
		{"bad subject", OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"subject":{"mediaType":"x","digest":"nope","size":1}}`, "subject", 0, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.ct, []byte(tt.body), algs)
			if tt.wantErr != "" {
				var e *apierr.Error
				if !errors.As(err, &e) || e.Code != apierr.ManifestInvalid || !strings.Contains(e.Message, tt.wantErr) {
					t.Fatalf("err = %v, want MANIFEST_INVALID mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Blobs) != tt.wantBlobs || len(p.Manifests) != tt.wantChildren || p.ArtifactType != tt.wantArtifact {
				t.Errorf("got %d blobs, %d children, artifactType %q; want %d, %d, %q", len(p.Blobs), len(p.Manifests), p.ArtifactType, tt.wantBlobs, tt.wantChildren, tt.wantArtifact)
			}
		})
	}
}
