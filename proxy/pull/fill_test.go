package pull

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/storage/content"
)

// stuckClient is a response whose reader takes a few bytes and then stops reading until
// unblocked (a socket nobody reads).
type stuckClient struct {
	header  http.Header
	mu      sync.Mutex
	body    bytes.Buffer
	take    int           // bytes accepted before it stops
	stopped chan struct{} // closed once it stops
	resume  chan struct{} // closing it lets writes through again
	once    sync.Once
}

func newStuckClient(take int) *stuckClient {
	return &stuckClient{header: http.Header{}, take: take, stopped: make(chan struct{}), resume: make(chan struct{})}
}

func (s *stuckClient) Header() http.Header { return s.header }
func (s *stuckClient) WriteHeader(int)     {}

func (s *stuckClient) Write(p []byte) (int, error) {
	s.mu.Lock()
	room := s.take - s.body.Len()
	if room >= len(p) || s.take < 0 {
		s.body.Write(p)
		s.mu.Unlock()
		return len(p), nil
	}
	s.body.Write(p[:max(room, 0)])
	s.take = -1 // once resumed, take everything
	s.mu.Unlock()
	s.once.Do(func() { close(s.stopped) })
	<-s.resume
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body.Write(p[max(room, 0):])
	return len(p), nil
}

func (s *stuckClient) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.body.Bytes())
}

// onDisk moves the puller's store to the filesystem driver, whose writer is linear in the
// blob's size (distribution's inmemory driver copies its whole buffer on every write).
func onDisk(t *testing.T, p *Puller) {
	t.Helper()
	fs, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := content.New(context.Background(), fs)
	if err != nil {
		t.Fatal(err)
	}
	p.content = cs
}

func randomBlob(t *testing.T, f *fakeUpstream, size int) ([]byte, digest.Digest) {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	d := digest.FromBytes(data)
	f.mu.Lock()
	f.blobs[d] = data
	f.mu.Unlock()
	return data, d
}

func storedBlob(t *testing.T, p *Puller, repo string, d digest.Digest) []byte {
	t.Helper()
	ctx := context.Background()
	desc, err := p.content.BlobStat(ctx, repo, d)
	if err != nil {
		t.Fatalf("blob not stored: %v", err)
	}
	rc, err := p.content.BlobReader(ctx, desc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A client that reads 1 KiB of an uncached blob and stops, and another that stops, hold up
// neither the fill nor a third client nor the scanner; the stuck first client, once it reads
// again, gets the whole blob from the store.
func TestSlowClientsDoNotHoldTheFill(t *testing.T) {
	p, f, rt, _, _ := setup(t)
	onDisk(t, p)
	data, d := randomBlob(t, f, followWindow+8<<20) // past the follow window
	ctx := context.Background()

	first := newStuckClient(1 << 10)
	firstDone := make(chan error, 1)
	go func() {
		served, err := p.Blob(ctx, rt, d, first)
		if !served && err == nil {
			err = errors.New("the first client did not lead the fetch")
		}
		firstDone <- err
	}()
	select {
	case <-first.stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the first client never got its first KiB")
	}
	second := newStuckClient(4 << 10)
	secondDone := make(chan error, 1)
	go func() {
		_, err := p.Blob(ctx, rt, d, second)
		secondDone <- err
	}()

	start := time.Now()
	third := httptest.NewRecorder()
	served, err := p.Blob(ctx, rt, d, third)
	if err != nil || served {
		t.Fatalf("third client: served %v, err %v (it should wait for the stored blob)", served, err)
	}
	if got := storedBlob(t, p, rt.Name, d); !bytes.Equal(got, data) {
		t.Fatalf("stored %d bytes, want the %d-byte blob", len(got), len(data))
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the third client waited %s behind two stuck ones", took)
	}
	// the scanner's fetch of the same blob is not held either
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.EnsureBlob(sctx, rt, d, -1); err != nil {
		t.Errorf("EnsureBlob: %v", err)
	}
	if err := <-secondDone; err != nil {
		t.Errorf("second client: %v", err)
	}
	if n := f.blobGets.Load(); n != 1 {
		t.Errorf("%d upstream reads, want 1", n)
	}

	close(first.resume)
	select {
	case err := <-firstDone:
		if err != nil {
			t.Fatalf("first client: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first client never finished after it read again")
	}
	if got := first.bytes(); !bytes.Equal(got, data) {
		t.Errorf("the first client got %d bytes (digest %s), want the blob", len(got), digest.FromBytes(got))
	}
}

// A client that keeps up is served from the window, the whole blob; the blob, several chunks
// long, is committed on the inmemory driver too.
func TestFillStreamsWithinTheWindow(t *testing.T) {
	p, f, rt, _, _ := setup(t)
	data, d := randomBlob(t, f, 3<<20+17)
	rec := httptest.NewRecorder()
	served, err := p.Blob(context.Background(), rt, d, rec)
	if !served || err != nil || !bytes.Equal(rec.Body.Bytes(), data) {
		t.Fatalf("served %v err %v, %d bytes", served, err, rec.Body.Len())
	}
	p.Close(5 * time.Second)
	if got := storedBlob(t, p, rt.Name, d); !bytes.Equal(got, data) {
		t.Errorf("stored %d bytes", len(got))
	}
}

// understated is an upstream whose Content-Length is one byte short of the blob.
type understated struct{ *fakeUpstream }

func (u understated) BlobGet(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error) {
	rc, n, err := u.fakeUpstream.BlobGet(ctx, repo, d)
	return rc, n - 1, err
}

// A fill that fails after the client fell out of the window cuts the client off; an upstream
// that sends more than it announced is refused before the client has a byte, and the client is
// told why instead.
func TestFillFailuresAbortTheClient(t *testing.T) {
	p, f, rt, _, _ := setup(t)
	onDisk(t, p)
	f.lie.Store(true)
	_, d := randomBlob(t, f, followWindow+4<<20)
	slow := newStuckClient(1 << 10)
	done := make(chan error, 1)
	go func() {
		_, err := p.Blob(context.Background(), rt, d, slow)
		done <- err
	}()
	<-slow.stopped
	time.Sleep(200 * time.Millisecond) // the fill reads on, fails, and ends
	close(slow.resume)
	if err := <-done; !errors.Is(err, ErrAborted) {
		t.Errorf("a lying upstream behind a lagging client: %v, want ErrAborted", err)
	}
	if _, err := p.content.BlobStat(context.Background(), rt.Name, d); err == nil {
		t.Error("a wrong blob was stored")
	}

	f.lie.Store(false)
	p.upstreams["docker.io"] = understated{f}
	data := []byte("eleven bytes")
	od := digest.FromBytes(data)
	f.blobs[od] = data
	rec := httptest.NewRecorder()
	served, err := p.Blob(context.Background(), rt, od, rec)
	if served || err == nil || !strings.Contains(apierr.From(err).Message, "more than the 11 bytes its Content-Length announced") {
		t.Fatalf("understated upstream: served %v, err %v; want not served, and why", served, err)
	}
	if rec.Body.Len() != 0 || len(rec.Header()) != 0 {
		t.Errorf("the client got %d bytes and headers %v of a refused blob", rec.Body.Len(), rec.Header())
	}
}
