package manifest

import (
	"testing"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// FuzzParse: no manifest body (pushed by a client or served by an upstream) makes Parse panic,
// and an accepted one names only well-formed blob and child digests. `go test` runs the seeds;
// `go test -fuzz FuzzParse ./proxy/manifest/` searches further.
func FuzzParse(f *testing.F) {
	cfg := desc("application/vnd.oci.image.config.v1+json", "cfg")
	layer := desc("application/vnd.oci.image.layer.v1.tar+gzip", "layer")
	for _, seed := range []struct{ ct, body string }{
		{OCIManifest, `{"schemaVersion":2,"mediaType":"` + OCIManifest + `","config":` + cfg + `,"layers":[` + layer + `]}`},
		{DockerManifest, `{"schemaVersion":2,"mediaType":"` + DockerManifest + `","config":` + cfg + `,"layers":[` + layer + `]}`},
		{OCIIndex, `{"schemaVersion":2,"mediaType":"` + OCIIndex + `","manifests":[` + desc(OCIManifest, "m") + `]}`},
		{DockerList, `{"schemaVersion":2,"manifests":[` + desc(DockerManifest, "m") + `]}`},
		{OCIManifest, `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="},"subject":` + desc(OCIManifest, "s") + `,"layers":[]}`},
		{OCIManifest, `{"schemaVersion":2,"config":` + cfg + `,"layers":[{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar","digest":"sha256:zz","size":-1,"urls":["file:///x"]}]}`},
		{"application/json", `{"schemaVersion":1,"fsLayers":[]}`},
		{"", `[`},
	} {
		f.Add(seed.ct, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		p, err := Parse(ct, body, algs)
		if err != nil {
			return
		}
		for _, d := range append(append([]v1.Descriptor(nil), p.Blobs...), p.Manifests...) {
			if err := d.Digest.Validate(); err != nil || d.Size < 0 {
				t.Fatalf("accepted a manifest naming %q of %d bytes: %v", d.Digest, d.Size, err)
			}
		}
	})
}
