package gate

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
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
		if v.Repo == repo && v.State.Serves() {
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

func verdict(d digest.Digest, state meta.State, deny ...string) meta.Verdict {
	dec := policies.Decision{Allow: len(deny) == 0}
	for _, m := range deny {
		dec.Deny = append(dec.Deny, policies.Reason{Rule: "r", Message: m})
	}
	b, _ := json.Marshal(dec)
	return meta.Verdict{Repo: "r", Digest: d, State: state, Decision: b}
}

// admitFunc adapts a function of the repository name to an Admitter.
type admitFunc func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)

func (f admitFunc) Admit(ctx context.Context, rt route.Resolved, d digest.Digest) (meta.Verdict, error) {
	return f(ctx, rt.Name, d)
}

// push is repository repo of the push route.
func push(repo string) route.Resolved {
	return route.Resolved{Route: &route.Route{Prefix: "", Kind: route.Push}, Name: repo}
}

// storedVerdict is an Admitter that answers the verdict stored in md (as the pipeline does once
// it has recorded a verdict reached elsewhere).
func storedVerdict(md *fakeMeta) Admitter {
	return admitFunc(func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		return md.VerdictGet(ctx, repo, d)
	})
}

func TestOneAdmissionManyWaiters(t *testing.T) {
	d := digest.FromBytes(image)
	var calls atomic.Int32
	release := make(chan struct{})
	g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, admitFunc(func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		calls.Add(1)
		<-release
		return verdict(d, meta.Quarantined, "CVE-1 (high) in x", "CVE-2"), nil
	}), nil, nil)
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = g.Manifest(context.Background(), push("r"), d, image) }()
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
	if err := g.Blob(context.Background(), push("r"), layer); apierr.From(err).Code != apierr.Denied {
		t.Errorf("blob of a quarantined image: %v", err)
	}
}

func TestHoldExpires(t *testing.T) {
	d := digest.FromBytes(image)
	release := make(chan struct{})
	g, _ := New(Config{Hold: 50 * time.Millisecond}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, admitFunc(func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		<-release
		return verdict(d, meta.Admitted), nil
	}), nil, nil)
	e := apierr.From(g.Manifest(context.Background(), push("r"), d, image))
	if e.HTTPStatus() != http.StatusServiceUnavailable || e.Header.Get("Retry-After") == "" {
		t.Fatalf("held request: %v (headers %v)", e, e.Header)
	}
	close(release) // the admission goes on; the next request is served
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if err := g.Manifest(context.Background(), push("r"), d, image); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("still refused after the admission finished: %v", err)
		}
	}
	if err := g.Blob(context.Background(), push("r"), layer); err != nil {
		t.Errorf("layer of an admitted image: %v", err)
	}
	if err := g.Blob(context.Background(), push("other"), layer); err == nil {
		t.Errorf("the layer was served from a repository whose images do not reference it")
	}
}

func TestReconsiderQuarantineRevokesBlobs(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)}}
	g, _ := New(Config{}, md, bodies{d: image}, storedVerdict(md), nil, nil)
	if err := g.Manifest(context.Background(), push("r"), d, image); err != nil {
		t.Fatal(err)
	}
	if err := g.Blob(context.Background(), push("r"), config); err != nil {
		t.Fatal(err)
	}
	md.VerdictSet(context.Background(), verdict(d, meta.Quarantined, "a new advisory"), "gatehouse", "")
	if err := g.Reconsider(context.Background(), push("r"), d); err != nil {
		t.Fatal(err)
	}
	if err := g.Manifest(context.Background(), push("r"), d, image); apierr.From(err).Code != apierr.Denied {
		t.Errorf("manifest after quarantine: %v", err)
	}
	if err := g.Blob(context.Background(), push("r"), config); err == nil {
		t.Errorf("blob still served after its image was quarantined")
	}
}

