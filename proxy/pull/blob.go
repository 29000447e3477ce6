package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/storage/content"
)

// blobFlights tracks blob fetches in progress, so concurrent requests share one upstream read.
type blobFlights struct {
	mu sync.Mutex
	m  map[string]*blobFlight
}

type blobFlight struct {
	done chan struct{}
	err  error
}

// join returns the flight for key and whether the caller leads it (and must call finish).
func (b *blobFlights) join(key string) (*blobFlight, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f, ok := b.m[key]; ok {
		return f, false
	}
	f := &blobFlight{done: make(chan struct{})}
	b.m[key] = f
	return f, true
}

func (b *blobFlights) finish(key string, f *blobFlight, err error) {
	b.mu.Lock()
	delete(b.m, key)
	b.mu.Unlock()
	f.err = err
	close(f.done)
}

// ErrAborted is returned by Blob when the response was already streaming and had to be cut off
// (the upstream died or lied); the caller must abort the connection so the client sees a
// truncated body, never a complete wrong one.
var ErrAborted = errors.New("blob stream aborted")

// followWindow is how far the client that starts a fill may fall behind the upstream read before
// it stops being handed chunks and goes on from the store once the blob is committed.
const followWindow = 16 << 20

// Blob fetches an uncached blob of a pull route. If w is non-nil and this request leads the
// fetch, the blob streams to w while it is stored (headers and all) and served is true; if it
// then fails, the error wraps ErrAborted. Otherwise (w nil, another request already leads, or
// the fetch failed before the first byte could be sent) Blob returns once the blob is in the
// store, and the caller serves it from there, or returns why not.
//
// A client asks by digest alone; the size the fetch is held to is the one the route's last
// fetched manifests declared for the digest, else the upstream's Content-Length, else
// WithMaxBlobSize's (see fill).
//
// The fetch runs on its own goroutine at the upstream's pace whatever the client that started
// it does: that client follows it through a bounded window, and one that falls behind (or
// stops reading) slows only itself, never the store, the requests waiting for the blob, or the
// scanner.
func (p *Puller) Blob(ctx context.Context, rt route.Resolved, d digest.Digest, w http.ResponseWriter) (served bool, err error) {
	up, err := p.upstream(rt)
	if err != nil {
		return false, err
	}
	want := int64(-1)
	if n, ok := p.declared.Get(rt.Name + "@" + d.String()); ok {
		want = n
	}
	return p.fillOrWait(ctx, rt, up, d, want, w)
}

// fillOrWait fetches blob d (want bytes long, as a descriptor says; -1: unknown) or waits for
// the fetch already running. A request that joined a fetch which then failed tries one fetch
// of its own: the one it joined may have begun before the upstream came back. Not if the
// upstream answered and what it sent broke the fetch's bounds: it would only be refused again,
// and a drip would hold the request for a second deadline.
func (p *Puller) fillOrWait(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest, want int64, w http.ResponseWriter) (bool, error) {
	key := rt.Name + "@" + d.String()
	f, leader := p.blobs.join(key)
	if !leader {
		p.opts.metrics.cache(rt, "blob", "shared")
		err := waitFill(ctx, f, d)
		if err == nil || ctx.Err() != nil || errors.Is(err, errOverSize) || errors.Is(err, errTooSlow) {
			return false, err
		}
		if f, leader = p.blobs.join(key); !leader {
			return false, waitFill(ctx, f, d)
		}
	}
	p.opts.metrics.cache(rt, "blob", "miss")
	var t *tee
	if w != nil {
		t = newTee(followWindow)
	}
	size, err := p.startFill(ctx, key, f, rt, up, d, want, t)
	if err != nil {
		return false, err
	}
	if w == nil {
		return false, waitFill(ctx, f, d)
	}
	return p.follow(ctx, rt, d, size, f, t, w)
}

func waitFill(ctx context.Context, f *blobFlight, d digest.Digest) error {
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return apierr.New(apierr.Unavailable, "gave up waiting for blob %s to arrive from the upstream: %v", d, ctx.Err())
	}
}

