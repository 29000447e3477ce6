package api

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/gate"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

// verdicts is the test's admission: it decides each digest as told (admitted when not told)
// and records the verdict as the pipeline would, counting the admissions of each repository.
type verdicts struct {
	md meta.Verdicts

	mu    sync.Mutex
	deny  map[digest.Digest]string // digest -> the reason it is quarantined
	calls map[string]int           // repository -> admissions
}

func (a *verdicts) quarantine(d digest.Digest, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deny[d] = reason
}

func (a *verdicts) admissions(repo string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[repo]
}

func (a *verdicts) Admit(ctx context.Context, rt route.Resolved, d digest.Digest) (meta.Verdict, error) {
	a.mu.Lock()
	a.calls[rt.Name]++
	reason, denied := a.deny[d]
	a.mu.Unlock()
	dec := policies.Decision{Allow: !denied, Deny: []policies.Reason{}, Warn: []policies.Reason{}}
	state := meta.Admitted
	if denied {
		dec.Deny = append(dec.Deny, policies.Reason{Rule: "vulnerabilities", Message: reason})
		state = meta.Quarantined
	}
	b, err := json.Marshal(dec)
	if err != nil {
		return meta.Verdict{}, err
	}
	v := meta.Verdict{Repo: rt.Name, Digest: d, State: state, Decision: b, PolicyDigest: "sha256:test", DBVersion: "test", Decided: time.Now().UTC()}
	return v, a.md.VerdictSet(ctx, v, "gatehouse", "test")
}

type gatedFixture struct {
	*fixture
	md       *sqlite.Store
	admitter *verdicts
}

