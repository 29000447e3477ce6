package pull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
)

// endless is a body that never ends, counting what was read of it.
type endless struct{ n atomic.Int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.n.Add(int64(len(p)))
	return len(p), nil
}

func (e *endless) Close() error { return nil }

// drip sends one byte every step until closed; Close wakes a read waiting on it.
type drip struct {
	step   time.Duration
	once   sync.Once
	closed chan struct{}
}

func newDrip(step time.Duration) *drip { return &drip{step: step, closed: make(chan struct{})} }

func (d *drip) Read(p []byte) (int, error) {
	select {
	case <-time.After(d.step):
		p[0] = 'x'
		return 1, nil
	case <-d.closed:
		return 0, errors.New("read on closed body")
	}
}

func (d *drip) Close() error { d.once.Do(func() { close(d.closed) }); return nil }

func TestBoundedBodyCutsPastTheLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		limit   int64
		src     int64 // bytes the source has (-1: endless)
		wantErr bool
		wantN   int64 // bytes read from the source
	}{
		{"exact size", 100, 100, false, 100},
		{"shorter", 100, 40, false, 40},
		{"one byte over", 100, 101, true, 101},
		{"endless", 100, -1, true, 101},
		{"endless, empty blob", 0, -1, true, 1},
		{"no limit", -1, 5 << 20, false, 5 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &endless{}
			var src io.ReadCloser = e
			if tc.src >= 0 {
				src = struct {
					io.Reader
					io.Closer
				}{io.LimitReader(e, tc.src), e}
			}
			b := newBoundedBody(src, tc.limit, "its descriptor declares", UpstreamLimits{Grace: time.Minute, MinRate: 1}, time.Now())
			defer b.Close()
			got, err := io.Copy(io.Discard, b)
			if (err != nil) != tc.wantErr || (err != nil && !errors.Is(err, errOverSize)) {
				t.Fatalf("err = %v, want an over-size error: %v", err, tc.wantErr)
			}
			if n := e.n.Load(); n != tc.wantN {
				t.Errorf("%d bytes read from the source, want %d", n, tc.wantN)
			}
			if tc.wantErr && got != tc.limit+1 {
				t.Errorf("%d bytes returned, want the limit and the byte that broke it (%d)", got, tc.limit+1)
			}
		})
	}
}

func TestBoundedBodyFloorRate(t *testing.T) {
	lim := UpstreamLimits{Grace: 300 * time.Millisecond, MinRate: 1 << 10}
	t.Run("a drip is cut once past its grace", func(t *testing.T) {
		start := time.Now()
		b := newBoundedBody(newDrip(20*time.Millisecond), 1<<20, "its descriptor declares", lim, start)
		defer b.Close()
		n, err := io.Copy(io.Discard, b)
		took := time.Since(start)
		if !errors.Is(err, errTooSlow) {
			t.Fatalf("err = %v after %d bytes, want too slow", err, n)
		}
		// the drip's ~15 bytes allow ~15 ms past the grace; the rest is scheduling slack
		if took < lim.Grace || took > lim.Grace+time.Second {
			t.Errorf("cut after %s, want just past the %s grace", took, lim.Grace)
		}
		t.Logf("a 50 B/s drip under a %d B/s floor: cut after %s and %d bytes: %v", lim.MinRate, took.Round(time.Millisecond), n, err)
	})
	t.Run("a body keeping to the floor is not cut", func(t *testing.T) {
		// 64 bytes every 20 ms is 3.2 KiB/s, over the 1 KiB/s floor, for three graces' time
		r, w := io.Pipe()
		go func() {
			for range 45 {
				time.Sleep(20 * time.Millisecond)
				w.Write(make([]byte, 64))
			}
			w.Close()
		}()
		b := newBoundedBody(r, -1, "", lim, time.Now())
		defer b.Close()
		if n, err := io.Copy(io.Discard, b); err != nil || n != 45*64 {
			t.Errorf("read %d bytes, err %v", n, err)
		}
	})
	t.Run("the deadline moves with the bytes, to grace + size/rate", func(t *testing.T) {
		b := newBoundedBody(io.NopCloser(strings.NewReader("")), 4<<10, "", lim, time.Now())
		defer b.Close()
		b.n.Store(4 << 10)
		if got, want := time.Until(b.due()), lim.Grace+4*time.Second; got > want || got < want-100*time.Millisecond {
			t.Errorf("due in %s, want %s", got, want)
		}
	})
}