// fill fetches a blob of want bytes into the store without a client (companions, scans).
func (p *Puller) fill(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest, want int64) error {
	_, err := p.fillOrWait(ctx, rt, up, d, want, nil)
	return err
}

// startFill opens the upstream read and the upload, then runs the fetch in the background,
// where it ends the flight. An error here has ended it already.
//
// The read is bounded (boundedBody): by the descriptor's size (want) where one is known, else
// by the upstream's Content-Length, else by WithMaxBlobSize's; no more than one byte past the
// bound is read, and a blob that runs past it is refused and its upload removed, so the store
// grows by at most the bound. It must also keep to the route's floor rate, so a drip ends.
func (p *Puller) startFill(ctx context.Context, key string, f *blobFlight, rt route.Resolved, up Upstream, d digest.Digest, want int64, t *tee) (int64, error) {
	fail := func(err error) (int64, error) {
		p.blobs.finish(key, f, err)
		return 0, err
	}
	maxBlob := p.opts.maxBlobSize
	if maxBlob > 0 && want > maxBlob {
		return fail(apierr.New(apierr.Unavailable, "blob %s is %d bytes by its descriptor, over the %d bytes limits.blob_size allows; it is not fetched from %s", d, want, maxBlob, up.URL()))
	}
	// The fetch continues if the client leaves: waiters and the cache still want the blob.
	fctx := context.WithoutCancel(ctx)
	start := time.Now()
	rc, size, err := up.BlobGet(fctx, rt.Remote, d)
	if err != nil {
		return fail(upstreamError(up, "blob "+d.String()+" of "+rt.Remote, err))
	}
	limit, why := size, "its Content-Length announced"
	switch {
	case want >= 0 && size >= 0 && size != want:
		rc.Close()
		return fail(apierr.New(apierr.Unavailable, "the upstream %s offers %d bytes for blob %s, whose descriptor says %d; it is not fetched", up.URL(), size, d, want))
	case want >= 0:
		size, limit, why = want, want, "its descriptor declares"
	case maxBlob > 0 && size > maxBlob:
		rc.Close()
		return fail(apierr.New(apierr.Unavailable, "the upstream %s offers %d bytes for blob %s, over the %d bytes limits.blob_size allows; it is not fetched", up.URL(), size, d, maxBlob))
	case size < 0 && maxBlob > 0:
		limit, why = maxBlob, "limits.blob_size allows"
	}
	body := newBoundedBody(rc, limit, why, p.limits(rt), start)
	u, err := p.content.UploadCreate(fctx, rt.Name)
	if err != nil {
		body.Close()
		return fail(apierr.Unavailablef(err, "storage could not open an upload for blob %s", d))
	}
	p.bg.Add(1)
	go func() {
		defer p.bg.Done()
		defer body.Close()
		p.blobs.finish(key, f, p.fetchBlob(fctx, rt, up, d, body, size, u, t))
	}()
	return size, nil
}

