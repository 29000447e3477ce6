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
	svc := New(cs, md, &scan.Scanner{}, db, nil, nil, slog.New(slog.DiscardHandler), nil, 1)

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
	svc := New(cs, md, &scan.Scanner{}, vulndb.Open(filepath.Join(t.TempDir(), "none.sqlite")), routes, nil, slog.New(slog.DiscardHandler), nil, 1)
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
	routes, _ := route.NewTable([]route.Route{{Prefix: "", Kind: route.Push}})
	return New(cs, md, sc, vulndb.Open(filepath.Join(t.TempDir(), "none.sqlite")), routes, nil, slog.New(slog.DiscardHandler), nil, workers), cs, md
}

func TestEveryLayerIsReadAndRecorded(t *testing.T) {
	rs := &recordingScanner{}
	svc, cs, md := newService(t, rs, 1)
	layers := [][]byte{[]byte("layer one"), []byte("layer two, which names urls")}
	d := pushImage(t, cs, md, "team/app", layers, [][]string{nil, {"https://example.com/layer"}})
	sc, err := svc.ScanNow(context.Background(), "team/app", d)
	if err != nil {
		t.Fatal(err)
	}
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
	sc, err := svc.ScanNow(context.Background(), "team/app", d)
	if err == nil {
		t.Fatal("a scan of an image whose layer is missing succeeded")
	}
	if got, _ := md.ScanGet(context.Background(), d); !strings.Contains(got.Error, "never fetches one from the urls") || sc.Error == "" {
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
		go func() { defer wg.Done(); svc.ScanNow(context.Background(), "team/app", d) }() // as admissions do
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
	routes, _ := route.NewTable([]route.Route{{Prefix: "vendor", Kind: route.Push}, {Prefix: "", Kind: route.Push}})
	svc := New(cs, md, rs, vulndb.Open(filepath.Join(t.TempDir(), "none.sqlite")), routes, nil, slog.New(slog.DiscardHandler), nil, 1)
	svc.UseExternal("vendor", &fakeExternal{}, "http://gatehouse.internal:5000")
	layers := [][]byte{[]byte("the same image in two repositories")}
	d := pushImage(t, cs, md, "vendor/app", layers, nil)
	if d2 := pushImage(t, cs, md, "team/app", layers, nil); d2 != d {
		t.Fatalf("digests differ: %s %s", d, d2)
	}
	if sc, err := svc.ScanNow(ctx, "vendor/app", d); err != nil || !strings.HasPrefix(sc.Scanner, "external: ") {
		t.Fatalf("vendor scan: %+v %v", sc, err)
	}
	sc, err := svc.ScanNow(ctx, "team/app", d)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(sc.Scanner, "external: ") || len(rs.layers) != 1 {
		t.Errorf("the built-in route took the external scanner's result (scanner %q, built-in scans of layers: %d)", sc.Scanner, len(rs.layers))
	}
}

func TestEveryRepositoryIsDecidedAgain(t *testing.T) {
	ctx := context.Background()
	svc, cs, md := newService(t, &recordingScanner{}, 1)
	d := pushImage(t, cs, md, "team/a", [][]byte{[]byte("layer")}, nil)
	for _, r := range []string{"team/a", "team/b", "docker.io/library/c"} {
		md.VerdictSet(ctx, meta.Verdict{Repo: r, Digest: d, State: meta.Admitted, Decided: time.Now()}, "gatehouse", "")
	}
	var mu sync.Mutex
	got := map[string]int{}
	svc.DecideWith(func(_ context.Context, repo string, _ digest.Digest) { mu.Lock(); got[repo]++; mu.Unlock() })
	if _, err := svc.ScanNow(ctx, "team/a", d); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"team/a", "team/b", "docker.io/library/c"} {
		if got[r] != 1 {
			t.Errorf("after the scan, %s was decided %d times, want 1 (%v)", r, got[r], got)
		}
	}
}
