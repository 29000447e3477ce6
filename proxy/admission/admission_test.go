package admission

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

type fixture struct {
	a  *Admitter
	md *sqlite.Store
	cs *content.Store
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	cs, _ := content.New(ctx, inmemory.New())
	md, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	dbPath := filepath.Join(t.TempDir(), "vulndb.sqlite")
	if _, err := vulndb.Import(ctx, dbPath, "../../attest/vulndb/testdata/osv", nil); err != nil {
		t.Fatal(err)
	}
	engine, err := policies.Load(ctx, policies.Default())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	return &fixture{cs: cs, md: md, a: &Admitter{Content: cs, Meta: md, DB: vulndb.Open(dbPath), Policy: engine,
		Settings: policies.Settings{HighFixGraceDays: 30}, MaxAge: 100000 * time.Hour, Now: func() time.Time { return now }}}
}

// image stores an image manifest over a config, and a scan of it with the given vulnerabilities.
func (f *fixture) image(t *testing.T, repo, user string, vulns []vulndb.Finding, matched bool) digest.Digest {
	t.Helper()
	ctx := context.Background()
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"User":"` + user + `","ExposedPorts":{"22/tcp":{}}}}`)
	u, _ := f.cs.UploadCreate(ctx, repo)
	u.Write(cfg)
	if _, err := f.cs.BlobCommit(ctx, u, digest.FromBytes(cfg)); err != nil {
		t.Fatal(err)
	}
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + digest.FromBytes(cfg).String() + `","size":1},"layers":[],"annotations":{"u":"` + user + `"}}`)
	d := digest.FromBytes(m)
	f.cs.ManifestPut(ctx, d, m)
	f.md.ManifestPut(ctx, meta.Manifest{Repo: repo, Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: int64(len(m))})
	res, _ := json.Marshal(scan.Result{Digest: d, Complete: true, Findings: []scan.Finding{}})
	sc := meta.Scan{Digest: d, Repo: repo, Scanned: time.Now(), Scanner: scan.Version, Complete: true, Result: res}
	if matched {
		info, _ := f.a.DB.Info()
		sc.DBVersion = info.Version
		sc.Vulns, _ = json.Marshal(vulns)
	}
	f.md.ScanPut(ctx, sc)
	return d
}

func TestDecide(t *testing.T) {
	f := setup(t)
	ctx := context.Background()

	clean := f.image(t, "team/app", "app", nil, true)
	v, dec, err := f.a.Decide(ctx, "team/app", clean)
	if err != nil || v.State != meta.Admitted || !dec.Allow {
		t.Fatalf("clean image: %+v %+v %v", v, dec, err)
	}
	in, _, _ := f.a.Explain(ctx, "team/app", clean)
	if in.Image.User != "app" || in.Image.Platform.Architecture != "amd64" || len(in.Image.Ports) != 1 || !in.Database.Present {
		t.Errorf("input: %+v", in)
	}

	bad := f.image(t, "team/app", "root", []vulndb.Finding{{ID: "CVE-2024-45338", Severity: vulndb.Critical, Package: "golang.org/x/net",
		Installed: "0.30.0", Fixed: "0.33.0", Path: "app/server"}}, true)
	v, dec, err = f.a.Decide(ctx, "team/app", bad)
	if err != nil || v.State != meta.Quarantined || dec.Allow {
		t.Fatalf("critical image: %+v %v", v, err)
	}
	trail, _ := f.md.AuditList(ctx, "team/app", bad)
	if len(trail) != 1 || trail[0].To != meta.Quarantined || trail[0].Reason != "CVE-2024-45338 (critical, fixed in 0.33.0) in golang.org/x/net 0.30.0 at app/server" {
		t.Errorf("audit: %+v", trail)
	}
	if v.PolicyDigest != f.a.Policy.Digest() || v.DBVersion == "" {
		t.Errorf("verdict does not say what it was decided under: %+v", v)
	}

	// not matched with a database: fail closed, and say so
	unmatched := f.image(t, "team/other", "app", nil, false)
	v, dec, _ = f.a.Decide(ctx, "team/other", unmatched)
	if v.State != meta.Quarantined || len(dec.Deny) == 0 || dec.Deny[0].Rule != "GH-POL-DB-MISSING" {
		t.Errorf("unmatched image: %+v %+v", v, dec)
	}

	// not scanned: no decision at all
	if _, _, err := f.a.Decide(ctx, "team/app", digest.FromString("never")); err == nil || (!errors.Is(err, ErrNotScanned) && !strings.Contains(err.Error(), "not found")) {
		t.Errorf("unscanned: %v", err)
	}
}
