package admission

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/gate"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/proxy/scanning"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

// The pipeline's tests run it whole: the real content store, SQLite, the built-in scanner, the
// vulnerability database imported from attest/vulndb's test data, the default policy and the
// gate in front of it. Only the upstream of the pull route is a fake (fakeUpstream, in this file).

// fixture is one Gatehouse's admission: a pull route "docker.io" over fakeUpstream and a push
// route for every other name, both enforcing under the same policy.
type fixture struct {
	cs      *content.Store
	md      *sqlite.Store
	dbPath  string
	up      *fakeUpstream
	p       *Pipeline
	gate    *gate.Gate
	routes  *route.Table
	policy  *policies.Bundle
	revoked prometheus.Counter
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	cs, err := content.New(ctx, inmemory.New())
	if err != nil {
		t.Fatal(err)
	}
	md, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	f := &fixture{cs: cs, md: md, dbPath: filepath.Join(t.TempDir(), "vulndb.sqlite"), up: &fakeUpstream{cs: cs, md: md, manifests: map[digest.Digest][]byte{}, blobs: map[digest.Digest][]byte{}}}
	f.importDB(t, "../../attest/vulndb/testdata/osv")
	engine, err := policies.Load(ctx, policies.Default())
	if err != nil {
		t.Fatal(err)
	}
	f.policy = &policies.Bundle{Source: "embedded default", Engine: engine}
	adm := route.Admission{Mode: route.Enforce, Policy: f.policy}
	f.routes, err = route.NewTable([]route.Route{{Prefix: "docker.io", Kind: route.Pull, Upstream: "http://upstream.invalid", Admission: adm}, {Prefix: "", Kind: route.Push, Admission: adm}})
	if err != nil {
		t.Fatal(err)
	}
	db := vulndb.Open(f.dbPath)
	t.Cleanup(func() { db.Close() })
	log := slog.New(slog.DiscardHandler)
	scans := scanning.New(cs, md, &scan.Scanner{TempDir: t.TempDir(), FingerprintKey: []byte("a test key of at least sixteen bytes")}, db, f.up, log, nil, 2)
	f.revoked = prometheus.NewCounter(prometheus.CounterOpts{Name: "revoked"})
	f.p = &Pipeline{Content: cs, Meta: md, Fill: f.up, Scans: scans, DB: db, Routes: f.routes, Settings: policies.Settings{HighFixGraceDays: 30},
		MaxAge: 100000 * time.Hour, Revoked: f.revoked, Log: log}
	if f.gate, err = gate.New(gate.Config{Hold: time.Minute}, md, cs, f.p, log, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

// importDB imports the OSV records of dir as the database in place (a new version).
func (f *fixture) importDB(t *testing.T, dir string) vulndb.Info {
	t.Helper()
	info, err := vulndb.Import(context.Background(), f.dbPath, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// importWithoutLodash puts a database in place that knows nothing of lodash (one Go record).
func (f *fixture) importWithoutLodash(t *testing.T) {
	t.Helper()
	older := t.TempDir()
	b, err := os.ReadFile("../../attest/vulndb/testdata/osv/GO-2024-3333.json")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(older, "GO-2024-3333.json"), b, 0o644)
	f.importDB(t, older)
}

// updateDB imports the whole test database (lodash's advisory included) and re-matches the
// stored scans through g, as the server's watch does.
func (f *fixture) updateDB(t *testing.T, g Gate) vulndb.Info {
	t.Helper()
	info := f.importDB(t, "../../attest/vulndb/testdata/osv")
	time.Sleep(1100 * time.Millisecond) // the database handle looks for a new import once a second
	if err := f.p.Rematch(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	return info
}

func (f *fixture) rt(t *testing.T, name string) route.Resolved {
	t.Helper()
	rt, err := f.routes.Resolve(name, "")
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// image is an image's manifest and blobs.
type image struct {
	digest digest.Digest
	body   []byte
	layer  digest.Digest
	blobs  map[digest.Digest][]byte
}

// newImage makes an amd64 image of one gzip layer holding files (path: content).
func newImage(t *testing.T, files map[string]string) image {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	layer := gz.Bytes()
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"User":"app"},"rootfs":{"type":"layers","diff_ids":[%q]}}`, digest.FromBytes(raw.Bytes())))
	body := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		manifest.OCIManifest, digest.FromBytes(cfg), len(cfg), digest.FromBytes(layer), len(layer)))
	return image{digest: digest.FromBytes(body), body: body, layer: digest.FromBytes(layer),
		blobs: map[digest.Digest][]byte{digest.FromBytes(cfg): cfg, digest.FromBytes(layer): layer}}
}

var (
	cleanFiles = map[string]string{"etc/motd": "nothing to see here\n"}
	// lodash 4.17.15: GHSA-p6mc-m468-83gw (CVE-2020-8203, high, fixed in 4.17.19 in 2020)
	badFiles = map[string]string{"app/node_modules/lodash/package.json": `{"name":"lodash","version":"4.17.15"}`}
)

// index makes an OCI index over children (digest: annotations-free linux/<arch> platforms).
func index(children ...string) []byte {
	return []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(children, ",") + `]}`)
}

func child(d digest.Digest, arch string) string {
	return fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":1,"platform":{"os":"linux","architecture":%q}}`, d, arch)
}

