package gate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

type fakeMeta struct {
	mu sync.Mutex
	v  map[string]meta.Verdict
	// read lists, per image, the blobs its scan read; an image not listed was read whole (its
	// config and layer, as in image below)
	read map[digest.Digest][]digest.Digest
}

func (f *fakeMeta) ScanGet(_ context.Context, d digest.Digest) (meta.Scan, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	blobs, ok := f.read[d]
	if !ok {
		blobs = []digest.Digest{config, layer}
	}
	b, _ := json.Marshal(map[string]any{"blobs": blobs})
	return meta.Scan{Digest: d, Complete: true, Result: b}, nil
}

func (f *fakeMeta) VerdictGet(_ context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.v[key(repo, d)]
	if !ok {
		return meta.Verdict{}, meta.ErrNotFound
	}
	return v, nil
}

func (f *fakeMeta) VerdictSet(_ context.Context, v meta.Verdict, _, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.v[key(v.Repo, v.Digest)] = v
	return nil
}

func (f *fakeMeta) AdmittedTagSet(context.Context, string, string, digest.Digest) error { return nil }
func (f *fakeMeta) AdmittedTagGet(context.Context, string, string) (digest.Digest, error) {
	return "", meta.ErrNotFound
}

func (f *fakeMeta) VerdictsServed(_ context.Context, repo string) ([]meta.Verdict, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []meta.Verdict
	for _, v := range f.v {
		if v.Repo == repo && serves(v.State) {
			out = append(out, v)
		}
	}
	return out, nil
}

type bodies map[digest.Digest][]byte

func (b bodies) ManifestGet(_ context.Context, d digest.Digest) ([]byte, error) {
	if body, ok := b[d]; ok {
		return body, nil
	}
	return nil, errors.New("no such manifest")
}

const (
	layer  = digest.Digest("sha256:1111111111111111111111111111111111111111111111111111111111111111")
	config = digest.Digest("sha256:2222222222222222222222222222222222222222222222222222222222222222")
)

var image = []byte(`{"schemaVersion":2,"config":{"digest":"` + string(config) + `"},"layers":[{"digest":"` + string(layer) + `"}]}`)

func verdict(d digest.Digest, state string, deny ...string) meta.Verdict {
	dec := policies.Decision{Allow: len(deny) == 0}
	for _, m := range deny {
		dec.Deny = append(dec.Deny, policies.Reason{Rule: "r", Message: m})
	}
	b, _ := json.Marshal(dec)
	return meta.Verdict{Repo: "r", Digest: d, State: state, Decision: b}
}

func TestOneAdmissionManyWaiters(t *testing.T) {
	d := digest.FromBytes(image)
	var calls atomic.Int32
	release := make(chan struct{})
	g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		calls.Add(1)
		<-release
		return verdict(d, meta.Quarantined, "CVE-1 (high) in x", "CVE-2"), nil
	}, nil, nil)
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = g.Manifest(context.Background(), "r", d, image) }()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := calls.Load(); n != 1 {
		t.Errorf("%d admissions, want 1", n)
	}
	for _, err := range errs {
		e := apierr.From(err)
		if e.Code != apierr.Denied || e.HTTPStatus() != http.StatusForbidden || e.Message != "manifest "+d.String()+" of r is quarantined by policy: CVE-1 (high) in x; CVE-2" {
			t.Fatalf("refusal = %v", err)
		}
	}
	if err := g.Blob(context.Background(), "r", layer); apierr.From(err).Code != apierr.Denied {
		t.Errorf("blob of a quarantined image: %v", err)
	}
}

func TestHoldExpires(t *testing.T) {
	d := digest.FromBytes(image)
	release := make(chan struct{})
	g, _ := New(Config{Hold: 50 * time.Millisecond}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		<-release
		return verdict(d, meta.Admitted), nil
	}, nil, nil)
	e := apierr.From(g.Manifest(context.Background(), "r", d, image))
	if e.HTTPStatus() != http.StatusServiceUnavailable || e.Header.Get("Retry-After") == "" {
		t.Fatalf("held request: %v (headers %v)", e, e.Header)
	}
	close(release) // the admission goes on; the next request is served
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if err := g.Manifest(context.Background(), "r", d, image); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("still refused after the admission finished: %v", err)
		}
	}
	if err := g.Blob(context.Background(), "r", layer); err != nil {
		t.Errorf("layer of an admitted image: %v", err)
	}
	if err := g.Blob(context.Background(), "other", layer); err == nil {
		t.Errorf("the layer was served from a repository whose images do not reference it")
	}
}

