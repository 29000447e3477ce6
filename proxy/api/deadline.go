package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// Progress deadlines: http.Server's ReadTimeout and WriteTimeout bound a whole request, which
// would cut a large blob at any setting that also stops a client that stalls. Instead each read
// of a request body moves the connection's read deadline forward (via http.ResponseController),
// and each write of a response marks progress for WatchWrites, so the bound is on the gap between
// bytes, not on the transfer.

// writeChunk is the most written as one step of progress: a response write waits at most the
// idle gap for the client to take this much (beyond what the socket buffers hold).
const writeChunk = 256 << 10

// progressDeadline moves one direction's deadline as bytes move. With minRate set, the deadline
// is also never later than gap plus the time minRate needs for the bytes so far, counted from
// the first byte: a peer that dribbles is cut as surely as one that stops.
type progressDeadline struct {
	set     func(time.Time) error
	gap     time.Duration
	minRate int64 // bytes a second; 0: none
	start   time.Time
	n       int64
	until   time.Time // the deadline last set
	off     bool      // the connection has no deadlines (a test recorder)
}

// extend sets the deadline for the next read or write.
func (p *progressDeadline) extend() {
	if p.off {
		return
	}
	now := time.Now()
	if p.start.IsZero() {
		p.start = now
	}
	d := now.Add(p.gap)
	if p.minRate > 0 {
		credit := time.Duration(float64(p.n) / float64(p.minRate) * float64(time.Second))
		if r := p.start.Add(p.gap + credit); r.Before(d) {
			d = r
		}
	}
	// The deadline only moves forward; one that would move by less than an eighth of the gap
	// stays, saving a timer update per small read.
	if !p.until.IsZero() && d.Sub(p.until) < p.gap/8 {
		return
	}
	p.force(d)
}

func (p *progressDeadline) force(d time.Time) {
	if p.off {
		return
	}
	if err := p.set(d); err != nil {
		p.off = true
		return
	}
	p.until = d
}

// bodyStalledError is a request body cut off by its deadline.
type bodyStalledError struct {
	gap     time.Duration
	minRate int64
	n       int64
	err     error
}

func (e *bodyStalledError) Error() string {
	rate := ""
	if e.minRate > 0 {
		rate = fmt.Sprintf(", or arrived slower than %d bytes/s (limits.body_min_rate)", e.minRate)
	}
	return fmt.Sprintf("the request body stalled after %d bytes: no byte came for %s (limits.body_idle_timeout)%s", e.n, e.gap, rate)
}

func (e *bodyStalledError) Unwrap() error { return e.err }

// deadlineBody is a request body read under progress deadlines.
type deadlineBody struct {
	io.ReadCloser
	p    progressDeadline
	done bool // read to its end (or failed): the connection is net/http's again
}

func (b *deadlineBody) Read(buf []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(buf)
	}
	b.p.extend()
	n, err := b.ReadCloser.Read(buf)
	b.p.n += int64(n)
	switch {
	case err == io.EOF:
		b.done = true
		// net/http now reads the connection in the background to notice a client that
		// leaves; a deadline left set would cut that read and cancel the request.
		b.p.force(time.Time{})
	case err != nil:
		// The deadline stays: net/http reads on to discard the rest of the body, which must
		// fail at once too.
		b.done = true
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = &bodyStalledError{gap: b.p.gap, minRate: b.p.minRate, n: b.p.n, err: err}
		}
	}
	return n, err
}

// writerOnly hides ReadFrom, so io.Copy does not call it back.
type writerOnly struct{ io.Writer }

// withBodyDeadline puts r's body under progress deadlines (responses are watched by
// WatchWrites, on the listener); done bounds the drain of an unread body that net/http still does
// after the handler by one more gap.
func withBodyDeadline(w http.ResponseWriter, r *http.Request, gap time.Duration, minRate int64) func() {
	if r.Body == nil || r.Body == http.NoBody {
		return func() {}
	}
	rc := http.NewResponseController(w)
	body := &deadlineBody{ReadCloser: r.Body, p: progressDeadline{set: rc.SetReadDeadline, gap: gap, minRate: minRate}}
	// Until the handler reads, net/http may: it discards an unread body before the response,
	// and that too must end.
	body.p.force(time.Now().Add(gap))
	r.Body = body
	return func() {
		if !body.done {
			body.p.force(time.Now().Add(gap))
		}
	}
}