// push stores a manifest and its blobs in a push route's repository, as a client's push does.
func (f *fixture) push(t *testing.T, repo string, body []byte, blobs map[digest.Digest][]byte) digest.Digest {
	t.Helper()
	ctx := context.Background()
	for d, b := range blobs {
		putBlob(t, f.cs, repo, d, b)
	}
	p, err := manifest.Parse("", body, []digest.Algorithm{digest.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(body)
	if err := f.cs.ManifestPut(ctx, d, body); err != nil {
		t.Fatal(err)
	}
	if err := f.md.ManifestPut(ctx, meta.Manifest{Repo: repo, Digest: d, MediaType: p.MediaType, Size: int64(len(body)), Created: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return d
}

func putBlob(t *testing.T, cs *content.Store, repo string, d digest.Digest, b []byte) {
	t.Helper()
	ctx := context.Background()
	u, err := cs.UploadCreate(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	u.Write(b)
	if _, err := cs.BlobCommit(ctx, u, d); err != nil {
		t.Fatal(err)
	}
}

// fakeUpstream is the pull route's upstream: what it holds is fetched into the store on first use.
type fakeUpstream struct {
	cs        *content.Store
	md        *sqlite.Store
	mu        sync.Mutex
	manifests map[digest.Digest][]byte
	blobs     map[digest.Digest][]byte
	fetched   map[digest.Digest]int
}

func (u *fakeUpstream) offer(img image) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.manifests[img.digest] = img.body
	for d, b := range img.blobs {
		u.blobs[d] = b
	}
}

func (u *fakeUpstream) count(d digest.Digest) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.fetched == nil {
		u.fetched = map[digest.Digest]int{}
	}
	u.fetched[d]++
}

func (u *fakeUpstream) fetches(d digest.Digest) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.fetched[d]
}

func (u *fakeUpstream) Manifest(ctx context.Context, rt route.Resolved, d digest.Digest) error {
	if _, err := u.md.ManifestGet(ctx, rt.Name, d); err == nil {
		return nil
	}
	u.mu.Lock()
	body, ok := u.manifests[d]
	u.mu.Unlock()
	if !ok {
		return apierr.New(apierr.ManifestUnknown, "manifest %s is not upstream", d)
	}
	u.count(d)
	p, err := manifest.Parse("", body, []digest.Algorithm{digest.SHA256})
	if err != nil {
		return err
	}
	if err := u.cs.ManifestPut(ctx, d, body); err != nil {
		return err
	}
	return u.md.ManifestPut(ctx, meta.Manifest{Repo: rt.Name, Digest: d, MediaType: p.MediaType, Size: int64(len(body)), Created: time.Now()})
}

func (u *fakeUpstream) EnsureBlob(ctx context.Context, rt route.Resolved, d digest.Digest, size int64) error {
	if _, err := u.cs.BlobStat(ctx, rt.Name, d); err == nil {
		return nil
	}
	u.mu.Lock()
	b, ok := u.blobs[d]
	u.mu.Unlock()
	if !ok || int64(len(b)) != size {
		return fmt.Errorf("blob %s is not upstream", d)
	}
	u.count(d)
	up, err := u.cs.UploadCreate(ctx, rt.Name)
	if err != nil {
		return err
	}
	up.Write(b)
	_, err = u.cs.BlobCommit(ctx, up, d)
	return err
}

// audit returns a digest's audit record as from>to:reason lines.
func (f *fixture) audit(t *testing.T, repo string, d digest.Digest) []string {
	t.Helper()
	trail, err := f.md.AuditList(context.Background(), repo, d)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range trail {
		out = append(out, fmt.Sprintf("%s>%s:%s", a.From, a.To, a.Reason))
	}
	return out
}

func (f *fixture) verdict(t *testing.T, repo string, d digest.Digest) meta.Verdict {
	t.Helper()
	v, err := f.md.VerdictGet(context.Background(), repo, d)
	if err != nil {
		t.Fatalf("verdict on %s@%s: %v", repo, d, err)
	}
	return v
}

func denied(err error, want string) bool {
	e := apierr.From(err)
	return err != nil && e.Code == apierr.Denied && e.HTTPStatus() == http.StatusForbidden && strings.Contains(e.Message, want)
}

func TestFirstPull(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  map[string]string
		state  meta.State
		reason string // in the audit record and the refusal
	}{
		{"clean image", cleanFiles, meta.Admitted, "policy allows"},
		{"vulnerable image", badFiles, meta.Quarantined, "lodash 4.17.15"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t)
			ctx := context.Background()
			img := newImage(t, tc.files)
			f.up.offer(img)
			rt := f.rt(t, "docker.io/library/app")
			err := f.gate.Manifest(ctx, rt, img.digest, img.body)
			v := f.verdict(t, rt.Name, img.digest)
			if v.State != tc.state || v.PolicyDigest != f.policy.Engine.Digest() || v.DBVersion == "" {
				t.Errorf("verdict %+v, want %s under the policy and database in place", v, tc.state)
			}
			if trail := f.audit(t, rt.Name, img.digest); len(trail) != 1 || !strings.HasPrefix(trail[0], ">"+string(tc.state)+":") || !strings.Contains(trail[0], tc.reason) {
				t.Errorf("audit record %q, want one transition to %s saying %q", trail, tc.state, tc.reason)
			}
			if f.up.fetches(img.digest) != 1 || f.up.fetches(img.layer) != 1 {
				t.Errorf("upstream reads: manifest %d, layer %d; want each once", f.up.fetches(img.digest), f.up.fetches(img.layer))
			}
			blobErr := f.gate.Blob(ctx, rt, img.layer)
			if tc.state == meta.Admitted {
				if err != nil || blobErr != nil {
					t.Errorf("clean image not served: manifest %v, layer %v", err, blobErr)
				}
				return
			}
			if !denied(err, tc.reason) {
				t.Errorf("vulnerable image: %v, want 403 DENIED saying %q", err, tc.reason)
			}
			if apierr.From(blobErr).Code != apierr.Denied {
				t.Errorf("a quarantined image's layer is served: %v", blobErr)
			}
			// a second request is answered from the verdict: nothing fetched or scanned again
			if err := f.gate.Manifest(ctx, rt, img.digest, img.body); !denied(err, tc.reason) || f.up.fetches(img.layer) != 1 {
				t.Errorf("second request: %v (layer fetched %d times)", err, f.up.fetches(img.layer))
			}
		})
	}
}

