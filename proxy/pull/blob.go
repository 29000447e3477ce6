package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
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

// Blob fetches an uncached blob of a pull route. If w is non-nil and this request leads the
// fetch, the blob streams to w while it is stored (headers and all) and served is true; if it
// then fails, the error wraps ErrAborted. Otherwise (w nil, or another request already leads)
// Blob returns once the blob is in the store, and the caller serves it from there.
func (p *Puller) Blob(ctx context.Context, rt route.Resolved, d digest.Digest, w http.ResponseWriter) (served bool, err error) {
	up, err := p.upstream(rt)
	if err != nil {
		return false, err
	}
	return p.fillOrWait(ctx, rt, up, d, w)
}

func (p *Puller) fillOrWait(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest, w http.ResponseWriter) (bool, error) {
	key := rt.Name + "@" + d.String()
	f, leader := p.blobs.join(key)
	if !leader {
		p.opts.metrics.cache(rt, "blob", "shared")
		select {
		case <-f.done:
			return false, f.err
		case <-ctx.Done():
			return false, apierr.New(apierr.Unavailable, "gave up waiting for blob %s to arrive from the upstream: %v", d, ctx.Err())
		}
	}
	p.opts.metrics.cache(rt, "blob", "miss")
	served, err := p.fetchBlob(ctx, rt, up, d, w)
	var later errCommitLater
	if errors.As(err, &later) {
		// the client has its verified bytes; commit, then release the waiters
		p.bg.Add(1)
		go func() {
			defer p.bg.Done()
			p.blobs.finish(key, f, later.commit())
		}()
		return served, nil
	}
	p.blobs.finish(key, f, stripAbort(err))
	return served, err
}

// fill fetches a blob into the store without a client (companions).
func (p *Puller) fill(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest) error {
	_, err := p.fillOrWait(ctx, rt, up, d, nil)
	return err
}

func stripAbort(err error) error {
	if errors.Is(err, ErrAborted) {
		return apierr.Unavailablef(err, "the upstream transfer failed: %v", err)
	}
	return err
}

// fetchBlob reads the blob from the upstream once, verifying its digest as it goes, and hands
// each chunk to the client (if w is set) and to a storage writer running beside it. The client
// gets every byte but the last until the digest is verified; storage (its writes, and the
// commit with its fsync) never holds the client up, and the fetch counts as done for waiting
// requests only once the blob is committed.
func (p *Puller) fetchBlob(ctx context.Context, rt route.Resolved, up Upstream, d digest.Digest, w http.ResponseWriter) (served bool, err error) {
	// The read continues if the client leaves: waiters and the cache still want the blob.
	fctx := context.WithoutCancel(ctx)
	rc, size, err := up.BlobGet(fctx, rt.Remote, d)
	if err != nil {
		return false, upstreamError(up, "blob "+d.String()+" of "+rt.Remote, err)
	}
	defer rc.Close()
	u, err := p.content.UploadCreate(fctx, rt.Name)
	if err != nil {
		return false, apierr.Unavailablef(err, "storage could not open an upload for blob %s", d)
	}
	var sink *clientSink
	if w != nil {
		hd := w.Header()
		hd.Set("Docker-Content-Digest", d.String())
		hd.Set("Content-Type", "application/octet-stream")
		hd.Set("ETag", `"`+d.String()+`"`)
		if size >= 0 {
			hd.Set("Content-Length", strconv.FormatInt(size, 10))
		}
		w.WriteHeader(http.StatusOK)
		sink = &clientSink{w: w}
	}
	store := newStoreWriter(u)
	verifier := d.Verifier()
	start := time.Now()
	var n int64
	var readErr error
	for {
		buf := chunkPool.Get().([]byte)
		k, err := io.ReadFull(rc, buf)
		if k > 0 {
			n += int64(k)
			verifier.Write(buf[:k])
			if sink != nil {
				sink.Write(buf[:k])
			}
			store.write(buf[:k]) // takes ownership of buf
		} else {
			chunkPool.Put(buf)
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
	fail := func(err error) (bool, error) {
		store.close()
		u.Cancel(fctx)
		p.opts.log.Warn("blob from upstream refused", "repo", rt.Name, "digest", d, "bytes", n, "err", err)
		if sink != nil {
			return true, fmt.Errorf("%w: %v", ErrAborted, err)
		}
		return false, apierr.Unavailablef(err, "fetching blob %s from %s failed: %v", d, up.URL(), err)
	}
	switch {
	case readErr != nil:
		return fail(fmt.Errorf("the upstream transfer broke after %d bytes: %w", n, readErr))
	case size >= 0 && n != size:
		return fail(fmt.Errorf("the upstream sent %d bytes of a %d-byte blob", n, size))
	case !verifier.Verified():
		return fail(fmt.Errorf("the %d bytes the upstream sent do not have digest %s", n, d))
	}
	commit := func() error {
		if err := store.close(); err != nil {
			u.Cancel(fctx)
			return apierr.Unavailablef(err, "storage failed writing blob %s", d)
		}
		if _, err := p.content.BlobCommit(fctx, u, d); err != nil {
			u.Cancel(fctx)
			return apierr.Unavailablef(err, "storage could not commit blob %s", d)
		}
		if err := p.meta.RepositoryPut(fctx, rt.Name); err != nil {
			p.opts.log.Error("could not record repository", "repo", rt.Name, "err", err)
		}
		p.opts.log.Debug("blob fetched from upstream", "repo", rt.Name, "digest", d, "bytes", n, "took", time.Since(start))
		return nil
	}
	if sink == nil {
		return false, commit()
	}
	// verified: the client may have the last byte now; storage finishes behind it
	if err := sink.release(); err != nil {
		p.opts.log.Debug("client left during a blob fetch", "repo", rt.Name, "digest", d, "err", err)
	}
	p.opts.metrics.servedBytes(rt, n-sink.dropped)
	return true, errCommitLater{commit}
}

// errCommitLater tells fillOrWait that the client is served and the commit is still to run.
type errCommitLater struct{ commit func() error }

func (errCommitLater) Error() string { return "commit pending" }

var chunkPool = sync.Pool{New: func() any { return make([]byte, 1<<20) }}

// storeWriter writes chunks to an upload on its own goroutine, so storage runs beside the
// upstream read and the client instead of in turn with them. At most 32 chunks wait.
type storeWriter struct {
	ch   chan []byte
	done chan error
	once sync.Once
	err  error
}

func newStoreWriter(w io.Writer) *storeWriter {
	s := &storeWriter{ch: make(chan []byte, 32), done: make(chan error, 1)}
	go func() {
		var err error
		for b := range s.ch {
			if err == nil {
				_, err = w.Write(b)
			}
			chunkPool.Put(b[:cap(b)])
		}
		s.done <- err
	}()
	return s
}

func (s *storeWriter) write(b []byte) { s.ch <- b }

// close waits for every chunk to be written and returns the first write error.
func (s *storeWriter) close() error {
	s.once.Do(func() {
		close(s.ch)
		s.err = <-s.done
	})
	return s.err
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
	dropped    int64 // bytes not delivered after the client failed
}

func (c *clientSink) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.err == nil && c.hasPending {
		_, c.err = c.w.Write(c.pending[:])
	}
	if c.err == nil {
		_, c.err = c.w.Write(p[:len(p)-1])
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
	}
	return c.err
}
