package api

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// WatchWrites returns a listener whose connections are closed when a write to them makes no
// progress for gap (no write returning and, on Linux, the send queue not shrinking): a client
// that stops reading a response (or pipelines requests and never reads) cannot hold its
// connection, and the goroutine serving it, forever, while a slow but steady reader is never cut. A write deadline
// set per request would do the same at the cost of a runtime timer per request, a quarter of a
// cached manifest GET's time; here a write costs two atomic stores, and each connection has one
// timer that looks every half gap. Writes are made in chunks of writeChunk, and sendfile is kept
// (ReadFrom).
func WatchWrites(l net.Listener, gap time.Duration) net.Listener {
	if gap <= 0 {
		return l
	}
	return &watchListener{Listener: l, gap: gap}
}

type watchListener struct {
	net.Listener
	gap time.Duration
}

func (l *watchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &watchedConn{Conn: c, gap: l.gap, queued: -1}, nil
}

// watchedConn is a connection whose writes are watched for progress.
type watchedConn struct {
	net.Conn
	gap   time.Duration
	since atomic.Int64 // when the write under way began or last moved (unix ns); 0: none

	mu     sync.Mutex
	timer  *time.Timer
	closed bool
	queued int // the send queue at the last look while a write was under way (-1: none)
}

// begin marks a write under way, arming the connection's watch on its first write.
func (c *watchedConn) begin() {
	c.since.Store(time.Now().UnixNano())
	c.mu.Lock()
	if c.timer == nil && !c.closed {
		c.timer = time.AfterFunc(c.gap/2, c.check)
	}
	c.mu.Unlock()
}

func (c *watchedConn) end() { c.since.Store(0) }

// check closes the connection if a write has not moved for a gap, and looks again later. A
// write blocked on a full send queue returns only once the kernel has sent about half of it, so
// a slow reader's progress is seen in the queue shrinking between looks, not in writes returning.
func (c *watchedConn) check() {
	if s := c.since.Load(); s != 0 {
		if q, ok := unsent(c.Conn); ok {
			if c.queued >= 0 && q < c.queued && c.since.CompareAndSwap(s, time.Now().UnixNano()) {
				s = c.since.Load()
			}
			c.queued = q
		}
		if time.Since(time.Unix(0, s)) >= c.gap {
			c.Close()
			return
		}
	} else {
		c.queued = -1
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.timer.Reset(c.gap / 2)
	}
}

func (c *watchedConn) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), writeChunk)
		c.begin()
		m, err := c.Conn.Write(b[:k])
		c.end()
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

// ReadFrom keeps net/http's sendfile path (*net.TCPConn's ReadFrom), a chunk at a time.
func (c *watchedConn) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := c.Conn.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{c}, src)
	}
	// Keep one *io.LimitedReader around the source at most: the kernel's sendfile path looks
	// through one, not two.
	limited, isLimited := src.(*io.LimitedReader)
	inner := src
	if isLimited {
		inner = limited.R
	}
	var total int64
	for !isLimited || limited.N > 0 {
		want := int64(writeChunk)
		if isLimited {
			want = min(want, limited.N)
		}
		c.begin()
		m, err := rf.ReadFrom(&io.LimitedReader{R: inner, N: want})
		c.end()
		total += m
		if isLimited {
			limited.N -= m
		}
		if err != nil || m < want {
			return total, err // an error, or the source's end
		}
	}
	return total, nil
}

func (c *watchedConn) Close() error {
	c.mu.Lock()
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// CloseWrite keeps net/http's half-close of a connection whose request body it stopped reading.
func (c *watchedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