func TestAdmissionErrorFailsClosed(t *testing.T) {
	d := digest.FromBytes(image)
	var calls atomic.Int32
	g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, admitFunc(func(_ context.Context, _ string, d digest.Digest) (meta.Verdict, error) {
		switch calls.Add(1) {
		case 1:
			return meta.Verdict{}, errors.New("upstream went away")
		case 2:
			return verdict(d, meta.Pending), nil // no verdict is no admission either
		}
		return verdict(d, meta.Admitted), nil
	}), nil, nil)
	if e := apierr.From(g.Manifest(context.Background(), push("r"), d, image)); e.HTTPStatus() != http.StatusServiceUnavailable {
		t.Errorf("admission error: %v", e)
	}
	if err := g.Blob(context.Background(), push("r"), layer); apierr.From(err).Code != apierr.Denied {
		t.Errorf("a layer was served after its image's admission failed: %v", err)
	}
	// the failure is not remembered: the next request asks again
	if e := apierr.From(g.Manifest(context.Background(), push("r"), d, image)); e.HTTPStatus() != http.StatusServiceUnavailable {
		t.Errorf("admission that left it pending: %v", e)
	}
	if err := g.Manifest(context.Background(), push("r"), d, image); err != nil {
		t.Errorf("refused once admission worked: %v", err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d admissions, want 3 (each request after a failure asks again)", n)
	}
	if err := g.Blob(context.Background(), push("r"), layer); err != nil {
		t.Errorf("layer of the admitted image: %v", err)
	}
}

func TestRevokeGrace(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)}}
	g, _ := New(Config{RevokeGrace: 200 * time.Millisecond}, md, bodies{d: image}, storedVerdict(md), nil, nil)
	if err := g.Manifest(context.Background(), push("r"), d, image); err != nil {
		t.Fatal(err)
	}
	q := verdict(d, meta.Quarantined, "a new advisory")
	md.VerdictSet(context.Background(), q, "gatehouse", "")
	if err := g.Reconsider(context.Background(), push("r"), d); err != nil {
		t.Fatal(err)
	}
	if err := g.Manifest(context.Background(), push("r"), d, image); err != nil {
		t.Fatalf("refused within the grace period: %v", err)
	}
	time.Sleep(400 * time.Millisecond)
	if err := g.Manifest(context.Background(), push("r"), d, image); apierr.From(err).Code != apierr.Denied {
		t.Errorf("after the grace period: %v", err)
	}
	if err := g.Blob(context.Background(), push("r"), layer); err == nil {
		t.Errorf("its layer is still served after the grace period")
	}
}

func TestBlobBeforeManifestAfterRestart(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)}}
	g, _ := New(Config{}, md, bodies{d: image}, nil, nil, nil) // a fresh gate: nothing learned yet
	if err := g.Blob(context.Background(), push("r"), layer); err != nil {
		t.Errorf("layer of a stored admitted image, asked for before its manifest: %v", err)
	}
	if err := g.Blob(context.Background(), push("r"), "sha256:3333333333333333333333333333333333333333333333333333333333333333"); apierr.From(err).Code != apierr.Denied {
		t.Errorf("a blob no admitted image references: %v", err)
	}
}

func TestReferrerServedAsMetadata(t *testing.T) {
	sub := digest.FromBytes(image)
	sig := []byte(`{"schemaVersion":2,"config":{"digest":"` + string(config) + `"},"layers":[{"digest":"` + string(layer) + `"}],"subject":{"digest":"` + string(sub) + `"}}`)
	d := digest.FromBytes(sig)
	md := &fakeMeta{v: map[string]meta.Verdict{}}
	g, _ := New(Config{}, md, bodies{d: sig, sub: image}, storedVerdict(md), nil, nil)
	// a scan of the referrer concluded it is no admissible image
	md.VerdictSet(context.Background(), verdict(d, meta.Quarantined, "not a tar layer"), "gatehouse", "")
	if err := g.Reconsider(context.Background(), push("r"), d); err != nil {
		t.Fatal(err)
	}
	if err := g.Manifest(context.Background(), push("r"), d, sig); err != nil {
		t.Errorf("referrer manifest: %v", err)
	}
	if err := g.Blob(context.Background(), push("r"), layer); err == nil {
		t.Errorf("a referrer made its blobs pullable")
	}
}

