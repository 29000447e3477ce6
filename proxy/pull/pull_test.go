package pull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/proxy/upstream"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

// fakeUpstream is an in-memory registry for the unit tests of this package (the end-to-end
// evidence runs against the real distribution registry in integration/).
type fakeUpstream struct {
	mu        sync.Mutex
	manifests map[string][]byte // by digest
	tags      map[string]digest.Digest
	blobs     map[digest.Digest][]byte
	down      atomic.Bool // every call fails as unreachable
	lie       atomic.Bool // blob bodies are corrupted
	heads     atomic.Int64
	blobGets  atomic.Int64
	gate      chan struct{} // if set, BlobGet waits on it
	referrers []v1.Descriptor
	chunked   atomic.Bool  // BlobGet announces no length
	sent      atomic.Int64 // blob bytes read from BlobGet bodies
	// body, if set and it returns a reader for the digest, is that blob's body, sent chunked
	// (an endless or dripping upstream)
	body func(digest.Digest) io.ReadCloser
}

func newFake() *fakeUpstream {
	return &fakeUpstream{manifests: map[string][]byte{}, tags: map[string]digest.Digest{}, blobs: map[digest.Digest][]byte{}}
}

func (f *fakeUpstream) URL() string { return "https://fake.example" }

func (f *fakeUpstream) unreachable() error {
	if f.down.Load() {
		return &upstream.Error{Upstream: f.URL(), Message: "connection refused"}
	}
	return nil
}

func notFound() error {
	return &upstream.Error{Status: 404, Upstream: "https://fake.example", Message: "not found"}
}

func (f *fakeUpstream) ManifestHead(_ context.Context, _, ref string) (v1.Descriptor, error) {
	if !strings.HasPrefix(ref, "sha256-") { // companion lookups run in the background; count tag HEADs
		f.heads.Add(1)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unreachable(); err != nil {
		return v1.Descriptor{}, err
	}
	d, ok := f.tags[ref]
	if !ok {
		return v1.Descriptor{}, notFound()
	}
	return v1.Descriptor{Digest: d, MediaType: "application/vnd.oci.image.manifest.v1+json"}, nil
}

func (f *fakeUpstream) ManifestGet(_ context.Context, _, ref string) (upstream.Manifest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unreachable(); err != nil {
		return upstream.Manifest{}, err
	}
	if d, ok := f.tags[ref]; ok {
		ref = d.String()
	}
	b, ok := f.manifests[ref]
	if !ok {
		return upstream.Manifest{}, notFound()
	}
	return upstream.Manifest{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest.FromBytes(b), Body: b}, nil
}

func (f *fakeUpstream) BlobGet(_ context.Context, _ string, d digest.Digest) (io.ReadCloser, int64, error) {
	f.blobGets.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.unreachable(); err != nil {
		return nil, 0, err
	}
	if f.body != nil {
		if rc := f.body(d); rc != nil {
			return struct {
				io.Reader
				io.Closer
			}{&countReader{r: rc, n: &f.sent}, rc}, -1, nil
		}
	}
	b, ok := f.blobs[d]
	if !ok {
		return nil, 0, notFound()
	}
	if f.lie.Load() {
		b = bytes.ToUpper(b)
	}
	size := int64(len(b))
	if f.chunked.Load() {
		size = -1
	}
	return io.NopCloser(&countReader{r: bytes.NewReader(b), n: &f.sent}), size, nil
}

func (f *fakeUpstream) BlobHead(_ context.Context, _ string, d digest.Digest) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[d]
	if !ok {
		return 0, notFound()
	}
	return int64(len(b)), nil
}

func (f *fakeUpstream) Referrers(context.Context, string, digest.Digest) ([]v1.Descriptor, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.referrers, nil
}

func (f *fakeUpstream) TagList(context.Context, string, int, string) ([]string, bool, error) {
	if err := f.unreachable(); err != nil {
		return nil, false, err
	}
	return []string{"v1"}, false, nil
}

// image adds an image (one config blob) under tag and returns its manifest digest.
func (f *fakeUpstream) image(tag, cfg string) digest.Digest {
	f.mu.Lock()
	defer f.mu.Unlock()
	cd := digest.FromString(cfg)
	f.blobs[cd] = []byte(cfg)
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + cd.String() + `","size":` + strconv.Itoa(len(cfg)) + `},"layers":[]}`)
	d := digest.FromBytes(m)
	f.manifests[d.String()] = m
	f.tags[tag] = d
	return d
}

type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