// newGatedFixture serves the API with the real gate over a real content store and the sqlite
// metadata store, on three push routes: enforce/ (enforcing), audit/ (audit), fallback/
// (enforcing, tag fallback).
func newGatedFixture(t *testing.T) *gatedFixture {
	t.Helper()
	ctx := context.Background()
	c, err := content.New(ctx, inmemory.New())
	if err != nil {
		t.Fatal(err)
	}
	md, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "meta.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { md.Close() })
	a := &verdicts{md: md, deny: map[digest.Digest]string{}, calls: map[string]int{}}
	g, err := gate.New(gate.Config{Hold: 10 * time.Second}, md, c, a, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Release(); g.Wait() }) // before the metadata store closes
	routes, err := route.NewTable([]route.Route{
		{Prefix: "enforce", Kind: route.Push, Admission: route.Admission{Mode: route.Enforce}},
		{Prefix: "audit", Kind: route.Push, Admission: route.Admission{Mode: route.Audit}},
		{Prefix: "fallback", Kind: route.Push, Admission: route.Admission{Mode: route.Enforce, TagFallback: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(c, md, WithRoutes(routes), WithGate(g))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &gatedFixture{fixture: &fixture{t: t, srv: srv}, md: md, admitter: a}
}

// testImage is an image manifest over a config and one layer, not pushed yet.
type testImage struct {
	config, layer, manifest           []byte
	configDigest, layerDigest, digest digest.Digest
}

func newTestImage(name string) testImage {
	img := testImage{config: []byte(`{"os":"linux","image":"` + name + `"}`), layer: []byte("layer of " + name)}
	img.configDigest, img.layerDigest = digest.FromBytes(img.config), digest.FromBytes(img.layer)
	img.manifest = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + img.configDigest.String() + `","size":` + strconv.Itoa(len(img.config)) + `},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + img.layerDigest.String() + `","size":` + strconv.Itoa(len(img.layer)) + `}]}`)
	img.digest = digest.FromBytes(img.manifest)
	return img
}

// scanned stores the image's scan, as the pipeline would before its verdict: the gate serves
// only the blobs a scan read.
func (f *gatedFixture) scanned(repo string, img testImage) {
	f.t.Helper()
	res, _ := json.Marshal(map[string][]digest.Digest{"blobs": {img.configDigest, img.layerDigest}})
	if err := f.md.ScanPut(context.Background(), meta.Scan{Digest: img.digest, Repo: repo, Scanned: time.Now(), Scanner: "test", Complete: true, Result: res}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *gatedFixture) pushBlob(repo string, b []byte) {
	f.t.Helper()
	if r := f.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+digest.FromBytes(b).String(), "", b); r.StatusCode != 201 {
		f.t.Fatalf("blob to %s: %d %s", repo, r.StatusCode, readBody(r))
	}
}

// push uploads the image's blobs and PUTs its manifest, returning the manifest PUT's status and
// body.
func (f *gatedFixture) push(repo, ref string, img testImage) (int, string) {
	f.t.Helper()
	f.pushBlob(repo, img.config)
	f.pushBlob(repo, img.layer)
	r := f.do("PUT", "/v2/"+repo+"/manifests/"+ref, manifest.OCIManifest, img.manifest)
	return r.StatusCode, readBody(r)
}

// denied checks an OCI error body: one DENIED error whose message holds want.
func denied(t *testing.T, what string, status int, body, want string) {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if status != 403 || json.Unmarshal([]byte(body), &e) != nil || len(e.Errors) != 1 || e.Errors[0].Code != "DENIED" || !strings.Contains(e.Errors[0].Message, want) {
		t.Errorf("%s: %d %s, want 403 DENIED naming %q", what, status, body, want)
	}
}

// TestGateQuarantinedPushAndAudit: on an enforcing route a quarantined push is answered 403 with
// the reason, and neither its manifest nor its layer is served, though they stay stored; on an
// audit route the same image is served, and admitted all the same.
func TestGateQuarantinedPushAndAudit(t *testing.T) {
	f := newGatedFixture(t)
	img := newTestImage("bad")
	const reason = "CVE-2024-0001 (critical) in libexample 1.2.3"
	f.admitter.quarantine(img.digest, reason)
	f.scanned("enforce/app", img)

	status, body := f.push("enforce/app", "v1", img)
	denied(t, "quarantined push", status, body, reason)
	if !strings.Contains(body, "quarantined") {
		t.Errorf("the push's refusal does not say quarantined: %s", body)
	}
	for _, p := range []string{"/v2/enforce/app/manifests/" + img.digest.String(), "/v2/enforce/app/manifests/v1"} {
		r := f.do("GET", p, "", nil)
		denied(t, "GET "+p, r.StatusCode, readBody(r), reason)
	}
	r := f.do("GET", "/v2/enforce/app/blobs/"+img.layerDigest.String(), "", nil)
	denied(t, "GET the quarantined layer", r.StatusCode, readBody(r), img.layerDigest.String())
	// stored for review all the same
	if m, err := f.md.ManifestGet(context.Background(), "enforce/app", img.digest); err != nil || m.Digest != img.digest {
		t.Errorf("the quarantined manifest is not recorded: %+v %v", m, err)
	}
	if d, err := f.md.TagGet(context.Background(), "enforce/app", "v1"); err != nil || d != img.digest {
		t.Errorf("the quarantined push's tag = %s %v", d, err)
	}
	if n := f.admitter.admissions("enforce/app"); n != 1 {
		t.Errorf("the enforcing route admitted the image %d times, want 1 (the push's; the GETs read the verdict)", n)
	}

	// audit: the same image pushes, and its manifest and layer are served
	if status, body := f.push("audit/app", "v1", img); status != 201 {
		t.Fatalf("push on the audit route: %d %s", status, body)
	}
	r = f.do("GET", "/v2/audit/app/manifests/v1", "", nil)
	if got := readBody(r); r.StatusCode != 200 || got != string(img.manifest) || r.Header.Get("Docker-Content-Digest") != img.digest.String() {
		t.Errorf("GET on the audit route: %d %s", r.StatusCode, got)
	}
	r = f.do("GET", "/v2/audit/app/blobs/"+img.layerDigest.String(), "", nil)
	if got := readBody(r); r.StatusCode != 200 || got != string(img.layer) {
		t.Errorf("GET layer on the audit route: %d %s", r.StatusCode, got)
	}
	// and admitted in the background all the same, its verdict recorded
	if !eventually(10*time.Second, func() bool { return f.admitter.admissions("audit/app") > 0 }) {
		t.Fatal("the audit route never admitted the pushed image")
	}
	if !eventually(10*time.Second, func() bool {
		v, err := f.md.VerdictGet(context.Background(), "audit/app", img.digest)
		return err == nil && v.State == meta.Quarantined
	}) {
		t.Error("the audit route's verdict was not recorded as quarantined")
	}
}

// TestGateAdmittedImageServed: an admitted image's manifest and blobs are served; a blob of the
// repository that no admitted image references is not.
func TestGateAdmittedImageServed(t *testing.T) {
	f := newGatedFixture(t)
	img := newTestImage("good")
	f.scanned("enforce/app", img)
	if status, body := f.push("enforce/app", "v1", img); status != 201 {
		t.Fatalf("push of an admitted image: %d %s", status, body)
	}
	for _, ref := range []string{"v1", img.digest.String()} {
		r := f.do("GET", "/v2/enforce/app/manifests/"+ref, "", nil)
		if got := readBody(r); r.StatusCode != 200 || got != string(img.manifest) {
			t.Errorf("GET manifest %s: %d %s", ref, r.StatusCode, got)
		}
	}
	for d, want := range map[digest.Digest][]byte{img.layerDigest: img.layer, img.configDigest: img.config} {
		r := f.do("GET", "/v2/enforce/app/blobs/"+d.String(), "", nil)
		if got := readBody(r); r.StatusCode != 200 || got != string(want) {
			t.Errorf("GET blob %s: %d %s", d, r.StatusCode, got)
		}
	}
	stray := []byte("a blob no manifest references")
	f.pushBlob("enforce/app", stray)
	r := f.do("GET", "/v2/enforce/app/blobs/"+digest.FromBytes(stray).String(), "", nil)
	denied(t, "GET a stray blob", r.StatusCode, readBody(r), "not part of any admitted image")
	// HEAD on a push route says only that it exists (pushers skip uploads with it)
	if r := f.do("HEAD", "/v2/enforce/app/blobs/"+digest.FromBytes(stray).String(), "", nil); r.StatusCode != 200 {
		t.Errorf("HEAD of a stray blob on a push route = %d, want 200", r.StatusCode)
	}
}

// TestGateTagFallback: a tag on a fallback route whose new digest is quarantined serves the digest
// it last served admitted, and says so.
func TestGateTagFallback(t *testing.T) {
	f := newGatedFixture(t)
	good, bad := newTestImage("v1"), newTestImage("v2")
	f.scanned("fallback/app", good)
	f.scanned("fallback/app", bad)
	f.admitter.quarantine(bad.digest, "CVE-2024-0002 (high) in libother")
	if status, body := f.push("fallback/app", "latest", good); status != 201 {
		t.Fatalf("push of the admitted image: %d %s", status, body)
	}
	// served once by tag: the tag's last admitted digest
	if r := f.do("GET", "/v2/fallback/app/manifests/latest", "", nil); r.StatusCode != 200 || r.Header.Get("Docker-Content-Digest") != good.digest.String() {
		t.Fatalf("GET latest: %d %s", r.StatusCode, readBody(r))
	}
	status, body := f.push("fallback/app", "latest", bad)
	denied(t, "quarantined push", status, body, "CVE-2024-0002")

	r := f.do("GET", "/v2/fallback/app/manifests/latest", "", nil)
	got := readBody(r)
	if r.StatusCode != 200 || got != string(good.manifest) || r.Header.Get("Docker-Content-Digest") != good.digest.String() {
		t.Fatalf("GET latest after a quarantined push: %d %s %s, want the last admitted %s", r.StatusCode, r.Header.Get("Docker-Content-Digest"), got, good.digest)
	}
	fb := r.Header.Get("Gatehouse-Tag-Fallback")
	for _, want := range []string{bad.digest.String(), good.digest.String(), "refused by policy"} {
		if !strings.Contains(fb, want) {
			t.Errorf("Gatehouse-Tag-Fallback %q does not name %q", fb, want)
		}
	}
	// by digest there is no fallback: the quarantined digest is refused
	r = f.do("GET", "/v2/fallback/app/manifests/"+bad.digest.String(), "", nil)
	denied(t, "GET the quarantined digest", r.StatusCode, readBody(r), "CVE-2024-0002")
	if h := r.Header.Get("Gatehouse-Tag-Fallback"); h != "" {
		t.Errorf("a GET by digest fell back: %q", h)
	}
	// a tag on a route without fallback answers the refusal
	status, body = f.push("enforce/app", "latest", good)
	if status != 201 {
		t.Fatalf("push on the enforcing route: %d %s", status, body)
	}
	f.do("GET", "/v2/enforce/app/manifests/latest", "", nil)
	f.push("enforce/app", "latest", bad)
	r = f.do("GET", "/v2/enforce/app/manifests/latest", "", nil)
	denied(t, "GET a quarantined tag without fallback", r.StatusCode, readBody(r), "CVE-2024-0002")
}
