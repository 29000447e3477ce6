package scanning

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/harbor"
	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

func TestRematch(t *testing.T) {
	ctx := context.Background()
	cs, _ := content.New(ctx, inmemory.New())
	md, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	dbPath := filepath.Join(t.TempDir(), "vulndb.sqlite")
	db := vulndb.Open(dbPath)
	defer db.Close()
	svc := New(cs, md, &scan.Scanner{}, db, nil, nil, slog.New(slog.DiscardHandler), nil)

	withInv, _ := json.Marshal(scan.Result{Inventory: &inventory.Inventory{Packages: []inventory.Package{
		{Ecosystem: "npm", Name: "lodash", Version: "4.17.15", Path: "app/node_modules/lodash/package.json"},
	}}})
	a, b := digest.FromString("a"), digest.FromString("b")
	for d, res := range map[digest.Digest][]byte{a: withInv, b: []byte(`{}`)} {
		if err := md.ScanPut(ctx, meta.Scan{Digest: d, Repo: "r", Scanned: time.Now(), Scanner: scan.Version, Complete: true, Result: res}); err != nil {
			t.Fatal(err)
		}
	}
	if err := svc.Rematch(ctx); err == nil {
		t.Fatal("Rematch without a database succeeded")
	}
	info, err := vulndb.Import(ctx, dbPath, "../../attest/vulndb/testdata/osv", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Rematch(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Rematch did not return (an inventory-less scan kept it looping)")
	}
	sa, _ := md.ScanGet(ctx, a)
	if sa.DBVersion != info.Version || !strings.Contains(string(sa.Vulns), "CVE-2020-8203") {
		t.Errorf("scan a after rematch: version %s vulns %s", sa.DBVersion, sa.Vulns)
	}
	if sb, _ := md.ScanGet(ctx, b); sb.DBVersion != info.Version {
		t.Errorf("scan b not marked as matched: %+v", sb)
	}
}

type fakeExternal struct{ got harbor.Image }

func (f *fakeExternal) Scan(_ context.Context, img harbor.Image) ([]vulndb.Finding, string, error) {
	f.got = img
	return []vulndb.Finding{{ID: "CVE-2023-0286", Package: "openssl", Installed: "3.0.7-1", Fixed: "3.0.8-1", Severity: vulndb.High}}, "Trivy 0.74.0", nil
}

func TestExternalScannerPerRoute(t *testing.T) {
	ctx := context.Background()
	cs, _ := content.New(ctx, inmemory.New())
	md, _ := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	defer md.Close()
	routes, err := route.NewTable([]route.Route{{Prefix: "vendor", Kind: route.Push}, {Prefix: "", Kind: route.Push}})
	if err != nil {
		t.Fatal(err)
	}
	svc := New(cs, md, &scan.Scanner{}, vulndb.Open(filepath.Join(t.TempDir(), "none.sqlite")), routes, nil, slog.New(slog.DiscardHandler), nil)
	ext := &fakeExternal{}
	svc.UseExternal("vendor", ext, "http://gatehouse.internal:5000")
	d := digest.FromString("manifest")
	md.ManifestPut(ctx, meta.Manifest{Repo: "vendor/app", Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10})
	sc, err := svc.ScanNow(ctx, "vendor/app", d)
	if err != nil {
		t.Fatal(err)
	}
	if ext.got.Repository != "vendor/app" || ext.got.Digest != d || ext.got.RegistryURL != "http://gatehouse.internal:5000" {
		t.Errorf("the adapter was asked for %+v", ext.got)
	}
	if !sc.Complete || sc.Scanner != "external: Trivy 0.74.0" || !strings.Contains(string(sc.Vulns), "CVE-2023-0286") {
		t.Errorf("stored scan: %+v vulns %s", sc, sc.Vulns)
	}
	// another route's image is not sent to the adapter (the built-in scanner takes it, and here
	// fails for want of layers)
	ext.got = harbor.Image{}
	other := digest.FromString("other")
	md.ManifestPut(ctx, meta.Manifest{Repo: "team/app", Digest: other, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10})
	svc.ScanNow(ctx, "team/app", other)
	if ext.got.Repository != "" {
		t.Errorf("an image of another route went to the adapter: %+v", ext.got)
	}
}