// fetchBlob reads the blob from the upstream once, verifying its digest as it goes, and hands
// each chunk to a storage writer running beside it and to the client's window (t, if a client
// follows). Neither holds the read up. The client may have the last byte once the digest is
// verified; the fetch counts as done for waiting requests only once the blob is committed.
//
// A read that fails drops the chunk it was reading: neither the store nor the client gets any
// of it, so a fill that fails before its first whole chunk has sent the client nothing, and the
// client is told why instead (follow).
func (p *Puller) fetchBlob(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest, body io.Reader, size int64, u content.Upload, t *tee) error {
	store := newStoreWriter(u)
	verifier := d.Verifier()
	start := time.Now()
	var n int64
	var readErr error
	for {
		c := getChunk()
		k, err := io.ReadFull(body, c.buf)
		n += int64(k)
		if k > 0 && (err == nil || err == io.EOF || err == io.ErrUnexpectedEOF) {
			c.b = c.buf[:k]
			verifier.Write(c.b)
			t.offer(c)
			store.write(c) // takes the fetch's reference
		} else {
			c.release()
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
	}
	p.opts.metrics.upstreamBytes(rt, n)
	var bad error
	switch {
	case errors.Is(readErr, errOverSize) || errors.Is(readErr, errTooSlow):
		bad = readErr
	case readErr != nil:
		bad = fmt.Errorf("the upstream transfer broke after %d bytes: %w", n, readErr)
	case size >= 0 && n != size:
		bad = fmt.Errorf("the upstream sent %d bytes of a %d-byte blob", n, size)
	case !verifier.Verified():
		bad = fmt.Errorf("the %d bytes the upstream sent do not have digest %s", n, d)
	}
	if bad != nil {
		t.end(bad)
		store.close()
		u.Cancel(ctx)
		p.opts.log.Warn("blob from upstream refused", "repo", rt.Name, "digest", d, "bytes", n, "err", bad)
		return apierr.Unavailablef(bad, "fetching blob %s from %s failed: %v", d, up.URL(), bad)
	}
	// verified: the client may have the last byte now; storage finishes behind it
	t.end(errVerified)
	if err := store.close(); err != nil {
		u.Cancel(ctx)
		return apierr.Unavailablef(err, "storage failed writing blob %s", d)
	}
	if _, err := p.content.BlobCommit(ctx, u, d); err != nil {
		u.Cancel(ctx)
		return apierr.Unavailablef(err, "storage could not commit blob %s", d)
	}
	if err := p.meta.RepositoryPut(ctx, rt.Name); err != nil {
		p.opts.log.Error("could not record repository", "repo", rt.Name, "err", err)
	}
	p.opts.log.Debug("blob fetched from upstream", "repo", rt.Name, "digest", d, "bytes", n, "took", time.Since(start))
	return nil
}

// follow streams the fill to the client that started it: from the window while it keeps up,
// then from the store once the blob is committed. The response starts with the first chunk:
// a fill that fails before it (refused for its size, too slow, unreachable) sends no headers,
// and follow returns served false with the fill's error for the client. Past that, its error
// wraps ErrAborted when the response must be cut off; a client that leaves or stops reading is
// no error.
func (p *Puller) follow(ctx context.Context, rt route.Resolved, d digest.Digest, size int64, f *blobFlight, t *tee, w http.ResponseWriter) (served bool, err error) {
	defer t.leave()
	first, err := t.next(ctx)
	if err != nil && !errors.Is(err, errVerified) && !errors.Is(err, errLagged) {
		if ctx.Err() != nil {
			return true, nil // the client left
		}
		return false, waitFill(ctx, f, d)
	}
	hd := w.Header()
	hd.Set("Docker-Content-Digest", d.String())
	hd.Set("Content-Type", "application/octet-stream")
	hd.Set("ETag", `"`+d.String()+`"`)
	if size >= 0 {
		hd.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	sink := &clientSink{w: w}
	defer func() { p.opts.metrics.servedBytes(rt, sink.sent) }()
	var off int64 // bytes handed to the sink
	c := first
	for {
		if c == nil && err == nil {
			c, err = t.next(ctx)
		}
		if err == nil {
			b := c.b
			if size >= 0 && off+int64(len(b)) > size {
				b = b[:max(size-off, 0)] // an upstream that sends too much: the extra never reaches the client
			}
			sink.Write(b)
			off += int64(len(b))
			c.release()
			c = nil
			if sink.err != nil {
				p.opts.log.Debug("client left during a blob fetch; the fetch goes on", "repo", rt.Name, "digest", d, "err", sink.err)
				return true, nil
			}
			continue
		}
		switch {
		case errors.Is(err, errVerified):
			if err := sink.release(); err != nil {
				p.opts.log.Debug("client left during a blob fetch", "repo", rt.Name, "digest", d, "err", err)
			}
			return true, nil
		case errors.Is(err, errLagged):
			return true, p.followStore(ctx, rt, d, f, sink, off)
		case ctx.Err() != nil:
			return true, nil // the client left
		}
		return true, fmt.Errorf("%w: %v", ErrAborted, err)
	}
}

// followStore serves the rest of the blob, from offset off, out of the store once the fill has
// committed it: the client fell too far behind the upstream to be handed its chunks.
func (p *Puller) followStore(ctx context.Context, rt route.Resolved, d digest.Digest, f *blobFlight, sink *clientSink, off int64) error {
	p.opts.log.Debug("client fell behind a blob fetch; serving it from the store once committed", "repo", rt.Name, "digest", d, "offset", off)
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil
	}
	if f.err != nil {
		return fmt.Errorf("%w: %v", ErrAborted, f.err)
	}
	rc, size, err := p.content.BlobOpen(ctx, rt.Name, d)
	if err != nil {
		return fmt.Errorf("%w: the committed blob cannot be opened: %v", ErrAborted, err)
	}
	defer rc.Close()
	if _, err := rc.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("%w: seeking the committed blob: %v", ErrAborted, err)
	}
	buf := make([]byte, 256<<10)
	for sink.err == nil {
		k, err := rc.Read(buf)
		sink.Write(buf[:k])
		off += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: reading the committed blob: %v", ErrAborted, err)
		}
	}
	if sink.err != nil {
		return nil // the client left
	}
	if off != size {
		return fmt.Errorf("%w: the committed blob has %d bytes, not %d", ErrAborted, off, size)
	}
	_ = sink.release()
	return nil
}