func TestRecordQuarantineRevokesBlobs(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)}}
	g, _ := New(Config{}, md, bodies{d: image}, nil, nil, nil)
	if err := g.Manifest(context.Background(), "r", d, image); err != nil {
		t.Fatal(err)
	}
	if err := g.Blob(context.Background(), "r", config); err != nil {
		t.Fatal(err)
	}
	g.Record(context.Background(), verdict(d, meta.Quarantined, "a new advisory"))
	if err := g.Manifest(context.Background(), "r", d, image); apierr.From(err).Code != apierr.Denied {
		t.Errorf("manifest after quarantine: %v", err)
	}
	if err := g.Blob(context.Background(), "r", config); err == nil {
		t.Errorf("blob still served after its image was quarantined")
	}
}

func TestAdmissionErrorFailsClosed(t *testing.T) {
	d := digest.FromBytes(image)
	g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, func(context.Context, string, digest.Digest) (meta.Verdict, error) {
		return meta.Verdict{}, errors.New("upstream went away")
	}, nil, nil)
	if e := apierr.From(g.Manifest(context.Background(), "r", d, image)); e.HTTPStatus() != http.StatusServiceUnavailable {
		t.Errorf("admission error: %v", e)
	}
}

func TestRevokeGrace(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)}}
	g, _ := New(Config{RevokeGrace: 200 * time.Millisecond}, md, bodies{d: image}, nil, nil, nil)
	if err := g.Manifest(context.Background(), "r", d, image); err != nil {
		t.Fatal(err)
	}
	q := verdict(d, meta.Quarantined, "a new advisory")
	md.VerdictSet(context.Background(), q, "gatehouse", "")
	g.Record(context.Background(), q)
	if err := g.Manifest(context.Background(), "r", d, image); err != nil {
		t.Fatalf("refused within the grace period: %v", err)
	}
	time.Sleep(400 * time.Millisecond)
	if err := g.Manifest(context.Background(), "r", d, image); apierr.From(err).Code != apierr.Denied {
		t.Errorf("after the grace period: %v", err)
	}
	if err := g.Blob(context.Background(), "r", layer); err == nil {
		t.Errorf("its layer is still served after the grace period")
	}
}

func TestBlobBeforeManifestAfterRestart(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)}}
	g, _ := New(Config{}, md, bodies{d: image}, nil, nil, nil) // a fresh gate: nothing learned yet
	if err := g.Blob(context.Background(), "r", layer); err != nil {
		t.Errorf("layer of a stored admitted image, asked for before its manifest: %v", err)
	}
	if err := g.Blob(context.Background(), "r", "sha256:3333333333333333333333333333333333333333333333333333333333333333"); apierr.From(err).Code != apierr.Denied {
		t.Errorf("a blob no admitted image references: %v", err)
	}
}

func TestReferrerServedAsMetadata(t *testing.T) {
	sub := digest.FromBytes(image)
	sig := []byte(`{"schemaVersion":2,"config":{"digest":"` + string(config) + `"},"layers":[{"digest":"` + string(layer) + `"}],"subject":{"digest":"` + string(sub) + `"}}`)
	d := digest.FromBytes(sig)
	md := &fakeMeta{v: map[string]meta.Verdict{}}
	g, _ := New(Config{}, md, bodies{d: sig, sub: image}, nil, nil, nil)
	// a scan of the referrer concluded it is no admissible image
	g.Record(context.Background(), verdict(d, meta.Quarantined, "not a tar layer"))
	if err := g.Manifest(context.Background(), "r", d, sig); err != nil {
		t.Errorf("referrer manifest: %v", err)
	}
	if err := g.Blob(context.Background(), "r", layer); err == nil {
		t.Errorf("a referrer made its blobs pullable")
	}
}