func TestIndexWithABadChild(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	good, bad := newImage(t, cleanFiles), newImage(t, badFiles)
	repo := "team/multi"
	f.push(t, repo, good.body, good.blobs)
	f.push(t, repo, bad.body, bad.blobs)
	body := index(child(good.digest, "amd64"), child(bad.digest, "arm64"))
	idx := f.push(t, repo, body, nil)
	rt := f.rt(t, repo)
	if err := f.gate.Manifest(ctx, rt, idx, body); !denied(err, "linux/arm64 child "+bad.digest.String()+" is quarantined") {
		t.Errorf("index with a vulnerable child: %v", err)
	}
	if v := f.verdict(t, repo, idx); v.State != meta.Quarantined || v.PolicyDigest != meta.IndexPolicy || !strings.Contains(string(v.Decision), `"index.child"`) {
		t.Errorf("index verdict %+v", v)
	}
	if trail := f.audit(t, repo, idx); len(trail) != 1 || !strings.Contains(trail[0], "linux/arm64 child") {
		t.Errorf("index audit %q", trail)
	}
	// each child was admitted on its own, and is served (or not) on its own
	if v := f.verdict(t, repo, good.digest); v.State != meta.Admitted {
		t.Errorf("good child: %+v", v)
	}
	if err := f.gate.Manifest(ctx, rt, good.digest, good.body); err != nil {
		t.Errorf("good child refused: %v", err)
	}
	if err := f.gate.Manifest(ctx, rt, bad.digest, bad.body); !denied(err, "lodash") {
		t.Errorf("bad child: %v", err)
	}
	if err := f.gate.Blob(ctx, f.rt(t, repo), bad.layer); err == nil {
		t.Errorf("the bad child's layer is served")
	}
}

func TestAttestationChildOnlyWhenItIsOne(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	repo := "team/att"
	bad := newImage(t, badFiles)
	f.push(t, repo, bad.body, bad.blobs)
	statement := []byte(`{"_type":"https://in-toto.io/Statement/v1"}`)
	cfg := []byte(`{}`)
	att := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.in-toto+json","digest":%q,"size":%d}]}`,
		digest.FromBytes(cfg), len(cfg), digest.FromBytes(statement), len(statement)))
	dAtt := f.push(t, repo, att, map[digest.Digest][]byte{digest.FromBytes(cfg): cfg, digest.FromBytes(statement): statement})
	for _, tc := range []struct {
		name     string
		plat     string
		child    digest.Digest
		admitted bool
	}{
		{"a real attestation is skipped", "unknown/unknown", dAtt, true},
		{"an image dressed as an attestation", "unknown/unknown", bad.digest, false},
		{"an attestation with a real platform", "linux/amd64", dAtt, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os, arch, _ := strings.Cut(tc.plat, "/")
			body := index(fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":1,"platform":{"os":%q,"architecture":%q},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}}`, tc.child, os, arch))
			idx := f.push(t, repo, body, nil)
			err := f.gate.Manifest(ctx, f.rt(t, repo), idx, body)
			if tc.admitted && err != nil {
				t.Errorf("index refused: %v", err)
			}
			if !tc.admitted && apierr.From(err).Code != apierr.Denied {
				t.Errorf("index served though its child is refused: %v", err)
			}
		})
	}
}