func setup(t *testing.T) (*Puller, *fakeUpstream, route.Resolved, *clock, *content.Store) {
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
	f := newFake()
	tb, err := route.NewTable([]route.Route{{Prefix: "docker.io", Kind: route.Pull, Upstream: f.URL(), TagTTL: time.Minute, MaxStale: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := tb.Resolve("docker.io/library/app", "")
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{}
	c.t.Store(time.Now().UnixNano())
	p := New(cs, md, map[string]Upstream{"docker.io": f})
	p.opts.now = c.now
	t.Cleanup(func() { p.Close(5 * time.Second) })
	return p, f, rt, c, cs
}

func TestTagLifecycle(t *testing.T) {
	p, f, rt, clk, _ := setup(t)
	ctx := context.Background()
	d1 := f.image("v1", `{"n":1}`)

	d, stale, err := p.Tag(ctx, rt, "v1")
	if err != nil || d != d1 || stale != "" {
		t.Fatalf("first: %s %q %v", d, stale, err)
	}
	// within the TTL: no upstream call
	heads := f.heads.Load()
	if d, _, _ := p.Tag(ctx, rt, "v1"); d != d1 || f.heads.Load() != heads {
		t.Errorf("within TTL: %s, %d HEADs (was %d)", d, f.heads.Load(), heads)
	}
	// past the TTL, unchanged upstream: one HEAD, same digest
	clk.advance(2 * time.Minute)
	if d, _, _ := p.Tag(ctx, rt, "v1"); d != d1 || f.heads.Load() != heads+1 {
		t.Errorf("revalidated: %s, HEADs %d", d, f.heads.Load())
	}
	// the tag moves upstream
	clk.advance(2 * time.Minute)
	d2 := f.image("v1", `{"n":2}`)
	if d, _, _ := p.Tag(ctx, rt, "v1"); d != d2 {
		t.Errorf("moved tag = %s, want %s", d, d2)
	}
	// upstream down: stale within max_stale, marked
	clk.advance(2 * time.Minute)
	f.down.Store(true)
	d, stale, err = p.Tag(ctx, rt, "v1")
	if err != nil || d != d2 || !strings.Contains(stale, "unreachable") {
		t.Errorf("stale: %s %q %v", d, stale, err)
	}
	// beyond max_stale: refused, not served
	clk.advance(2 * time.Hour)
	_, _, err = p.Tag(ctx, rt, "v1")
	if e := apierr.From(err); e.Code != apierr.Unavailable {
		t.Errorf("beyond max_stale: %v", err)
	}
	// upstream back, tag removed upstream: the cached tag goes too
	f.down.Store(false)
	f.mu.Lock()
	delete(f.tags, "v1")
	f.mu.Unlock()
	if _, _, err := p.Tag(ctx, rt, "v1"); apierr.From(err).Code != apierr.ManifestUnknown {
		t.Errorf("removed upstream: %v", err)
	}
	f.down.Store(true)
	if _, _, err := p.Tag(ctx, rt, "v1"); err == nil {
		t.Errorf("a tag removed upstream was served from the cache afterwards: %v", err)
	}
}

func TestBlobSharedAndVerified(t *testing.T) {
	p, f, rt, _, cs := setup(t)
	ctx := context.Background()
	data := bytes.Repeat([]byte("layer"), 100000)
	d := digest.FromBytes(data)
	f.blobs[d] = data
	f.gate = make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := p.Blob(ctx, rt, d, nil)
			errs <- err
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(f.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Blob: %v", err)
		}
	}
	if n := f.blobGets.Load(); n != 1 {
		t.Errorf("10 concurrent fetches made %d upstream reads", n)
	}
	if _, err := cs.BlobStat(ctx, rt.Name, d); err != nil {
		t.Errorf("blob not stored: %v", err)
	}

	// a lying upstream: the streamed response is cut off and nothing is stored
	f.gate = nil
	f.lie.Store(true)
	other := []byte("other layer bytes")
	od := digest.FromBytes(other)
	f.blobs[od] = other
	rec := httptest.NewRecorder()
	served, err := p.Blob(ctx, rt, od, rec)
	if !served || !errors.Is(err, ErrAborted) {
		t.Fatalf("lying upstream: served %v, err %v", served, err)
	}
	if rec.Body.Len() >= len(other) {
		t.Errorf("the client got %d of %d bytes of a wrong blob", rec.Body.Len(), len(other))
	}
	if _, err := cs.BlobStat(ctx, rt.Name, od); err == nil {
		t.Error("a wrong blob was stored")
	}
}

func TestBlobStreamsToClient(t *testing.T) {
	p, f, rt, _, _ := setup(t)
	data := []byte("streamed layer")
	d := digest.FromBytes(data)
	f.blobs[d] = data
	rec := httptest.NewRecorder()
	served, err := p.Blob(context.Background(), rt, d, rec)
	if !served || err != nil || !bytes.Equal(rec.Body.Bytes(), data) {
		t.Fatalf("served %v err %v body %q", served, err, rec.Body)
	}
	if rec.Header().Get("Docker-Content-Digest") != d.String() || rec.Header().Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Errorf("headers %v", rec.Header())
	}
}

func TestClientSinkHoldsBackTheLastByte(t *testing.T) {
	var buf bytes.Buffer
	s := &clientSink{w: &buf}
	s.Write([]byte("abc"))
	s.Write([]byte("def"))
	if buf.String() != "abcde" {
		t.Fatalf("before release: %q", buf.String())
	}
	if err := s.release(); err != nil || buf.String() != "abcdef" {
		t.Fatalf("after release: %q %v", buf.String(), err)
	}
	failing := &clientSink{w: errWriter{}}
	if n, err := failing.Write([]byte("xyz")); n != 3 || err != nil {
		t.Errorf("a failing client must not fail the tee: %d %v", n, err)
	}
	if failing.release() == nil || failing.dropped == 0 {
		t.Errorf("client failure not recorded")
	}
}

type errWriter struct{}

func (errWriter) Write([]byte) (int, error) { return 0, errors.New("client gone") }

func TestUpstreamErrorMapping(t *testing.T) {
	f := newFake()
	tests := []struct {
		err    error
		code   string
		status int
	}{
		{&upstream.Error{Status: 404}, "MANIFEST_UNKNOWN", 404},
		{&upstream.Error{Status: 429, RetryAfter: 30 * time.Second}, "TOOMANYREQUESTS", 429},
		{&upstream.Error{Status: 401}, "DENIED", 403},
		{&upstream.Error{Status: 0, Message: "refused"}, "UNAVAILABLE", 503},
		{&upstream.Error{Status: 502}, "UNAVAILABLE", 503},
		{&upstream.Error{Status: 400}, "UNAVAILABLE", http.StatusBadGateway},
	}
	for _, tt := range tests {
		e := apierr.From(upstreamError(f, "manifest x", tt.err))
		if e.Code.String() != tt.code || e.HTTPStatus() != tt.status {
			t.Errorf("%v -> %s %d, want %s %d", tt.err, e.Code, e.HTTPStatus(), tt.code, tt.status)
		}
	}
	e := apierr.From(upstreamError(f, "manifest x", &upstream.Error{Status: 429, RetryAfter: 30 * time.Second}))
	if e.Header.Get("Retry-After") != "30" {
		t.Errorf("Retry-After = %q", e.Header.Get("Retry-After"))
	}
}

// TestCompanionsBounded: an upstream that attaches many large referrers to an image gets at most
// the referrer count and byte budget fetched, not every one of them.
func TestCompanionsBounded(t *testing.T) {
	for _, tc := range []struct {
		name       string
		n, size    int
		wantAtMost int
	}{
		{"many small referrers", 100, 1 << 10, 32},
		{"a few large ones", 10, 1 << 20, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, f, rt, _, cs := setup(t)
			p.opts.companionBytes = 3<<20 + 1<<19 // room for three 1 MiB blobs
			ctx := context.Background()
			subject := f.image("v1", `{"n":1}`)
			f.mu.Lock()
			for i := range tc.n {
				blob := bytes.Repeat([]byte{byte(i)}, tc.size)
				bd := digest.FromBytes(blob)
				f.blobs[bd] = blob
				m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x-test","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/x-test","digest":%q,"size":%d}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":1}}`, bd, len(blob), subject))
				md := digest.FromBytes(m)
				f.manifests[md.String()] = m
				f.referrers = append(f.referrers, v1.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: int64(len(m))})
			}
			f.blobs["sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"] = []byte("{}")
			f.mu.Unlock()
			p.companions(ctx, rt, f, subject)
			fetched := 0
			f.mu.Lock()
			blobs := f.blobs
			f.mu.Unlock()
			for d, b := range blobs {
				if len(b) == tc.size {
					if _, err := cs.BlobStat(ctx, rt.Name, d); err == nil {
						fetched++
					}
				}
			}
			if fetched == 0 || fetched > tc.wantAtMost {
				t.Errorf("%d referrer blobs fetched, want between 1 and %d", fetched, tc.wantAtMost)
			}
		})
	}
}

type countReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestFillBoundedByTheDescriptor: an upstream that sends more than a blob's descriptor says,
// announced or chunked, is refused without its bytes being read or stored (found by an
// adversarial session: 1 GiB read and written for a 40 KB layer).
func TestFillBoundedByTheDescriptor(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprint("chunked=", chunked), func(t *testing.T) {
			p, f, rt, _, cs := setup(t)
			big := bytes.Repeat([]byte("x"), 8<<20)
			d := digest.FromBytes(big)
			f.mu.Lock()
			f.blobs[d] = big
			f.mu.Unlock()
			f.chunked.Store(chunked)
			err := p.EnsureBlob(context.Background(), rt, d, 100) // the descriptor says 100 bytes
			if err == nil {
				t.Fatal("a blob larger than its descriptor was accepted")
			}
			if n := f.sent.Load(); n > 1<<20 {
				t.Errorf("%d bytes read from the upstream for a 100-byte descriptor", n)
			}
			if _, err := cs.BlobStat(context.Background(), rt.Name, d); err == nil {
				t.Errorf("the oversized blob was stored")
			}
		})
	}
}
