// Package rawhttp is the hostile client of the resource tests: a TCP connection that sends a
// request head as given (a body that stalls, pipelined requests) with a receive buffer of a
// chosen size (a reader that stops), and a wait for the server's answer or hang-up.
package rawhttp

import (
	"bufio"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Dial connects to addr, with the receive buffer set to rcvbuf bytes when it is positive, sends
// head on the connection and returns it (closed when the test ends).
func Dial(t testing.TB, addr, head string, rcvbuf int) net.Conn {
	t.Helper()
	d := net.Dialer{}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
		}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	return conn
}

// StatusLine waits up to limit for the server to answer (or hang up) and returns the status
// line ("" after a hang-up) and how long it took; neither within limit fails the test.
func StatusLine(t testing.TB, conn net.Conn, limit time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(limit))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server neither answered nor hung up in %s", limit)
	}
	return strings.TrimSpace(line), time.Since(start)
}