func TestPullRouteIndexAdmitsOnlyWhatIsAskedFor(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	var children []string
	var kids []image
	for i := range 300 {
		img := newImage(t, map[string]string{"etc/motd": fmt.Sprint("platform ", i)})
		kids = append(kids, img)
		f.up.offer(img)
		children = append(children, child(img.digest, fmt.Sprint("arch", i)))
	}
	body := index(children...)
	d := digest.FromBytes(body)
	f.up.offer(image{digest: d, body: body})
	rt := f.rt(t, "docker.io/library/x")
	if err := f.gate.Manifest(ctx, rt, d, body); err != nil {
		t.Fatalf("index: %v", err)
	}
	for _, k := range kids {
		if f.up.fetches(k.digest) != 0 {
			t.Fatalf("serving the index fetched child %s", k.digest)
		}
	}
	// a child asked for is fetched and admitted; one already known to be refused refuses the index
	other := f.rt(t, "docker.io/library/y")
	if _, err := f.md.ManifestGet(ctx, rt.Name, d); err != nil {
		t.Fatal(err)
	}
	if err := f.md.VerdictSet(ctx, meta.Verdict{Repo: other.Name, Digest: kids[7].digest, State: meta.Quarantined,
		Decision: []byte(`{"allow":false,"deny":[{"rule":"r","message":"EICAR test file"}]}`), Decided: time.Now()}, "gatehouse", "EICAR test file"); err != nil {
		t.Fatal(err)
	}
	if err := f.gate.Manifest(ctx, other, d, body); !denied(err, "EICAR") {
		t.Errorf("index with a known refused child: %v", err)
	}
	// a push route judges an index by all its children, and caps their number
	f.p.MaxIndexChildren = 100
	idx := f.push(t, "team/x", body, nil)
	if err := f.gate.Manifest(ctx, f.rt(t, "team/x"), idx, body); !denied(err, "limit is 100") {
		t.Errorf("index over the cap: %v", err)
	}
	if _, err := f.md.VerdictGet(ctx, "team/x", kids[0].digest); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("an index over the cap admitted its children: %v", err)
	}
}

// TestDatabaseChange: a database update that brings an advisory quarantines what was admitted,
// in every repository holding a verdict on the digest, and the index that lists it, and the
// gate stops serving them at once.
func TestDatabaseChange(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.importWithoutLodash(t)
	img := newImage(t, badFiles)
	repos := []string{"team/a", "team/b"}
	for _, repo := range repos {
		f.push(t, repo, img.body, img.blobs)
		if err := f.gate.Manifest(ctx, f.rt(t, repo), img.digest, img.body); err != nil {
			t.Fatalf("%s: admitted under a database without the advisory: %v", repo, err)
		}
		if err := f.gate.Blob(ctx, f.rt(t, repo), img.layer); err != nil {
			t.Fatal(err)
		}
	}
	body := index(child(img.digest, "amd64"))
	idx := f.push(t, "team/a", body, nil)
	if err := f.gate.Manifest(ctx, f.rt(t, "team/a"), idx, body); err != nil {
		t.Fatalf("index: %v", err)
	}
	before := f.verdict(t, "team/a", img.digest)

	info := f.updateDB(t, f.gate)
	for _, repo := range repos {
		v := f.verdict(t, repo, img.digest)
		if v.State != meta.Quarantined || v.DBVersion != info.Version || v.DBVersion == before.DBVersion {
			t.Errorf("%s: verdict after the update %+v", repo, v)
		}
		trail := f.audit(t, repo, img.digest)
		if len(trail) != 2 || trail[0] != ">admitted:policy allows" || !strings.HasPrefix(trail[1], "admitted>quarantined:") || !strings.Contains(trail[1], "lodash") {
			t.Errorf("%s: audit %q", repo, trail)
		}
		if err := f.gate.Manifest(ctx, f.rt(t, repo), img.digest, img.body); !denied(err, "lodash") {
			t.Errorf("%s: still served after the update: %v", repo, err)
		}
		if err := f.gate.Blob(ctx, f.rt(t, repo), img.layer); err == nil {
			t.Errorf("%s: its layer is still served", repo)
		}
	}
	if v := f.verdict(t, "team/a", idx); v.State != meta.Quarantined {
		t.Errorf("the index listing it: %+v", v)
	}
	if err := f.gate.Manifest(ctx, f.rt(t, "team/a"), idx, body); !denied(err, "amd64 child") {
		t.Errorf("the index is still served: %v", err)
	}
	var m dto.Metric
	f.revoked.Write(&m)
	if n := m.GetCounter().GetValue(); n != 3 {
		t.Errorf("revoked counter %v, want 3 (the image in each repository, and the index)", n)
	}
	// nothing is matched twice: the stored scan stays matched with the version in place
	if todo, _ := f.md.ScansToMatch(ctx, info.Version, 10); len(todo) != 0 {
		t.Errorf("scans still to match: %v", todo)
	}
}