// chunk is one read from the upstream, shared by the storage writer and the client's window
// and back in the pool when both are done with it.
type chunk struct {
	buf  []byte // 1 MiB
	b    []byte // the bytes read into buf
	refs atomic.Int32
}

var chunkPool = sync.Pool{New: func() any { return &chunk{buf: make([]byte, 1<<20)} }}

func getChunk() *chunk {
	c := chunkPool.Get().(*chunk)
	c.b = nil
	c.refs.Store(1)
	return c
}

func (c *chunk) ref() { c.refs.Add(1) }

func (c *chunk) release() {
	if c.refs.Add(-1) == 0 {
		c.b = nil
		chunkPool.Put(c)
	}
}

var (
	errVerified = errors.New("the blob was read whole and verified")
	errLagged   = errors.New("the client fell behind the upstream read")
)

// tee hands the fill's chunks to the client that started it: a window of what was read and the
// client has not taken yet. The fill never waits on it: when the window would pass its bound,
// it is dropped and the client told to go on from the store; a client that leaves is dropped.
type tee struct {
	mu     sync.Mutex
	bound  int64
	chunks []*chunk
	held   int64 // bytes in chunks
	lagged bool
	left   bool
	ended  error // errVerified, or why the fill failed; nil while it reads
	wake   chan struct{}
}

func newTee(bound int64) *tee { return &tee{bound: bound, wake: make(chan struct{})} }

// offer gives a chunk to the window (nil-safe: no client follows).
func (t *tee) offer(c *chunk) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.left || t.lagged {
		return
	}
	if t.held+int64(len(c.b)) > t.bound {
		t.lagged = true
		t.drop()
	} else {
		c.ref()
		t.chunks = append(t.chunks, c)
		t.held += int64(len(c.b))
	}
	t.signal()
}

// end says the read is over: errVerified, or why it failed.
func (t *tee) end(err error) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ended = err
	t.signal()
}