// layered is an image manifest whose one layer is declared size bytes long.
func (f *fakeUpstream) layered(tag string, layer digest.Digest, size int64, extra int) digest.Digest {
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := digest.FromBytes(cfg)
	layers := []string{fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":%d}`, layer, size)}
	for i := range extra {
		layers = append(layers, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":1}`, digest.FromString(fmt.Sprint(i))))
	}
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` +
		cd.String() + `","size":` + fmt.Sprint(len(cfg)) + `},"layers":[` + strings.Join(layers, ",") + `]}`)
	d := digest.FromBytes(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs[cd] = cfg
	f.manifests[d.String()] = m
	f.tags[tag] = d
	return d
}

// A client's GET by digest alone of a layer an upstream streams endlessly is held to the size
// the manifest fetched before it declared: the client gets the error and no byte, the upstream
// is read one byte past the size, and nothing is stored.
func TestClientBlobHeldToTheDeclaredSize(t *testing.T) {
	p, f, rt, _, cs := setup(t)
	ctx := context.Background()
	layer := digest.FromString("the layer the manifest means")
	e := &endless{}
	f.body = func(d digest.Digest) io.ReadCloser {
		if d == layer {
			return e
		}
		return nil
	}
	if err := p.Manifest(ctx, rt, f.layered("v1", layer, 100, 0)); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	served, err := p.Blob(ctx, rt, layer, rec)
	if served || err == nil || !strings.Contains(apierr.From(err).Message, "more than the 100 bytes its descriptor declares") {
		t.Fatalf("served %v, err %v; want the client told the blob runs past its declared 100 bytes", served, err)
	}
	if rec.Body.Len() != 0 {
		t.Errorf("the client got %d bytes of a refused blob", rec.Body.Len())
	}
	if n := e.n.Load(); n != 101 {
		t.Errorf("%d bytes read from the upstream, want 101", n)
	}
	if _, err := cs.BlobStat(ctx, rt.Name, layer); err == nil {
		t.Error("the blob was stored")
	}
}

// With no descriptor seen, limits.blob_size bounds a chunked body, and refuses one announced
// larger at once.
func TestClientBlobHeldToTheBlobSizeLimit(t *testing.T) {
	p, f, rt, _, _ := setup(t)
	p.opts.maxBlobSize = 64 << 10
	ctx := context.Background()
	e := &endless{}
	f.body = func(digest.Digest) io.ReadCloser { return e }
	served, err := p.Blob(ctx, rt, digest.FromString("never seen"), httptest.NewRecorder())
	if served || err == nil || !strings.Contains(apierr.From(err).Message, "limits.blob_size allows") {
		t.Fatalf("served %v, err %v", served, err)
	}
	if n := e.n.Load(); n != 64<<10+1 {
		t.Errorf("%d bytes read, want limits.blob_size + 1", n)
	}
	f.body = nil
	big := bytes.Repeat([]byte("y"), 64<<10+1)
	bd := digest.FromBytes(big)
	f.mu.Lock()
	f.blobs[bd] = big
	f.mu.Unlock()
	f.sent.Store(0)
	if _, err := p.Blob(ctx, rt, bd, httptest.NewRecorder()); err == nil || !strings.Contains(err.Error(), "offers 65537 bytes") || f.sent.Load() != 0 {
		t.Errorf("announced over limits.blob_size: err %v, %d bytes read", err, f.sent.Load())
	}
}

// A dripping upstream ends by the route's deadline, for the client and for a scan's fetch.
func TestDripEndsByTheDeadline(t *testing.T) {
	p, f, rt, _, cs := setup(t)
	lim := UpstreamLimits{Grace: 300 * time.Millisecond, MinRate: 1 << 10, MaxLayers: 10}
	p.opts.limits["docker.io"] = lim
	ctx := context.Background()
	layer := digest.FromString("dripped")
	f.body = func(d digest.Digest) io.ReadCloser {
		if d == layer {
			return newDrip(10 * time.Millisecond)
		}
		return nil
	}
	for _, client := range []bool{true, false} {
		start := time.Now()
		var err error
		if client {
			var served bool
			served, err = p.Blob(ctx, rt, layer, httptest.NewRecorder())
			if served {
				t.Error("a blob that failed before its first chunk was streamed")
			}
		} else {
			err = p.EnsureBlob(ctx, rt, layer, 64<<10)
		}
		took := time.Since(start)
		if err == nil || !errors.Is(apierr.From(err).Err, errTooSlow) {
			t.Errorf("client %v: err %v, want too slow", client, err)
		}
		if took > lim.Grace+2*time.Second {
			t.Errorf("client %v: ended after %s, past its deadline", client, took)
		}
		t.Logf("client %v: a 100 B/s drip ended after %s: %v", client, took.Round(time.Millisecond), err)
	}
	// two fetches of it at once share one read, and the one that joined does not try again
	gets, start := f.blobGets.Load(), time.Now()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if err := p.EnsureBlob(ctx, rt, layer, 64<<10); err == nil {
				t.Error("a dripped blob was fetched")
			}
		})
	}
	wg.Wait()
	if n, took := f.blobGets.Load()-gets, time.Since(start); n != 1 || took > lim.Grace+2*time.Second {
		t.Errorf("two fetches at once: %d upstream requests, ended after %s; want one, by one deadline", n, took)
	}
	if _, err := cs.BlobStat(ctx, rt.Name, layer); err == nil {
		t.Error("the dripped blob was stored")
	}
}