func TestBlobsTheScanDidNotReadAreNotServed(t *testing.T) {
	d := digest.FromBytes(image)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): verdict(d, meta.Admitted)},
		read: map[digest.Digest][]digest.Digest{d: {config}}} // the layer was skipped
	g, _ := New(Config{}, md, bodies{d: image}, nil, nil, nil)
	if err := g.Manifest(context.Background(), push("r"), d, image); err != nil {
		t.Fatal(err)
	}
	if err := g.Blob(context.Background(), push("r"), config); err != nil {
		t.Errorf("config the scan read: %v", err)
	}
	if err := g.Blob(context.Background(), push("r"), layer); apierr.From(err).Code != apierr.Denied {
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
	g, _ := New(Config{}, md, bodies{d: image}, storedVerdict(md), nil, nil)
	g.Manifest(context.Background(), push("r"), d, image)
	if g.Mountable(layer) || g.Mountable(config) {
		t.Fatalf("a quarantined image's blobs are mountable")
	}
	md.VerdictSet(context.Background(), verdict(d, meta.Admitted), "gatehouse", "")
	if err := g.Reconsider(context.Background(), push("r"), d); err != nil {
		t.Fatal(err)
	}
	if !g.Mountable(layer) {
		t.Errorf("an admitted image's layer is not mountable")
	}
	md.VerdictSet(context.Background(), verdict(d, meta.Quarantined, "a new advisory"), "gatehouse", "")
	if err := g.Reconsider(context.Background(), push("r"), d); err != nil {
		t.Fatal(err)
	}
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
			g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: body, sub: image}, admitFunc(func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
				calls.Add(1)
				return verdict(d, meta.Quarantined, "EICAR test file"), nil
			}), nil, nil)
			if err := g.Manifest(context.Background(), push("r"), d, body); apierr.From(err).Code != apierr.Denied {
				t.Errorf("a runnable image with a subject was served as metadata: %v", err)
			}
			if calls.Load() != 1 {
				t.Errorf("%d admissions, want 1", calls.Load())
			}
		})
	}
}

func TestServedIndexGoesBackToAdmissionWhenAChildIsRefused(t *testing.T) {
	child := digest.FromBytes(image)
	idx := []byte(`{"schemaVersion":2,"manifests":[{"digest":"` + string(child) + `","platform":{"os":"linux","architecture":"amd64"}}]}`)
	d := digest.FromBytes(idx)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", child): verdict(child, meta.Admitted)}}
	var indexCalls atomic.Int32
	// the index is judged by its child's stored verdict; an image answers its stored verdict
	g, _ := New(Config{}, md, bodies{d: idx, child: image}, admitFunc(func(ctx context.Context, repo string, dd digest.Digest) (meta.Verdict, error) {
		if dd != d {
			return md.VerdictGet(ctx, repo, dd)
		}
		indexCalls.Add(1)
		cv, err := md.VerdictGet(ctx, repo, child)
		if err != nil {
			return meta.Verdict{}, err
		}
		if cv.State.Serves() {
			return verdict(d, meta.Admitted), nil
		}
		var dec policies.Decision
		_ = json.Unmarshal(cv.Decision, &dec)
		return verdict(d, meta.Quarantined, "child "+child.String()+" is "+string(cv.State)+": "+dec.Reasons(3)), nil
	}), nil, nil)
	if err := g.Manifest(context.Background(), push("r"), d, idx); err != nil {
		t.Fatalf("index with an admitted child: %v", err)
	}
	if n := indexCalls.Load(); n != 1 {
		t.Fatalf("the index was admitted %d times, want 1", n)
	}
	// a database update quarantines the child
	md.VerdictSet(context.Background(), verdict(child, meta.Quarantined, "CVE-2021-23337 (high)"), "gatehouse", "")
	if err := g.Reconsider(context.Background(), push("r"), child); err != nil {
		t.Fatal(err)
	}
	if n := indexCalls.Load(); n != 2 {
		t.Errorf("the index was admitted %d times, want 2 (judged again once its child was refused)", n)
	}
	err := g.Manifest(context.Background(), push("r"), d, idx)
	if e := apierr.From(err); e.Code != apierr.Denied || e.HTTPStatus() != http.StatusForbidden || !strings.Contains(err.Error(), "CVE-2021-23337") {
		t.Errorf("index after its child was quarantined: %v", err)
	}
}

// drained waits until no admission Submit started is still running.
func drained(t *testing.T, g *Gate) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); len(g.background) > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("background admissions did not end")
		}
	}
}