// next returns the next chunk for the client (release it when written), or errVerified once
// every chunk was taken and the blob verified, errLagged once the client fell out of the
// window, the fill's failure, or ctx's error.
func (t *tee) next(ctx context.Context) (*chunk, error) {
	for {
		t.mu.Lock()
		switch {
		case len(t.chunks) > 0:
			c := t.chunks[0]
			t.chunks[0] = nil
			t.chunks = t.chunks[1:]
			t.held -= int64(len(c.b))
			t.mu.Unlock()
			return c, nil
		case t.lagged:
			t.mu.Unlock()
			return nil, errLagged
		case t.ended != nil:
			err := t.ended
			t.mu.Unlock()
			return nil, err
		}
		wake := t.wake
		t.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// leave drops the client: the fill keeps nothing more for it.
func (t *tee) leave() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.left = true
	t.drop()
}

func (t *tee) drop() {
	for _, c := range t.chunks {
		c.release()
	}
	t.chunks, t.held = nil, 0
}

func (t *tee) signal() {
	close(t.wake)
	t.wake = make(chan struct{})
}

// storeWriter writes chunks to an upload on its own goroutine, so storage runs beside the
// upstream read instead of in turn with it. At most 32 chunks wait. It hands the upload one
// reader (ReadFrom): distribution's writer checks its hash state at every Write, which the
// inmemory driver, counting only flushed bytes, fails on the second.
type storeWriter struct {
	ch   chan *chunk
	done chan error
	once sync.Once
	err  error
}

func newStoreWriter(u io.ReaderFrom) *storeWriter {
	s := &storeWriter{ch: make(chan *chunk, 32), done: make(chan error, 1)}
	go func() {
		r := &chunkReader{ch: s.ch}
		_, err := u.ReadFrom(r)
		r.drain() // after a write error, the fill still sends until it ends
		s.done <- err
	}()
	return s
}

// write queues a chunk, taking one reference to it.
func (s *storeWriter) write(c *chunk) { s.ch <- c }

// close waits for every chunk to be written and returns the first write error.
func (s *storeWriter) close() error {
	s.once.Do(func() {
		close(s.ch)
		s.err = <-s.done
	})
	return s.err
}

// chunkReader reads the queued chunks in order, releasing each once read.
type chunkReader struct {
	ch  <-chan *chunk
	cur *chunk
	off int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.off == len(r.cur.b) {
		if r.cur != nil {
			r.cur.release()
			r.cur = nil
		}
		c, ok := <-r.ch
		if !ok {
			return 0, io.EOF
		}
		r.cur, r.off = c, 0
	}
	n := copy(p, r.cur.b[r.off:])
	r.off += n
	return n, nil
}

func (r *chunkReader) drain() {
	if r.cur != nil {
		r.cur.release()
		r.cur = nil
	}
	for c := range r.ch {
		c.release()
	}
}

// BlobHead answers HEAD for an uncached blob from the upstream, without fetching it.
func (p *Puller) BlobHead(ctx context.Context, rt route.Resolved, d digest.Digest) (int64, error) {
	up, err := p.upstream(rt)
	if err != nil {
		return 0, err
	}
	size, err := up.BlobHead(ctx, rt.Remote, d)
	if err != nil {
		return 0, upstreamError(up, "blob "+d.String()+" of "+rt.Remote, err)
	}
	return size, nil
}

// clientSink forwards bytes to the client, always holding back the last byte seen, so a blob
// whose digest turns out wrong is never delivered whole. It never fails the tee: a client that
// leaves only stops receiving.
type clientSink struct {
	w          io.Writer
	pending    [1]byte
	hasPending bool
	err        error
	sent       int64 // bytes delivered
	dropped    int64 // bytes not delivered after the client failed
}

func (c *clientSink) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.err == nil && c.hasPending {
		_, c.err = c.w.Write(c.pending[:])
		if c.err == nil {
			c.sent++
		}
	}
	if c.err == nil {
		var n int
		n, c.err = c.w.Write(p[:len(p)-1])
		c.sent += int64(n)
	}
	if c.err != nil {
		c.dropped += int64(len(p))
	}
	c.pending[0], c.hasPending = p[len(p)-1], true
	return len(p), nil
}

// release delivers the held-back byte.
func (c *clientSink) release() error {
	if c.err == nil && c.hasPending {
		_, c.err = c.w.Write(c.pending[:])
		c.hasPending = false
		if c.err == nil {
			c.sent++
		}
	}
	return c.err
}