func TestBlobsTheScanDidNotReadAreNotServed(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)},
		read: map[digest.Digest][]digest.Digest{d: {config}}} // the layer was skipped
	g, _ := New(Config{}, md, bodies{d: image}, nil, nil, nil)
	if err := g.Manifest(context.Background(), "r", d, image); err != nil {
		t.Fatal(err)
	}
	if err := g.Blob(context.Background(), "r", config); err != nil {
		t.Errorf("config the scan read: %v", err)
	}
	if err := g.Blob(context.Background(), "r", layer); apierr.From(err).Code != apierr.Denied {
		t.Errorf("a layer the scan did not read was served: %v", err)
	}
	if g.Mountable(layer) {
		t.Errorf("a layer no scan read is mountable")
	}
	if !g.Mountable(config) {
		t.Errorf("the admitted image's config is not mountable")
	}
}

func TestMountableOnlyWhatAnAdmittedImageReferences(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Quarantined, "EICAR")}}
	g, _ := New(Config{}, md, bodies{d: image}, nil, nil, nil)
	g.Manifest(context.Background(), "r", d, image)
	if g.Mountable(layer) || g.Mountable(config) {
		t.Fatalf("a quarantined image's blobs are mountable")
	}
	g.Record(context.Background(), verdict(d, meta.Admitted))
	if !g.Mountable(layer) {
		t.Errorf("an admitted image's layer is not mountable")
	}
	g.Record(context.Background(), verdict(d, meta.Quarantined, "a new advisory"))
	if g.Mountable(layer) {
		t.Errorf("still mountable after the image was quarantined")
	}
}

func TestRunnableImageWithASubjectIsGated(t *testing.T) {
	sub := digest.FromBytes(image)
	for _, mt := range []string{"application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar.gzip",
		"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+zstd", "Application/VND.OCI.image.layer.v1.tar+gzip"} {
		t.Run(mt, func(t *testing.T) {
			body := []byte(`{"schemaVersion":2,"config":{"digest":"` + string(config) + `"},"layers":[{"mediaType":"` + mt + `","digest":"` + string(layer) + `"}],"subject":{"digest":"` + string(sub) + `"}}`)
			d := digest.FromBytes(body)
			var calls atomic.Int32
			g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: body, sub: image}, func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
				calls.Add(1)
				return verdict(d, meta.Quarantined, "EICAR test file"), nil
			}, nil, nil)
			if err := g.Manifest(context.Background(), "r", d, body); apierr.From(err).Code != apierr.Denied {
				t.Errorf("a runnable image with a subject was served as metadata: %v", err)
			}
			if calls.Load() != 1 {
				t.Errorf("%d admissions, want 1", calls.Load())
			}
		})
	}
}

func TestAttestationChildOnlyWhenItIsOne(t *testing.T) {
	att := []byte(`{"schemaVersion":2,"config":{"digest":"` + string(config) + `"},"layers":[{"mediaType":"application/vnd.in-toto+json","digest":"` + string(layer) + `"}]}`)
	dAtt, dImg := digest.FromBytes(att), digest.FromBytes(image)
	index := func(plat string, child digest.Digest) []byte {
		os, arch, _ := strings.Cut(plat, "/")
		return []byte(`{"schemaVersion":2,"manifests":[{"digest":"` + string(child) + `","platform":{"os":"` + os + `","architecture":"` + arch + `"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}}]}`)
	}
	for _, tc := range []struct {
		name     string
		plat     string
		child    digest.Digest
		admitted bool
	}{
		{"a real attestation is skipped", "unknown/unknown", dAtt, true},
		{"an image dressed as an attestation", "unknown/unknown", dImg, false},
		{"an attestation with a real platform", "linux/amd64", dAtt, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx := index(tc.plat, tc.child)
			d := digest.FromBytes(idx)
			g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: idx, dAtt: att, dImg: image}, func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
				return verdict(d, meta.Quarantined, "EICAR test file"), nil
			}, nil, nil)
			err := g.Manifest(context.Background(), "r", d, idx)
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
	table, err := route.NewTable([]route.Route{{Prefix: "docker.io", Kind: route.Pull, Upstream: "http://up"}, {Prefix: "", Kind: route.Push}})
	if err != nil {
		t.Fatal(err)
	}
	var children []string
	var bad digest.Digest
	for i := range 300 {
		c := digest.FromString(fmt.Sprint(i))
		if i == 7 {
			bad = c
		}
		children = append(children, `{"digest":"`+string(c)+`","platform":{"os":"linux","architecture":"arch`+fmt.Sprint(i)+`"}}`)
	}
	idx := []byte(`{"schemaVersion":2,"manifests":[` + strings.Join(children, ",") + `]}`)
	d := digest.FromBytes(idx)
	var calls atomic.Int32
	admit := func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		calls.Add(1)
		return verdict(d, meta.Admitted), nil
	}
	md := &fakeMeta{v: map[string]meta.Verdict{}}
	g, _ := New(Config{Table: table}, md, bodies{d: idx}, admit, nil, nil)
	if err := g.Manifest(context.Background(), "docker.io/library/x", d, idx); err != nil {
		t.Fatalf("index: %v", err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("serving the index admitted %d children, want none", n)
	}
	// a child already known to be refused refuses the index
	q := verdict(bad, meta.Quarantined, "EICAR test file")
	q.Repo = "docker.io/library/y"
	md.VerdictSet(context.Background(), q, "", "")
	if err := g.Manifest(context.Background(), "docker.io/library/y", d, idx); apierr.From(err).Code != apierr.Denied || !strings.Contains(err.Error(), "EICAR") {
		t.Errorf("index with a known refused child: %v", err)
	}
	// a push route judges an index by all its children, and caps their number
	g, _ = New(Config{Table: table, MaxIndexChildren: 100}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: idx}, admit, nil, nil)
	calls.Store(0)
	if err := g.Manifest(context.Background(), "team/x", d, idx); apierr.From(err).Code != apierr.Denied || !strings.Contains(err.Error(), "limit is 100") {
		t.Errorf("index over the cap: %v", err)
	}
	if calls.Load() != 0 {
		t.Errorf("an index over the cap admitted children")
	}
}