// An image manifest listing more layers than the route accepts is refused, and none of its
// layers is asked for.
func TestManifestLayersBounded(t *testing.T) {
	p, f, rt, _, _ := setup(t)
	p.opts.limits["docker.io"] = UpstreamLimits{Grace: time.Second, MinRate: 1, MaxLayers: 4}
	ctx := context.Background()
	ok := f.layered("four", digest.FromString("l"), 1, 3)
	if err := p.Manifest(ctx, rt, ok); err != nil {
		t.Fatalf("four layers: %v", err)
	}
	over := f.layered("five", digest.FromString("l"), 1, 4)
	err := p.Manifest(ctx, rt, over)
	if e := apierr.From(err); err == nil || e.Status != 502 || !strings.Contains(e.Message, "listing 5 layers; Gatehouse accepts at most 4") {
		t.Fatalf("five layers: %v", err)
	}
	if _, err := p.meta.ManifestGet(ctx, rt.Name, over); err == nil {
		t.Error("the refused manifest was recorded")
	}
	// by tag, the client is told the same (it was "failed: <nil>")
	if _, _, err := p.Tag(ctx, rt, "five"); err == nil || !strings.Contains(apierr.From(err).Message, "listing 5 layers") {
		t.Errorf("five layers by tag: %v", err)
	}
	if n := f.blobGets.Load(); n != 0 {
		t.Errorf("%d blob requests upstream", n)
	}
}

// One manifest's companions fetch a bounded number of blobs, however many each lists.
func TestCompanionBlobsCounted(t *testing.T) {
	p, f, rt, _, cs := setup(t)
	p.opts.companionBlobs = 4
	ctx := context.Background()
	subject := f.image("v1", `{"n":1}`)
	const empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
	f.mu.Lock()
	f.blobs[empty] = []byte("{}")
	var layers []digest.Digest
	for i := range 10 {
		blob := []byte(fmt.Sprint("signature ", i))
		bd := digest.FromBytes(blob)
		f.blobs[bd] = blob
		layers = append(layers, bd)
		m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/x-test","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":%q,"size":2},"layers":[{"mediaType":"application/x-test","digest":%q,"size":%d}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":1}}`, empty, bd, len(blob), subject))
		md := digest.FromBytes(m)
		f.manifests[md.String()] = m
		f.referrers = append(f.referrers, v1.Descriptor{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: int64(len(m))})
	}
	f.mu.Unlock()
	p.companions(ctx, rt, f, subject)
	fetched := 0
	for _, d := range layers {
		if _, err := cs.BlobStat(ctx, rt.Name, d); err == nil {
			fetched++
		}
	}
	if got := f.blobGets.Load(); got > 4 || fetched != 3 {
		t.Errorf("%d blob requests upstream, %d signature blobs stored; want 4 requests, the empty config and three signatures", got, fetched)
	}
}
