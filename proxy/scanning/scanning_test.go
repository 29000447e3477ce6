package scanning

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/harbor"
	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

// TestMatch: Match matches a stored inventory against the database in place and stores what it
// found, marks a result with no inventory as matched, changes nothing without a database, and
// does not match again with the same database version.
func TestMatch(t *testing.T) {
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
	svc := New(cs, md, &scan.Scanner{}, db, nil, slog.New(slog.DiscardHandler), nil, 1)

	withInv, _ := json.Marshal(scan.Result{Inventory: &inventory.Inventory{Packages: []inventory.Package{
		{Ecosystem: "npm", Name: "lodash", Version: "4.17.15", Path: "app/node_modules/lodash/package.json"},
	}}})
	a, b := digest.FromString("a"), digest.FromString("b")
	for d, res := range map[digest.Digest][]byte{a: withInv, b: []byte(`{}`)} {
		if err := md.ScanPut(ctx, meta.Scan{Digest: d, Repo: "r", Scanned: time.Now(), Scanner: scan.Version, Complete: true, Result: res}); err != nil {
			t.Fatal(err)
		}
	}
	stored := func(d digest.Digest) Evidence {
		t.Helper()
		sc, err := md.ScanGet(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		return Evidence{Scan: sc}
	}

	// without a database: nothing changes, and it is no error
	for _, d := range []digest.Digest{a, b} {
		ev, err := svc.Match(ctx, stored(d))
		if err != nil {
			t.Fatalf("Match without a database: %v", err)
		}
		if ev.Scan.DBVersion != "" || ev.Scan.Vulns != nil || !ev.Scan.Matched.IsZero() {
			t.Errorf("Match without a database changed the evidence: %+v", ev.Scan)
		}
		if sc := stored(d).Scan; sc.DBVersion != "" || !sc.Matched.IsZero() {
			t.Errorf("Match without a database changed the stored scan: %+v", sc)
		}
	}

	info, err := vulndb.Import(ctx, dbPath, "../../attest/vulndb/testdata/osv", nil)
	if err != nil {
		t.Fatal(err)
	}
	ea, err := svc.Match(ctx, stored(a))
	if err != nil {
		t.Fatal(err)
	}
	if ea.Scan.DBVersion != info.Version || !strings.Contains(string(ea.Scan.Vulns), "CVE-2020-8203") {
		t.Errorf("scan a after Match: version %s vulns %s", ea.Scan.DBVersion, ea.Scan.Vulns)
	}
	if sa := stored(a).Scan; sa.DBVersion != info.Version || !strings.Contains(string(sa.Vulns), "CVE-2020-8203") {
		t.Errorf("stored scan a after Match: version %s vulns %s", sa.DBVersion, sa.Vulns)
	}
	eb, err := svc.Match(ctx, stored(b))
	if err != nil {
		t.Fatal(err)
	}
	if eb.Scan.DBVersion != info.Version {
		t.Errorf("scan b (no inventory) not marked as matched: %+v", eb.Scan)
	}
	if sb := stored(b).Scan; sb.DBVersion != info.Version {
		t.Errorf("stored scan b (no inventory) not marked as matched: %+v", sb)
	}

	// the same database version again: nothing is written
	for _, d := range []digest.Digest{a, b} {
		before := stored(d).Scan
		time.Sleep(10 * time.Millisecond) // a write now would store a later Matched
		ev, err := svc.Match(ctx, Evidence{Scan: before})
		if err != nil {
			t.Fatal(err)
		}
		after := stored(d).Scan
		if !after.Matched.Equal(before.Matched) || !ev.Scan.Matched.Equal(before.Matched) || string(after.Vulns) != string(before.Vulns) {
			t.Errorf("%s was matched again with the same database version: matched %v, then %v", d, before.Matched, after.Matched)
		}
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
	svc := New(cs, md, &scan.Scanner{}, vulndb.Open(filepath.Join(t.TempDir(), "none.sqlite")), nil, slog.New(slog.DiscardHandler), nil, 1)
	svc.RegistryURL = "http://gatehouse.internal:5000"
	ext := &fakeExternal{}
	vendor := externalRoute(ext, "vendor/app")
	d := digest.FromString("manifest")
	md.ManifestPut(ctx, meta.Manifest{Repo: "vendor/app", Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 10})
	ev, err := svc.Evidence(ctx, vendor, d)
	if err != nil {
		t.Fatal(err)
	}
	sc := ev.Scan
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
	svc.Evidence(ctx, pushRoute("team/app"), other)
	if ext.got.Repository != "" {
		t.Errorf("an image of another route went to the adapter: %+v", ext.got)
	}
}

// pushRoute resolves name to a push route scanned by the built-in scanner.
func pushRoute(name string) route.Resolved {
	return route.Resolved{Route: &route.Route{Prefix: "", Kind: route.Push}, Name: name}
}

// externalRoute resolves name to the vendor push route, which ext scans.
func externalRoute(ext route.ExternalScanner, name string) route.Resolved {
	return route.Resolved{Route: &route.Route{Prefix: "vendor", Kind: route.Push, Admission: route.Admission{Scanner: ext}}, Name: name}
}

// pushImage stores an image of the given layers (bytes, and their descriptors' urls) in repo.
func pushImage(t *testing.T, cs *content.Store, md *sqlite.Store, repo string, layers [][]byte, urls [][]string, skipUpload ...int) digest.Digest {
	t.Helper()
	ctx := context.Background()
	put := func(b []byte) digest.Digest {
		u, err := cs.UploadCreate(ctx, repo)
		if err != nil {
			t.Fatal(err)
		}
		u.Write(b)
		if _, err := cs.BlobCommit(ctx, u, digest.FromBytes(b)); err != nil {
			t.Fatal(err)
		}
		return digest.FromBytes(b)
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"},"config":{"User":"app"}}`)
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: put(cfg), Size: int64(len(cfg))}}
	m.SchemaVersion = 2
	for i, l := range layers {
		d := digest.FromBytes(l)
		skip := false
		for _, k := range skipUpload {
			skip = skip || k == i
		}
		if !skip {
			put(l)
		}
		desc := v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: d, Size: int64(len(l))}
		if i < len(urls) && urls[i] != nil {
			desc.URLs, desc.MediaType = urls[i], "application/vnd.oci.image.layer.nondistributable.v1.tar"
		}
		m.Layers = append(m.Layers, desc)
	}
	body, _ := json.Marshal(m)
	d := digest.FromBytes(body)
	if err := cs.ManifestPut(ctx, d, body); err != nil {
		t.Fatal(err)
	}
	if err := md.ManifestPut(ctx, meta.Manifest{Repo: repo, Digest: d, MediaType: v1.MediaTypeImageManifest, Size: int64(len(body)), Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return d
}

// recordingScanner reads every layer to its end and counts scans running at once.
type recordingScanner struct {
	mu            sync.Mutex
	layers        []digest.Digest
	running, peak atomic.Int32
	hold          time.Duration
}

func (r *recordingScanner) Scan(ctx context.Context, img scan.Image) (*scan.Result, error) {
	n := r.running.Add(1)
	defer r.running.Add(-1)
	for p := r.peak.Load(); n > p && !r.peak.CompareAndSwap(p, n); p = r.peak.Load() {
	}
	for _, l := range img.Layers {
		rc, err := l.Open()
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, io.LimitReader(rc, 3)) // read a little; Close reads the rest
		rc.Close()
		r.mu.Lock()
		r.layers = append(r.layers, l.Digest)
		r.mu.Unlock()
	}
	time.Sleep(r.hold)
	return &scan.Result{Digest: img.Digest, Complete: true, Inventory: &inventory.Inventory{}, Findings: []scan.Finding{}}, nil
}

func newService(t *testing.T, sc Scanner, workers int) (*Service, *content.Store, *sqlite.Store) {
	t.Helper()
	ctx := context.Background()
	cs, _ := content.New(ctx, inmemory.New())
	md, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	return New(cs, md, sc, vulndb.Open(filepath.Join(t.TempDir(), "none.sqlite")), nil, slog.New(slog.DiscardHandler), nil, workers), cs, md
}

func TestEveryLayerIsReadAndRecorded(t *testing.T) {
	rs := &recordingScanner{}
	svc, cs, md := newService(t, rs, 1)
	layers := [][]byte{[]byte("layer one"), []byte("layer two, which names urls")}
	d := pushImage(t, cs, md, "team/app", layers, [][]string{nil, {"https://example.com/layer"}})
	ev, err := svc.Evidence(context.Background(), pushRoute("team/app"), d)
	if err != nil {
		t.Fatal(err)
	}
	sc := ev.Scan
	if len(rs.layers) != 2 || rs.layers[1] != digest.FromBytes(layers[1]) {
		t.Errorf("layers the scanner saw: %v (a layer with urls was skipped?)", rs.layers)
	}
	var res scan.Result
	json.Unmarshal(sc.Result, &res)
	want := map[digest.Digest]bool{digest.FromBytes(layers[0]): true, digest.FromBytes(layers[1]): true}
	for _, b := range res.Blobs {
		delete(want, b)
	}
	if len(want) != 0 || len(res.Blobs) != 3 {
		t.Errorf("blobs recorded as read: %v", res.Blobs)
	}
}

func TestMissingLayerWithURLsFailsTheScan(t *testing.T) {
	svc, cs, md := newService(t, &recordingScanner{}, 1)
	d := pushImage(t, cs, md, "team/app", [][]byte{[]byte("a foreign layer")}, [][]string{{"https://example.com/layer"}}, 0)
	ev, err := svc.Evidence(context.Background(), pushRoute("team/app"), d)
	if err == nil {
		t.Fatal("a scan of an image whose layer is missing succeeded")
	}
	if got, _ := md.ScanGet(context.Background(), d); !strings.Contains(got.Error, "never fetches one from the urls") || ev.Scan.Error == "" {
		t.Errorf("recorded scan error %q, want one naming the urls", got.Error)
	}
}

func TestScansRunAtMostWorkersAtOnce(t *testing.T) {
	rs := &recordingScanner{hold: 100 * time.Millisecond}
	svc, cs, md := newService(t, rs, 2)
	var ds []digest.Digest
	for i := range 6 {
		ds = append(ds, pushImage(t, cs, md, "team/app", [][]byte{[]byte(strings.Repeat("x", i+1))}, nil))
	}
	var wg sync.WaitGroup
	for _, d := range ds {
		wg.Add(1)
		go func() { defer wg.Done(); svc.Evidence(context.Background(), pushRoute("team/app"), d) }() // as admissions do
	}
	wg.Wait()
	if p := rs.peak.Load(); p != 2 {
		t.Errorf("%d scans ran at once, want 2 (scan.workers)", p)
	}
	for _, d := range ds {
		if _, err := md.ScanGet(context.Background(), d); err != nil {
			t.Errorf("scan of %s not recorded: %v", d, err)
		}
	}
}

func TestRemoveStaleTrees(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{scan.TreePrefix + "123", scan.TreePrefix + "456/usr/lib"} {
		os.MkdirAll(filepath.Join(dir, name), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "keep.txt"), []byte("x"), 0o644)
	n, err := RemoveStaleTrees(dir)
	if err != nil || n != 2 {
		t.Fatalf("removed %d, %v", n, err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 1 || left[0].Name() != "keep.txt" {
		t.Errorf("left %v", left)
	}
}

func TestExternalScanNeverStandsForABuiltinRoute(t *testing.T) {
	ctx := context.Background()
	rs := &recordingScanner{}
	cs, _ := content.New(ctx, inmemory.New())
	md, _ := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	defer md.Close()
	svc := New(cs, md, rs, vulndb.Open(filepath.Join(t.TempDir(), "none.sqlite")), nil, slog.New(slog.DiscardHandler), nil, 1)
	svc.RegistryURL = "http://gatehouse.internal:5000"
	layers := [][]byte{[]byte("the same image in two repositories")}
	d := pushImage(t, cs, md, "vendor/app", layers, nil)
	if d2 := pushImage(t, cs, md, "team/app", layers, nil); d2 != d {
		t.Fatalf("digests differ: %s %s", d, d2)
	}
	if ev, err := svc.Evidence(ctx, externalRoute(&fakeExternal{}, "vendor/app"), d); err != nil || !strings.HasPrefix(ev.Scan.Scanner, "external: ") {
		t.Fatalf("vendor scan: %+v %v", ev.Scan, err)
	}
	ev, err := svc.Evidence(ctx, pushRoute("team/app"), d)
	if err != nil {
		t.Fatal(err)
	}
	if sc := ev.Scan; strings.HasPrefix(sc.Scanner, "external: ") || len(rs.layers) != 1 {
		t.Errorf("the built-in route took the external scanner's result (scanner %q, built-in scans of layers: %d)", sc.Scanner, len(rs.layers))
	}
}
