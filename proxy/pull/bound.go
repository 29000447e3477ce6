package pull

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// UpstreamLimits bound what one pull route's upstream may send.
type UpstreamLimits struct {
	// Grace is how long a blob may take before MinRate applies (the upstream's timeout).
	Grace time.Duration
	// MinRate is the bytes a second a blob must average past Grace: by Grace + n/MinRate after
	// it was asked for, more than n bytes must have arrived. A blob of S bytes therefore ends by
	// Grace + S/MinRate, and a drip well before that.
	MinRate int64
	// MaxLayers refuses an image manifest that lists more layers, before any is fetched.
	MaxLayers int
}

// DefaultUpstreamLimits apply to a route given none.
var DefaultUpstreamLimits = UpstreamLimits{Grace: 30 * time.Second, MinRate: 64 << 10, MaxLayers: 1024}

var (
	// errOverSize: the upstream sent more than the blob may have.
	errOverSize = errors.New("the upstream sent more than the blob may have")
	// errTooSlow: the upstream fell under the floor rate.
	errTooSlow = errors.New("the upstream sent the blob too slowly")
)

// boundedBody reads an upstream blob body within a fill's bounds: no more than limit+1 bytes
// are ever read (limit < 0: no bound), so one that runs past its size is cut at the first
// extra byte; and the body is closed once it falls under the floor rate, so a drip ends.
// The bounds are checked on the fill's own goroutine; the rate by a timer that costs nothing
// per read but an atomic add.
type boundedBody struct {
	rc       io.ReadCloser
	limit    int64
	limitWhy string // what set limit, for the error ("its descriptor declares")
	lim      UpstreamLimits
	start    time.Time
	n        atomic.Int64
	timer    *time.Timer
	slow     atomic.Bool
	closed   atomic.Bool
}

// newBoundedBody bounds rc, asked for at start.
func newBoundedBody(rc io.ReadCloser, limit int64, why string, lim UpstreamLimits, start time.Time) *boundedBody {
	b := &boundedBody{rc: rc, limit: limit, limitWhy: why, lim: lim, start: start}
	if lim.MinRate > 0 {
		b.timer = time.AfterFunc(time.Until(b.due()), b.check)
	}
	return b
}

// due is when more than the bytes read so far must have arrived.
func (b *boundedBody) due() time.Time {
	allowed := time.Duration(float64(b.n.Load()) / float64(b.lim.MinRate) * float64(time.Second))
	return b.start.Add(b.lim.Grace + allowed)
}

// check runs when the body may be due: it waits on if bytes came meanwhile, else cuts it.
func (b *boundedBody) check() {
	if b.closed.Load() {
		return
	}
	if d := time.Until(b.due()); d > 0 {
		b.timer.Reset(d)
		return
	}
	b.slow.Store(true)
	b.rc.Close() // wakes the read blocked on it
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.limit >= 0 {
		left := b.limit + 1 - b.n.Load()
		if left <= 0 {
			return 0, b.overSize()
		}
		if int64(len(p)) > left {
			p = p[:left]
		}
	}
	k, err := b.rc.Read(p)
	n := b.n.Add(int64(k))
	switch {
	case b.slow.Load():
		return k, fmt.Errorf("%w: %d bytes in %s, under the floor of %d bytes a second after %s of grace",
			errTooSlow, n, time.Since(b.start).Round(time.Millisecond), b.lim.MinRate, b.lim.Grace)
	case b.limit >= 0 && n > b.limit:
		return k, b.overSize()
	}
	return k, err
}

func (b *boundedBody) overSize() error {
	return fmt.Errorf("%w: more than the %d bytes %s (the rest was not read)", errOverSize, b.limit, b.limitWhy)
}

// Close stops the rate timer and closes the body.
func (b *boundedBody) Close() error {
	b.closed.Store(true)
	if b.timer != nil {
		b.timer.Stop()
	}
	return b.rc.Close()
}
