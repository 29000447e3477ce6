package sbom

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	spdxjson "github.com/spdx/tools-golang/json"
	"github.com/spdx/tools-golang/spdxlib"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/sbom/sbomtest"
)

func TestCycloneDXValidates(t *testing.T) {
	inv := &inventory.Inventory{Scanner: "osv-scalibr 0.5.3", Packages: []inventory.Package{
		{Ecosystem: "Debian:12", Name: "libc6", Version: "2.36-9+deb12u14", PURL: "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&distro=bookworm", Path: "var/lib/dpkg/status", Layer: "sha256:aa", Extractor: "os/dpkg"},
		{Ecosystem: "npm", Name: "lodash", Version: "4.17.15", PURL: "pkg:npm/lodash@4.17.15", Path: "app/node_modules/lodash/package.json", Extractor: "javascript/packagejson"},
		{Ecosystem: "Go", Name: "golang.org/x/net", Version: "0.30.0", Path: "app/server", Extractor: "go/binary"},
	}}
	doc, err := CycloneDX("docker.io/library/app", digest.FromString("image"), inv, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := sbomtest.ValidateCycloneDX(t, doc); err != nil {
		t.Fatalf("the SBOM does not validate against CycloneDX 1.6: %v\n%s", err, doc)
	}
	var bom struct {
		SpecVersion string `json:"specVersion"`
		Components  []struct {
			Name, Version, Purl string
		}
	}
	json.Unmarshal(doc, &bom)
	if bom.SpecVersion != "1.6" || len(bom.Components) != 3 || bom.Components[1].Purl != "pkg:npm/lodash@4.17.15" {
		t.Errorf("bom: %+v", bom)
	}
	// and a broken document does not validate (the check can fail)
	if err := sbomtest.ValidateCycloneDX(t, []byte(`{"bomFormat":"CycloneDX","specVersion":"1.6","components":[{"name":1}]}`)); err == nil {
		t.Error("an invalid document validated")
	}
}

func TestSPDX(t *testing.T) {
	inv := &inventory.Inventory{Scanner: "osv-scalibr 0.5.3", Packages: []inventory.Package{
		{Ecosystem: "npm", Name: "lodash", Version: "4.17.15", PURL: "pkg:npm/lodash@4.17.15", Path: "app/node_modules/lodash/package.json", Layer: "sha256:bb"},
		{Ecosystem: "Go", Name: "golang.org/x/net", Version: "0.30.0", Path: "app/server"},
	}}
	doc, err := SPDX("team/app", digest.FromString("image"), inv, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := spdxjson.Read(bytes.NewReader(doc))
	if err != nil {
		t.Fatalf("the SPDX document does not read back: %v\n%s", err, doc)
	}
	if err := spdxlib.ValidateDocument(parsed); err != nil {
		t.Fatalf("invalid: %v", err)
	}
	if parsed.SPDXVersion != "SPDX-2.3" || len(parsed.Packages) != 3 || parsed.Packages[1].PackageExternalReferences[0].Locator != "pkg:npm/lodash@4.17.15" {
		t.Errorf("document: %+v", parsed)
	}
	var raw map[string]any
	json.Unmarshal(doc, &raw)
	for _, field := range []string{"spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace", "creationInfo", "packages", "relationships"} {
		if _, ok := raw[field]; !ok {
			t.Errorf("required SPDX field %s missing", field)
		}
	}
}