// TestPolicyChange: a new policy re-decides the stored verdicts from stored evidence before
// anything is served under it; reviewers' verdicts stand.
func TestPolicyChange(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	img := newImage(t, cleanFiles)
	for _, repo := range []string{"team/app", "team/reviewed"} {
		f.push(t, repo, img.body, img.blobs)
		if err := f.gate.Manifest(ctx, f.rt(t, repo), img.digest, img.body); err != nil {
			t.Fatal(err)
		}
	}
	released := f.verdict(t, "team/reviewed", img.digest)
	released.State = meta.Released
	f.md.VerdictSet(ctx, released, "alice", "reviewed")

	strict := fstest.MapFS{"strict.rego": {Data: []byte(`package gatehouse
import rego.v1
decision := {"allow": false, "deny": [{"rule": "T-NONE", "message": "this policy admits nothing", "evidence": null}], "warn": []}
`)}}
	eng, err := policies.Load(ctx, strict)
	if err != nil {
		t.Fatal(err)
	}
	*f.policy = policies.Bundle{Source: "strict", Engine: eng}
	n, err := f.p.Reevaluate(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Reevaluate = %d, %v; want 1 re-decided", n, err)
	}
	if v := f.verdict(t, "team/app", img.digest); v.State != meta.Quarantined || v.PolicyDigest != eng.Digest() {
		t.Errorf("verdict under the new policy %+v", v)
	}
	if trail := f.audit(t, "team/app", img.digest); len(trail) != 2 || trail[1] != "admitted>quarantined:this policy admits nothing" {
		t.Errorf("audit %q", trail)
	}
	if v := f.verdict(t, "team/reviewed", img.digest); v.State != meta.Released {
		t.Errorf("a reviewer's verdict was overridden: %+v", v)
	}
	// a gate started after it serves the new verdict
	g, _ := gate.New(gate.Config{}, f.md, f.cs, f.p, nil, nil)
	if err := g.Manifest(ctx, f.rt(t, "team/app"), img.digest, img.body); !denied(err, "admits nothing") {
		t.Errorf("served under the old policy's verdict: %v", err)
	}
	if err := g.Manifest(ctx, f.rt(t, "team/reviewed"), img.digest, img.body); err != nil {
		t.Errorf("released digest refused: %v", err)
	}
}

// TestPolicyThatDoesNotCompile: nothing new is admitted under it, saying why; what was admitted
// before stays served.
func TestPolicyThatDoesNotCompile(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	before := newImage(t, cleanFiles)
	f.push(t, "team/app", before.body, before.blobs)
	if err := f.gate.Manifest(ctx, f.rt(t, "team/app"), before.digest, before.body); err != nil {
		t.Fatal(err)
	}
	_, lerr := policies.Load(ctx, fstest.MapFS{"broken.rego": {Data: []byte("package gatehouse\ndecision := {")}})
	if lerr == nil {
		t.Fatal("the broken policy compiled")
	}
	*f.policy = policies.Bundle{Source: "/etc/gatehouse/policy", Err: lerr}
	g, _ := gate.New(gate.Config{}, f.md, f.cs, f.p, nil, nil) // a restart under the broken policy
	if n, err := f.p.Reevaluate(ctx); err != nil || n != 0 {
		t.Errorf("Reevaluate under a broken policy = %d, %v; want nothing re-decided", n, err)
	}
	if err := g.Manifest(ctx, f.rt(t, "team/app"), before.digest, before.body); err != nil {
		t.Errorf("an image admitted before is refused: %v", err)
	}
	img := newImage(t, map[string]string{"etc/motd": "new"})
	f.push(t, "team/app", img.body, img.blobs)
	err := g.Manifest(ctx, f.rt(t, "team/app"), img.digest, img.body)
	if e := apierr.From(err); e.HTTPStatus() != http.StatusServiceUnavailable || !strings.Contains(e.Message, "/etc/gatehouse/policy") || !strings.Contains(e.Message, "does not compile") {
		t.Errorf("new image under a broken policy: %v", err)
	}
	if _, err := f.md.VerdictGet(ctx, "team/app", img.digest); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("a verdict was recorded under a broken policy: %v", err)
	}
	if err := g.Blob(ctx, f.rt(t, "team/app"), img.layer); err == nil {
		t.Errorf("a layer of an image that could not be admitted is served")
	}
}