func TestSubmitAdmitsAnImageOnce(t *testing.T) {
	img := []byte(`{"schemaVersion":2,"mediaType":"` + manifest.OCIManifest + `","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + string(config) +
		`"},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"` + string(layer) + `"}]}`)
	// a cosign signature: an artifact, no image config and no layer a runtime unpacks
	sig := []byte(`{"schemaVersion":2,"mediaType":"` + manifest.OCIManifest + `","config":{"mediaType":"application/vnd.dev.cosign.artifact.sig.v1+json","digest":"` + string(config) +
		`"},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"` + string(layer) + `"}]}`)
	idx := []byte(`{"schemaVersion":2,"mediaType":"` + manifest.OCIIndex + `","manifests":[{"mediaType":"` + manifest.OCIManifest + `","digest":"` + digest.FromBytes(img).String() + `"}]}`)
	dImg, dSig, dIdx := digest.FromBytes(img), digest.FromBytes(sig), digest.FromBytes(idx)
	var mu sync.Mutex
	calls := map[digest.Digest]int{}
	count := func(d digest.Digest) int { mu.Lock(); defer mu.Unlock(); return calls[d] }
	g, _ := New(Config{}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{dImg: img, dSig: sig, dIdx: idx}, admitFunc(func(_ context.Context, _ string, d digest.Digest) (meta.Verdict, error) {
		mu.Lock()
		calls[d]++
		mu.Unlock()
		return verdict(d, meta.Admitted), nil
	}), nil, nil)

	if err := g.Blob(context.Background(), push("r"), layer); apierr.From(err).Code != apierr.Denied {
		t.Fatalf("a layer was served before its image was admitted: %v", err)
	}
	g.Submit(push("r"), dImg, manifest.OCIManifest)
	drained(t, g)
	if n := count(dImg); n != 1 {
		t.Fatalf("%d admissions after Submit, want 1", n)
	}
	if err := g.Blob(context.Background(), push("r"), layer); err != nil {
		t.Errorf("layer of the image Submit admitted: %v", err)
	}
	if err := g.Manifest(context.Background(), push("r"), dImg, img); err != nil {
		t.Errorf("the image Submit admitted: %v", err)
	}
	for range 20 {
		g.Submit(push("r"), dImg, manifest.OCIManifest)
	}
	drained(t, g)
	if n := count(dImg); n != 1 {
		t.Errorf("%d admissions after submitting an admitted image again, want 1", n)
	}

	g.Submit(push("r"), dIdx, manifest.OCIIndex)
	g.Submit(push("other"), dImg, manifest.OCIIndex) // the media type decides, not the bytes
	g.Submit(push("r"), dSig, manifest.OCIManifest)
	drained(t, g)
	if n := count(dIdx); n != 0 {
		t.Errorf("an index was admitted %d times by Submit, want none", n)
	}
	if n := count(dImg); n != 1 {
		t.Errorf("%d admissions of the image, want 1 (a non-image media type is not admitted)", n)
	}
	if n := count(dSig); n != 0 {
		t.Errorf("an artifact (a cosign signature) was admitted %d times by Submit, want none", n)
	}
	if err := g.Blob(context.Background(), push("other"), layer); apierr.From(err).Code != apierr.Denied {
		t.Errorf("the layer was served from a repository where nothing was admitted: %v", err)
	}
}

func TestReleaseAnswersHeldRequests(t *testing.T) {
	d := digest.FromBytes(image)
	release := make(chan struct{})
	defer close(release)
	g, _ := New(Config{Hold: time.Hour}, &fakeMeta{v: map[string]meta.Verdict{}}, bodies{d: image}, admitFunc(func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		select {
		case <-release:
			return verdict(d, meta.Admitted), nil
		case <-ctx.Done(): // the shutdown stops it
			return meta.Verdict{}, ctx.Err()
		}
	}), nil, nil)
	errc := make(chan error, 1)
	go func() { errc <- g.Manifest(context.Background(), push("r"), d, image) }()
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
	if e := apierr.From(g.Manifest(context.Background(), push("r"), d, image)); e.HTTPStatus() != http.StatusServiceUnavailable {
		t.Errorf("a request after Release: %v", e)
	}
}

