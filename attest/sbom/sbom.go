package sbom

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
)

// MediaType is the SBOM's media type and the referrer's artifactType.
const MediaType = "application/vnd.cyclonedx+json"

// CycloneDX renders an inventory as a CycloneDX JSON document about the image name@dgst.
func CycloneDX(name string, dgst digest.Digest, inv *inventory.Inventory, created time.Time) ([]byte, error) {
	bom := cdx.NewBOM()
	bom.SerialNumber = "urn:uuid:" + uuidFrom(dgst)
	bom.Metadata = &cdx.Metadata{
		Timestamp: created.UTC().Format(time.RFC3339),
		Tools: &cdx.ToolsChoice{Components: &[]cdx.Component{{
			Type: cdx.ComponentTypeApplication, Name: "gatehouse", Version: inv.Scanner,
		}}},
		Component: &cdx.Component{
			BOMRef: dgst.String(), Type: cdx.ComponentTypeContainer, Name: name, Version: dgst.String(),
			PackageURL: "pkg:oci/" + lastPart(name) + "@" + strings.Replace(dgst.String(), ":", "%3A", 1) + "?repository_url=" + name,
		},
	}
	comps := make([]cdx.Component, 0, len(inv.Packages))
	seen := map[string]bool{}
	for _, p := range inv.Packages {
		ref := p.PURL
		if ref == "" {
			ref = p.Ecosystem + "/" + p.Name + "@" + p.Version
		}
		ref += "#" + p.Path
		if seen[ref] {
			continue
		}
		seen[ref] = true
		props := []cdx.Property{{Name: "gatehouse:ecosystem", Value: p.Ecosystem}, {Name: "gatehouse:path", Value: p.Path}}
		if p.Layer != "" {
			props = append(props, cdx.Property{Name: "gatehouse:layer", Value: p.Layer.String()})
		}
		typ := cdx.ComponentTypeLibrary
		if p.Extractor != "" && strings.HasPrefix(p.Extractor, "os/") {
			typ = cdx.ComponentTypeApplication
		}
		comps = append(comps, cdx.Component{BOMRef: ref, Type: typ, Name: p.Name, Version: p.Version, PackageURL: p.PURL, Properties: &props})
	}
	bom.Components = &comps
	var buf bytes.Buffer
	enc := cdx.NewBOMEncoder(&buf, cdx.BOMFileFormatJSON)
	if err := enc.EncodeVersion(bom, cdx.SpecVersion1_6); err != nil {
		return nil, fmt.Errorf("sbom: %w", err)
	}
	return buf.Bytes(), nil
}

func lastPart(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}

// uuidFrom makes a stable RFC 4122 version-5-shaped UUID from a digest, so one image's SBOM
// keeps one serial number.
func uuidFrom(d digest.Digest) string {
	h := d.Encoded()
	if len(h) < 32 {
		h = digest.FromString(d.String()).Encoded()
	}
	b := []byte(h[:32])
	b[12] = '5'
	b[16] = "89ab"[int(b[16])%4]
	return string(b[0:8]) + "-" + string(b[8:12]) + "-" + string(b[12:16]) + "-" + string(b[16:20]) + "-" + string(b[20:32])
}