// TestScanThatFails: an image that cannot be scanned (a push route lacks its layer) is refused
// saying why, from a recorded failed scan that later requests reuse.
func TestScanThatFails(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	img := newImage(t, cleanFiles)
	delete(img.blobs, img.layer)
	f.push(t, "team/app", img.body, img.blobs)
	rt := f.rt(t, "team/app")
	if err := f.gate.Manifest(ctx, rt, img.digest, img.body); !denied(err, "could not be scanned") {
		t.Errorf("unscannable image: %v", err)
	}
	sc, err := f.md.ScanGet(ctx, img.digest)
	if err != nil || sc.Error == "" || sc.Complete {
		t.Errorf("the failed scan is not recorded: %+v %v", sc, err)
	}
	v := f.verdict(t, "team/app", img.digest)
	if v.State != meta.Quarantined || !strings.Contains(string(v.Decision), "GH-POL-SCAN-FAILED") {
		t.Errorf("verdict %+v", v)
	}
	if trail := f.audit(t, "team/app", img.digest); len(trail) != 1 || !strings.Contains(trail[0], "could not be scanned") {
		t.Errorf("audit %q", trail)
	}
	if err := f.gate.Blob(ctx, f.rt(t, "team/app"), img.layer); err == nil {
		t.Errorf("the unscannable layer is served")
	}
	// another repository holding the same digest is refused from the recorded scan
	f.push(t, "team/copy", img.body, img.blobs)
	if err := f.gate.Manifest(ctx, f.rt(t, "team/copy"), img.digest, img.body); !denied(err, "could not be scanned") {
		t.Errorf("copy: %v", err)
	}
	if again, _ := f.md.ScanGet(ctx, img.digest); !again.Scanned.Equal(sc.Scanned) {
		t.Errorf("the image was scanned again")
	}
}