func TestIndexJudgedWhileItsChildIsRefused(t *testing.T) {
	child := digest.FromBytes(image)
	idx := []byte(`{"schemaVersion":2,"manifests":[{"digest":"` + string(child) + `","platform":{"os":"linux","architecture":"amd64"}}]}`)
	d := digest.FromBytes(idx)
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", child): verdict(child, meta.Admitted)}}
	judged, release := make(chan struct{}, 1), make(chan struct{})
	var first atomic.Bool
	g, _ := New(Config{}, md, bodies{d: idx, child: image}, admitFunc(func(ctx context.Context, repo string, dd digest.Digest) (meta.Verdict, error) {
		if dd != d {
			return md.VerdictGet(ctx, repo, dd)
		}
		cv, _ := md.VerdictGet(ctx, repo, child)
		ok := cv.State.Serves()
		if first.CompareAndSwap(false, true) {
			judged <- struct{}{}
			<-release
		}
		if ok {
			return verdict(d, meta.Admitted), nil
		}
		return verdict(d, meta.Quarantined, "child refused"), nil
	}), nil, nil)
	errc := make(chan error, 1)
	go func() { errc <- g.Manifest(context.Background(), push("r"), d, idx) }()
	<-judged // the index's admission has read its child's verdict: admitted
	md.VerdictSet(context.Background(), verdict(child, meta.Quarantined, "CVE-2021-23337 (high)"), "gatehouse", "")
	if err := g.Reconsider(context.Background(), push("r"), child); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-errc; apierr.From(err).Code != apierr.Denied {
		t.Errorf("the first request for the index: %v", err)
	}
	if err := g.Manifest(context.Background(), push("r"), d, idx); apierr.From(err).Code != apierr.Denied {
		t.Errorf("the index is served though its child was refused while the index was under admission: %v", err)
	}
}

// A stored verdict is served as it is only while it stands: one reached under another policy,
// on an older match of its scan, or on an index, is admitted again the first time it is met.
func TestStoredVerdictThatNoLongerStandsIsAdmittedAgain(t *testing.T) {
	ctx := context.Background()
	eng, err := policies.Load(ctx, policies.Default())
	if err != nil {
		t.Fatal(err)
	}
	rt := route.Resolved{Route: &route.Route{Kind: route.Push, Admission: route.Admission{Policy: &policies.Bundle{Engine: eng}}}, Name: "r"}
	d := digest.FromBytes(image)
	idx := []byte(`{"schemaVersion":2,"manifests":[{"digest":"` + string(d) + `","platform":{"os":"linux","architecture":"amd64"}}]}`)
	dIdx := digest.FromBytes(idx)
	for _, tc := range []struct {
		name   string
		d      digest.Digest
		body   []byte
		stored meta.Verdict
	}{
		{"another policy", d, image, meta.Verdict{Repo: "r", Digest: d, State: meta.Admitted, PolicyDigest: "sha256:old", DBVersion: ""}},
		{"an older match", d, image, meta.Verdict{Repo: "r", Digest: d, State: meta.Admitted, PolicyDigest: eng.Digest(), DBVersion: "v0"}},
		{"an index", dIdx, idx, meta.Verdict{Repo: "r", Digest: dIdx, State: meta.Admitted, PolicyDigest: meta.IndexPolicy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			md := &fakeMeta{v: map[string]meta.Verdict{key("r", tc.d): tc.stored}}
			var calls atomic.Int32
			g, _ := New(Config{}, md, bodies{d: image, dIdx: idx}, admitFunc(func(ctx context.Context, repo string, dd digest.Digest) (meta.Verdict, error) {
				calls.Add(1)
				return verdict(dd, meta.Quarantined, "CVE-2024-45338 (critical)"), nil
			}), nil, nil)
			if tc.d == d {
				// blobs asked for first (after a restart) are not served on it either
				if err := g.Blob(ctx, rt, layer); apierr.From(err).Code != apierr.Denied {
					t.Errorf("a layer served on a verdict that no longer stands: %v", err)
				}
			}
			if err := g.Manifest(ctx, rt, tc.d, tc.body); apierr.From(err).Code != apierr.Denied || calls.Load() != 1 {
				t.Errorf("served on a verdict that no longer stands: %v (%d admissions)", err, calls.Load())
			}
		})
	}
	// one that stands is served without an admission
	md := &fakeMeta{v: map[string]meta.Verdict{key("r", d): {Repo: "r", Digest: d, State: meta.Admitted, PolicyDigest: eng.Digest()}}}
	g, _ := New(Config{}, md, bodies{d: image}, admitFunc(func(context.Context, string, digest.Digest) (meta.Verdict, error) {
		t.Error("a verdict that stands was admitted again")
		return meta.Verdict{}, errors.New("no")
	}), nil, nil)
	if err := g.Blob(ctx, rt, layer); err != nil {
		t.Errorf("layer of a verdict that stands: %v", err)
	}
	if err := g.Manifest(ctx, rt, d, image); err != nil {
		t.Errorf("manifest of a verdict that stands: %v", err)
	}
}
