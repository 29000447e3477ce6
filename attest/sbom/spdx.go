package sbom

import (
	"bytes"
	"fmt"
	"regexp"
	"time"

	"github.com/opencontainers/go-digest"
	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdx"
	"github.com/spdx/tools-golang/spdx/v2/common"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
)

// SPDXMediaType is the SPDX document's media type and the referrer's artifactType.
const SPDXMediaType = "application/spdx+json"

var idUnsafe = regexp.MustCompile(`[^a-zA-Z0-9.-]+`)

// SPDX renders an inventory as an SPDX 2.3 JSON document about the image name@dgst: the image
// as the described package, which contains every package found.
func SPDX(name string, dgst digest.Digest, inv *inventory.Inventory, created time.Time) ([]byte, error) {
	imageID := common.ElementID("Image")
	doc := &spdx.Document{
		SPDXVersion:       spdx.Version,
		DataLicense:       spdx.DataLicense,
		SPDXIdentifier:    "DOCUMENT",
		DocumentName:      name + "@" + dgst.String(),
		DocumentNamespace: "https://gatehouse.dev/spdx/" + name + "/" + dgst.Encoded(),
		CreationInfo: &spdx.CreationInfo{
			Created:  created.UTC().Format(time.RFC3339),
			Creators: []common.Creator{{CreatorType: "Tool", Creator: "gatehouse (" + inv.Scanner + ")"}},
		},
		Packages: []*spdx.Package{{
			PackageName: name, PackageSPDXIdentifier: imageID, PackageVersion: dgst.String(),
			PackageDownloadLocation: "NOASSERTION", PrimaryPackagePurpose: "CONTAINER",
			PackageChecksums: []common.Checksum{{Algorithm: common.SHA256, Value: dgst.Encoded()}},
		}},
		Relationships: []*spdx.Relationship{{
			RefA: common.MakeDocElementID("", "DOCUMENT"), RefB: common.MakeDocElementID("", string(imageID)), Relationship: "DESCRIBES",
		}},
	}
	seen := map[common.ElementID]bool{}
	for i, p := range inv.Packages {
		id := common.ElementID(fmt.Sprintf("Package-%d-%s", i, idUnsafe.ReplaceAllString(p.Name+"-"+p.Version, "-")))
		if seen[id] {
			continue
		}
		seen[id] = true
		pkg := &spdx.Package{
			PackageName: p.Name, PackageSPDXIdentifier: id, PackageVersion: p.Version,
			PackageDownloadLocation: "NOASSERTION", PackageSourceInfo: "found at " + p.Path + " in layer " + p.Layer.String(),
		}
		if p.PURL != "" {
			pkg.PackageExternalReferences = []*spdx.PackageExternalReference{{Category: "PACKAGE-MANAGER", RefType: "purl", Locator: p.PURL}}
		}
		doc.Packages = append(doc.Packages, pkg)
		doc.Relationships = append(doc.Relationships, &spdx.Relationship{
			RefA: common.MakeDocElementID("", string(imageID)), RefB: common.MakeDocElementID("", string(id)), Relationship: "CONTAINS",
		})
	}
	var buf bytes.Buffer
	if err := spdxjson.Write(doc, &buf); err != nil {
		return nil, fmt.Errorf("sbom: spdx: %w", err)
	}
	return buf.Bytes(), nil
}