// TestExplainRecordsNothing: gatehouse policy eval's view of an image is the pipeline's input.
func TestExplainRecordsNothing(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	img := newImage(t, badFiles)
	f.push(t, "team/app", img.body, img.blobs)
	rt := f.rt(t, "team/app")
	if _, _, err := f.p.Explain(ctx, rt, img.digest); err == nil || !strings.Contains(err.Error(), "not been scanned") {
		t.Errorf("explain before any scan: %v", err)
	}
	if _, err := f.p.Admit(ctx, rt, img.digest); err != nil {
		t.Fatal(err)
	}
	in, dec, err := f.p.Explain(ctx, rt, img.digest)
	if err != nil || dec.Allow || in.Image.User != "app" || in.Image.Platform.Architecture != "amd64" || !in.Database.Present || len(in.Vulnerabilities) == 0 {
		t.Errorf("explain: %v %+v %s", err, dec, mustJSON(in))
	}
	if trail := f.audit(t, "team/app", img.digest); len(trail) != 1 {
		t.Errorf("explain recorded something: %q", trail)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// countingMeta counts the verdicts written per digest.
type countingMeta struct {
	Metadata
	mu   sync.Mutex
	sets map[digest.Digest]int
}

func (c *countingMeta) VerdictSet(ctx context.Context, v meta.Verdict, actor, reason string) error {
	c.mu.Lock()
	c.sets[v.Digest]++
	c.mu.Unlock()
	return c.Metadata.VerdictSet(ctx, v, actor, reason)
}

// TestIndexOfIndexes: an index of indexes is judged with each distinct manifest once, however
// often the tree lists it, and a tree naming more distinct manifests than the limit is refused
// without judging them all.
func TestIndexOfIndexes(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	cm := &countingMeta{Metadata: f.md, sets: map[digest.Digest]int{}}
	f.p.Meta = cm
	f.p.MaxIndexChildren = 10
	repo := "team/nested"
	var images []string
	for i := range 5 {
		img := newImage(t, map[string]string{"etc/motd": fmt.Sprint("image ", i)})
		f.push(t, repo, img.body, img.blobs)
		images = append(images, child(img.digest, fmt.Sprint("arch", i)))
	}
	var inner []string
	for i := range 3 {
		// the same five images, in three indexes told apart by an annotation
		body := []byte(strings.Replace(string(index(images...)), `"manifests"`, fmt.Sprintf(`"annotations":{"n":"%d"},"manifests"`, i), 1))
		d := f.push(t, repo, body, nil)
		inner = append(inner, child(d, "amd64"), child(d, "amd64")) // each listed twice
	}
	outer := index(inner...)
	d := f.push(t, repo, outer, nil)
	if err := f.gate.Manifest(ctx, f.rt(t, repo), d, outer); err != nil {
		t.Fatalf("index of indexes: %v", err)
	}
	for dg, n := range cm.sets {
		if n != 1 {
			t.Errorf("%s was recorded %d times in one admission, want once", dg, n)
		}
	}
	if len(cm.sets) != 1+3+5 {
		t.Errorf("%d verdicts recorded, want 9 (the index, three indexes, five images)", len(cm.sets))
	}
	// an index over eight images and two of the indexes above names 11 distinct manifests: refused
	for i := range 3 {
		img := newImage(t, map[string]string{"etc/motd": fmt.Sprint("more ", i)})
		f.push(t, repo, img.body, img.blobs)
		images = append(images, child(img.digest, fmt.Sprint("more", i)))
	}
	big := index(images...)
	bigD := f.push(t, repo, big, nil)
	wide := index(child(bigD, "amd64"), inner[0], inner[2])
	wideD := f.push(t, repo, wide, nil)
	if err := f.gate.Manifest(ctx, f.rt(t, repo), wideD, wide); !denied(err, "more than 10 distinct manifests") {
		t.Errorf("a tree over the limit: %v", err)
	}
}

// TestFailedReadmissionFailsClosed: a database update whose re-admission cannot run (the
// manifest was deleted from the repository meanwhile) sends the verdict back to pending, so a
// push of the same bytes is admitted again, not served on the old verdict.
func TestFailedReadmissionFailsClosed(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.importWithoutLodash(t)
	img := newImage(t, badFiles)
	repo := "team/del"
	f.push(t, repo, img.body, img.blobs)
	rt := f.rt(t, repo)
	if err := f.gate.Manifest(ctx, rt, img.digest, img.body); err != nil {
		t.Fatalf("admitted before the advisory: %v", err)
	}
	if err := f.md.ManifestDelete(ctx, repo, img.digest); err != nil {
		t.Fatal(err)
	}
	f.updateDB(t, f.gate)
	if v := f.verdict(t, repo, img.digest); v.State != meta.Pending {
		t.Errorf("verdict after a failed re-admission: %s, want pending", v.State)
	}
	if trail := f.audit(t, repo, img.digest); len(trail) != 2 || !strings.HasPrefix(trail[1], "admitted>pending:could not be admitted again") {
		t.Errorf("audit %q", trail)
	}
	// the same bytes pushed again are admitted again, under the database in place
	f.push(t, repo, img.body, img.blobs)
	if err := f.gate.Manifest(ctx, rt, img.digest, img.body); !denied(err, "lodash") {
		t.Errorf("re-pushed after the update: %v", err)
	}
	if err := f.gate.Blob(ctx, f.rt(t, repo), img.layer); err == nil {
		t.Errorf("its layer is served")
	}
}

// TestIndexAfterRestart: an index the gate has not met since a restart is judged again when
// first asked for, so a child refused meanwhile (a database update) refuses it.
func TestIndexAfterRestart(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.importWithoutLodash(t)
	repo := "team/multi"
	img := newImage(t, badFiles)
	f.push(t, repo, img.body, img.blobs)
	body := index(child(img.digest, "amd64"))
	idx := f.push(t, repo, body, nil)
	if err := f.gate.Manifest(ctx, f.rt(t, repo), idx, body); err != nil {
		t.Fatalf("index before the update: %v", err)
	}
	restarted, _ := gate.New(gate.Config{}, f.md, f.cs, f.p, nil, nil)
	f.updateDB(t, restarted)
	if v := f.verdict(t, repo, idx); v.State != meta.Admitted {
		t.Fatalf("the index's stored verdict changed without being asked for: %+v", v)
	}
	if err := restarted.Manifest(ctx, f.rt(t, repo), idx, body); !denied(err, "amd64 child") {
		t.Errorf("the index after a restart and an update: %v", err)
	}
}

// TestIndexWithARefusedAttestation: a buildx-style index whose attestation child is itself
// refused (it is no image) is admitted, and judged a bounded number of times, however its
// children are asked for (a re-judging loop once overflowed the stack).
func TestIndexWithARefusedAttestation(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	cm := &countingMeta{Metadata: f.md, sets: map[digest.Digest]int{}}
	f.p.Meta = cm
	repo := "team/buildx"
	rt := f.rt(t, repo)
	img := newImage(t, cleanFiles)
	f.push(t, repo, img.body, img.blobs)
	statement := []byte(`{"_type":"https://in-toto.io/Statement/v1"}`)
	cfg := []byte(`{"architecture":"unknown","os":"unknown","rootfs":{"type":"layers","diff_ids":[]}}`)
	att := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.in-toto+json","digest":%q,"size":%d}]}`,
		digest.FromBytes(cfg), len(cfg), digest.FromBytes(statement), len(statement)))
	dAtt := f.push(t, repo, att, map[digest.Digest][]byte{digest.FromBytes(cfg): cfg, digest.FromBytes(statement): statement})
	if err := f.gate.Manifest(ctx, rt, dAtt, att); apierr.From(err).Code != apierr.Denied {
		t.Fatalf("the attestation on its own: %v (it is no image a runtime could run, and is refused as one)", err)
	}
	body := index(child(img.digest, "amd64"), fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":1,"platform":{"os":"unknown","architecture":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":%q}}`, dAtt, img.digest))
	idx := f.push(t, repo, body, nil)
	done := make(chan error, 1)
	go func() { done <- f.gate.Manifest(ctx, rt, idx, body) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("buildx-style index: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the index's admission did not end")
	}
	// after a restart, its attestation asked for first, then the index
	restarted, _ := gate.New(gate.Config{}, f.md, f.cs, f.p, nil, nil)
	if err := restarted.Manifest(ctx, rt, idx, body); err != nil {
		t.Fatalf("index after a restart: %v", err)
	}
	if err := restarted.Manifest(ctx, rt, dAtt, att); apierr.From(err).Code != apierr.Denied {
		t.Errorf("attestation after a restart: %v", err)
	}
	if err := restarted.Manifest(ctx, rt, idx, body); err != nil {
		t.Errorf("index after its attestation was asked for: %v", err)
	}
	cm.mu.Lock()
	n := cm.sets[idx]
	cm.mu.Unlock()
	if n > 6 {
		t.Errorf("the index was recorded %d times, want a handful", n)
	}
}

// TestTreeLimitRefusesOnlyTheRoot: an index that makes a tree too large is refused; an index it
// lists keeps its own verdict (it is not at fault for its parent's size).
func TestTreeLimitRefusesOnlyTheRoot(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	f.p.MaxIndexChildren = 3
	repo := "team/victim"
	rt := f.rt(t, repo)
	var imgs []image
	for i := range 3 {
		img := newImage(t, map[string]string{"etc/motd": fmt.Sprint("image ", i)})
		f.push(t, repo, img.body, img.blobs)
		imgs = append(imgs, img)
	}
	victim := index(child(imgs[0].digest, "amd64"), child(imgs[1].digest, "arm64"))
	dv := f.push(t, repo, victim, nil)
	if err := f.gate.Manifest(ctx, rt, dv, victim); err != nil {
		t.Fatalf("victim index: %v", err)
	}
	// the parent names four distinct manifests: the limit is reached inside the victim's children
	parent := index(child(imgs[2].digest, "amd64"), child(dv, "amd64"))
	dp := f.push(t, repo, parent, nil)
	if err := f.gate.Manifest(ctx, rt, dp, parent); !denied(err, "more than 3 distinct manifests") {
		t.Errorf("the parent over the limit: %v", err)
	}
	if v := f.verdict(t, repo, dv); v.State != meta.Admitted {
		t.Errorf("the victim index's verdict: %+v", v)
	}
	restarted, _ := gate.New(gate.Config{}, f.md, f.cs, f.p, nil, nil)
	if err := restarted.Manifest(ctx, rt, dv, victim); err != nil {
		t.Errorf("the victim index after a restart: %v", err)
	}
}

// fetchingFeed is the feed of a first database: fetching until told it is in place.
type fetchingFeed struct{ fetching atomic.Bool }

func (f *fetchingFeed) Fetching() (bool, string) {
	if f.fetching.Load() {
		return true, "the vulnerability database is being fetched from 3 sources"
	}
	return false, ""
}

// TestAdmissionWaitsForAFirstDatabase: while the feed fetches a first database, an admission
// waits for it and then answers 503 saying so, recording nothing; once it is in place the image
// is admitted on it (not refused for lack of it).
func TestAdmissionWaitsForAFirstDatabase(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	if err := os.Remove(f.dbPath); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the database handle looks again once a second
	feed := &fetchingFeed{}
	feed.fetching.Store(true)
	f.p.Feed, f.p.DBWait = feed, 300*time.Millisecond
	img := newImage(t, cleanFiles)
	f.push(t, "team/app", img.body, img.blobs)
	rt := f.rt(t, "team/app")
	err := f.gate.Manifest(ctx, rt, img.digest, img.body)
	if e := apierr.From(err); e.HTTPStatus() != http.StatusServiceUnavailable || e.Header.Get("Retry-After") == "" || !strings.Contains(e.Message, "being fetched") {
		t.Fatalf("admission without a database while one is fetched: %v", err)
	}
	if _, err := f.md.VerdictGet(ctx, "team/app", img.digest); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("a verdict was recorded without a database: %v", err)
	}
	// the database arrives while a request is held: it is admitted on it
	done := make(chan error, 1)
	go func() { done <- f.gate.Manifest(ctx, rt, img.digest, img.body) }()
	time.Sleep(100 * time.Millisecond)
	f.importDB(t, "../../attest/vulndb/testdata/osv")
	feed.fetching.Store(false)
	if err := <-done; err != nil {
		t.Fatalf("after the database arrived: %v", err)
	}
	if v := f.verdict(t, "team/app", img.digest); v.State != meta.Admitted || v.DBVersion == "" {
		t.Errorf("verdict %+v, want admitted on the database", v)
	}
}