func TestServedIndexGoesBackToAdmissionWhenAChildIsRefused(t *testing.T) {
	child := digest.FromBytes(image)
	idx := []byte(`{"schemaVersion":2,"manifests":[{"digest":"` + string(child) + `","platform":{"os":"linux","architecture":"amd64"}}]}`)
	d := digest.FromBytes(idx)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", child): verdict(child, meta.Admitted)}}
	g, _ := New(Config{}, md, bodies{d: idx, child: image}, func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		return md.VerdictGet(ctx, repo, d)
	}, nil, nil)
	if err := g.Manifest(context.Background(), "r", d, idx); err != nil {
		t.Fatalf("index with an admitted child: %v", err)
	}
	// a database update quarantines the child
	q := verdict(child, meta.Quarantined, "CVE-2021-23337 (high)")
	md.VerdictSet(context.Background(), q, "gatehouse", "")
	g.Record(context.Background(), q)
	if v, _ := md.VerdictGet(context.Background(), "r", d); v.State != meta.Pending {
		t.Errorf("the index's stored verdict is %q, want pending (judged again)", v.State)
	}
	if err := g.Manifest(context.Background(), "r", d, idx); apierr.From(err).Code != apierr.Denied || !strings.Contains(err.Error(), "CVE-2021-23337") {
		t.Errorf("index after its child was quarantined: %v", err)
	}
}

func TestReleaseAnswersHeldRequests(t *testing.T) {
	d := digest.FromBytes(image)
	release := make(chan struct{})
	defer close(release)
	g, _ := New(Config{Hold: time.Hour}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		select {
		case <-release:
			return verdict(d, meta.Admitted), nil
		case <-ctx.Done(): // the shutdown stops it
			return meta.Verdict{}, ctx.Err()
		}
	}, nil, nil)
	errc := make(chan error, 1)
	go func() { errc <- g.Manifest(context.Background(), "r", d, image) }()
	time.Sleep(50 * time.Millisecond)
	g.Release()
	select {
	case err := <-errc:
		if e := apierr.From(err); e.HTTPStatus() != http.StatusServiceUnavailable || e.Header.Get("Retry-After") == "" {
			t.Errorf("held request after Release: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a held request was not answered after Release")
	}
	waited := make(chan struct{})
	go func() { g.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("the admission under way did not end after Release")
	}
	if e := apierr.From(g.Manifest(context.Background(), "r", d, image)); e.HTTPStatus() != http.StatusServiceUnavailable {
		t.Errorf("a request after Release: %v", e)
	}
}
