package upstream

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Where a Client's requests may go. An upstream chooses token realms and redirect targets, so
// without these rules it could make Gatehouse carry the route's credentials, or fetch for an
// unauthenticated client, anywhere Gatehouse can reach. The rules:
//
//  1. Token realms. A request the client starts itself (not a redirect) goes only to the
//     upstream's own host:port or to a realm listed in Options.TokenRealms; go-containerregistry
//     sends a token request to whatever realm the upstream's challenge names, so any other realm
//     is refused before anything is sent to it.
//  2. Credentials. Authorization is sent only to the upstream's host:port and on token
//     requests to allowed realms; a redirect elsewhere goes without it (but for a bearer token
//     a listed realm's host issued itself, see mayCarryCredentials).
//  3. Redirects: at most maxRedirects, to http(s) only, and from https to http only when the
//     upstream itself is plain http (token realms too: http only for an http upstream).
//  4. Addresses. Each connection is checked against the IP actually dialled, after DNS (so a
//     name that resolves or rebinds inside the network is caught): loopback, private,
//     link-local, CGNAT, unspecified, multicast and reserved addresses (addrClass) are refused,
//     except under exactly the host:port written in the upstream's URL and, for token requests
//     only, in a listed realm. An upstream on 127.0.0.1:5000 is reached; 127.0.0.1:8500, or
//     localhost:5000, is not; nor is a listed internal realm by a redirect. Token requests
//     have a transport (and connection pool) of their own, so no connection crosses over.
//  5. A proxy from the environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) is the operator's: its
//     own address may be internal, the destination's name is resolved and checked by rule 4
//     before the request is handed to it (a name the local resolver cannot resolve is left to
//     the proxy), and the proxy is trusted with the rest: it should refuse inside destinations.

// maxRedirects bounds the redirects one request follows (a blob served through a CDN takes one
// or two).
const maxRedirects = 5

// Refusal is a request the client would not send, in Gatehouse's words.
type Refusal struct{ msg string }

func (r *Refusal) Error() string { return r.msg }

func refusef(format string, args ...any) *Refusal { return &Refusal{msg: fmt.Sprintf(format, args...)} }

// realmRule is one entry of Options.TokenRealms.
type realmRule struct {
	scheme string // "": either; a realm is https in any case, or http when the upstream is http
	host   string // lower case; "*.example.com" matches every name under example.com
	port   string // "": the scheme's default
	path   string // "": any path
}

// ValidRealm reports whether entry can be a token_realms entry: a realm URL
// (https://auth.docker.io/token) or a host[:port] (auth.docker.io), whose host may start with
// "*." to match every name under a domain (*.pkg.dev).
func ValidRealm(entry string) error {
	_, err := parseRealm(entry)
	return err
}

func parseRealm(entry string) (realmRule, error) {
	s := entry
	if !strings.Contains(s, "://") {
		s = "//" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return realmRule{}, fmt.Errorf("token realm %q is not a URL (https://auth.example/token) or a host (auth.example)", entry)
	}
	if u.Scheme != "" && u.Scheme != "https" && u.Scheme != "http" {
		return realmRule{}, fmt.Errorf("token realm %q: the scheme must be https or http", entry)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return realmRule{}, fmt.Errorf("token realm %q: give no user, query or fragment", entry)
	}
	host := strings.ToLower(u.Hostname())
	if rest, wild := strings.CutPrefix(host, "*."); wild && (rest == "" || strings.Contains(rest, "*")) || !wild && strings.Contains(host, "*") {
		return realmRule{}, fmt.Errorf("token realm %q: a wildcard is a leading \"*.\" before a domain", entry)
	}
	r := realmRule{scheme: u.Scheme, host: host, port: u.Port(), path: u.Path}
	if r.path == "/" {
		r.path = ""
	}
	return r, nil
}

func (r realmRule) hostMatches(host string) bool {
	host = strings.ToLower(host)
	if rest, ok := strings.CutPrefix(r.host, "*"); ok {
		return strings.HasSuffix(host, rest) && len(host) > len(rest)
	}
	return host == r.host
}

// portMatches compares a port, "" meaning the default of scheme ("" scheme: either default).
func (r realmRule) portMatches(port, scheme string) bool {
	if r.port != "" {
		return port == r.port || port == "" && r.port == defaultPort(scheme)
	}
	switch port {
	case "":
		return true
	case "443":
		return scheme == "" || scheme == "https"
	case "80":
		return scheme == "" || scheme == "http"
	}
	return false
}

// allows reports whether u, a token request's URL, is this realm.
func (r realmRule) allows(u *url.URL, insecure bool) bool {
	switch {
	case r.scheme != "" && u.Scheme != r.scheme:
		return false
	case u.Scheme != "https" && !(insecure && u.Scheme == "http"): // go-containerregistry's rule too
		return false
	case r.path != "" && strings.TrimSuffix(u.Path, "/") != strings.TrimSuffix(r.path, "/"):
		return false
	}
	return r.hostMatches(u.Hostname()) && r.portMatches(u.Port(), u.Scheme)
}

func defaultPort(scheme string) string {
	if scheme == "http" {
		return "80"
	}
	return "443"
}

// egress is a Client's way out: a RoundTripper that applies rules 1–3 to each request and
// hands it to one of two transports whose dialers apply rule 4 to each connection.
type egress struct {
	host     string   // the upstream's host name, lower case
	ports    []string // its ports: the URL's, or the default (both defaults for http://, which is pinged on https first)
	insecure bool     // the upstream is plain http
	realms   []realmRule
	inner    http.RoundTripper // everything but token requests
	tokens   http.RoundTripper // token requests to a realm off the upstream's host
	log      *slog.Logger
	proxies  sync.Map // host:port of the proxies the environment chose
	// reachable, when set, lets tests treat an internal address as public.
	reachable func(host, port string) bool
}

func newEgress(u *url.URL, realms []realmRule, log *slog.Logger) *egress {
	g := &egress{host: strings.ToLower(u.Hostname()), insecure: u.Scheme == "http", realms: realms, log: log}
	switch {
	case u.Port() != "":
		g.ports = []string{u.Port()}
	case g.insecure:
		g.ports = []string{"80", "443"}
	default:
		g.ports = []string{"443"}
	}
	return g
}

// upstreamHost reports whether host and port (a URL's, "" for the scheme's default) are the
// upstream's own.
func (g *egress) upstreamHost(host, port, scheme string) bool {
	if !strings.EqualFold(host, g.host) {
		return false
	}
	if port == "" {
		port = defaultPort(scheme)
	}
	for _, p := range g.ports {
		if p == port {
			return true
		}
	}
	return false
}

func (g *egress) realmAllowed(u *url.URL) bool {
	if g.upstreamHost(u.Hostname(), u.Port(), u.Scheme) {
		return true
	}
	for _, r := range g.realms {
		if r.allows(u, g.insecure) {
			return true
		}
	}
	return false
}

// mayCarryCredentials is rule 2. Authorization goes to the upstream's host:port; on a token
// request (hops 0: the realm is checked already); and, on a redirect, only as a bearer token
// to a listed realm's host — the token go-containerregistry fetched anonymously from that
// host's own realm when it challenged a redirected request (registry.k8s.io's redirects to
// Artifact Registry). Never the route's basic credentials on a redirect off the upstream.
func (g *egress) mayCarryCredentials(u *url.URL, hops int, auth string) bool {
	switch {
	case g.upstreamHost(u.Hostname(), u.Port(), u.Scheme):
		return true
	case hops == 0:
		return true
	case !strings.HasPrefix(strings.ToLower(auth), "bearer "):
		return false
	}
	for _, r := range g.realms {
		if r.hostMatches(u.Hostname()) && r.portMatches(u.Port(), u.Scheme) {
			return true
		}
	}
	return false
}

// internalAllowed is rule 4's exception: a connection by name to the upstream's host:port, to
// a proxy the environment named, or, for a token request, to a listed realm's host:port.
func (g *egress) internalAllowed(host, port string, token bool) bool {
	if g.upstreamHost(host, port, "") {
		return true
	}
	if _, ok := g.proxies.Load(net.JoinHostPort(strings.ToLower(host), port)); ok {
		return true
	}
	for _, r := range g.realms {
		if !token {
			break
		}
		if r.hostMatches(host) && r.portMatches(port, r.scheme) {
			return true
		}
	}
	return g.reachable != nil && g.reachable(host, port)
}

// RoundTrip applies rules 1–3 and sends the request.
func (g *egress) RoundTrip(req *http.Request) (*http.Response, error) {
	hops := 0
	for r := req; r.Response != nil && r.Response.Request != nil; r = r.Response.Request {
		hops++
	}
	u := req.URL
	switch {
	case hops > maxRedirects:
		return nil, refusef("the upstream redirected more than %d times", maxRedirects)
	case hops > 0 && u.Scheme != "https" && u.Scheme != "http":
		return nil, refusef("the upstream redirected to a URL that is not http(s)")
	case hops > 0 && u.Scheme == "http" && !g.insecure:
		return nil, refusef("the upstream redirected from https to plain http (%s)", printable(u.Host))
	case hops == 0 && !g.realmAllowed(u):
		// Every request this package starts goes to the upstream itself; the others are
		// go-containerregistry's token requests to the realm a challenge named.
		g.log.Warn("upstream: refused a token request to a realm the route does not list",
			"upstream", g.host, "realm", clip(u.Scheme+"://"+u.Host+u.Path, 200))
		return nil, refusef("the upstream's token realm %s://%s is not allowed: only the registry's own host and the realms listed in the route's upstream.token_realms are sent token requests and credentials; add the realm's URL or host to upstream.token_realms if this registry really uses it",
			u.Scheme, printable(u.Host))
	}
	if auth := req.Header.Get("Authorization"); auth != "" && !g.mayCarryCredentials(u, hops, auth) {
		req = req.Clone(req.Context())
		req.Header.Del("Authorization")
	}
	if hops == 0 && !g.upstreamHost(u.Hostname(), u.Port(), u.Scheme) {
		return g.tokens.RoundTrip(req)
	}
	return g.inner.RoundTrip(req)
}

// transport is one of the two ways out: token requests (token) or the rest.
func (g *egress) transport(o Options, token bool) *http.Transport {
	return &http.Transport{
		Proxy:                 g.proxy(token),
		DialContext:           g.dialer(&net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}, token),
		TLSClientConfig:       o.TLS,
		TLSHandshakeTimeout:   o.Timeout,
		ResponseHeaderTimeout: o.Timeout,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
}

// proxy chooses the environment's proxy for req and, when there is one, checks the
// destination's addresses by name (rule 5): the proxy connects, so the dialer never sees them.
func (g *egress) proxy(token bool) func(*http.Request) (*url.URL, error) {
	return func(req *http.Request) (*url.URL, error) { return g.viaProxy(req, token) }
}

func (g *egress) viaProxy(req *http.Request, token bool) (*url.URL, error) {
	p, err := http.ProxyFromEnvironment(req)
	if err != nil || p == nil {
		return p, err
	}
	port := p.Port()
	if port == "" {
		port = map[string]string{"https": "443", "socks5": "1080", "socks5h": "1080"}[p.Scheme]
		if port == "" {
			port = "80"
		}
	}
	g.proxies.Store(net.JoinHostPort(strings.ToLower(p.Hostname()), port), struct{}{})
	host, port := req.URL.Hostname(), req.URL.Port()
	if port == "" {
		port = defaultPort(req.URL.Scheme)
	}
	ips, err := net.DefaultResolver.LookupNetIP(req.Context(), "ip", host)
	if err != nil {
		// Behind an egress proxy the local resolver often knows no outside names; a name
		// it cannot resolve is not one of ours, and the proxy decides.
		return p, nil
	}
	for _, ip := range ips {
		if err := g.checkAddr(host, port, ip, token); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// dialer wraps d so that each connection is checked (rule 4) against the IP it connects to.
func (g *egress) dialer(d *net.Dialer, token bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		dd := &net.Dialer{Timeout: d.Timeout, KeepAlive: d.KeepAlive,
			ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
				ap, err := netip.ParseAddrPort(address)
				if err != nil {
					return refusef("cannot tell which address %s is", printable(host))
				}
				return g.checkAddr(host, port, ap.Addr(), token)
			}}
		return dd.DialContext(ctx, network, addr)
	}
}

func (g *egress) checkAddr(host, port string, ip netip.Addr, token bool) error {
	class := addrClass(ip)
	if class == "" || g.internalAllowed(host, port, token) {
		return nil
	}
	g.log.Warn("upstream: refused a connection inside the network", "upstream", g.host,
		"host", clip(host, 200), "port", port, "ip", ip.String(), "class", class)
	what := printable(net.JoinHostPort(host, port))
	if _, err := netip.ParseAddr(host); err == nil {
		return refusef("refused to connect to %s, a %s address: inside the network Gatehouse connects only to the upstream's own host:port (and, for tokens, to the realms listed in upstream.token_realms)", what, class)
	}
	return refusef("refused to connect to %s, whose name resolves to a %s address: inside the network Gatehouse connects only to the upstream's own host:port (and, for tokens, to the realms listed in upstream.token_realms)", what, class)
}

// special are the ranges, beyond what netip classifies, that are not the public internet.
var special = []struct {
	prefix netip.Prefix
	class  string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this-network"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared (CGNAT)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved"}, // and 255.255.255.255
	{netip.MustParsePrefix("::/96"), "reserved"},       // IPv4-compatible (deprecated)
	{netip.MustParsePrefix("100::/64"), "discard"},
	{netip.MustParsePrefix("2001::/23"), "IETF protocol"}, // Teredo among them
	{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
	{netip.MustParsePrefix("fec0::/10"), "site-local"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local NAT64"},
}

var (
	nat64  = netip.MustParsePrefix("64:ff9b::/96")
	sixTo4 = netip.MustParsePrefix("2002::/16")
)

// addrClass names the kind of a non-public address ("" for a public one). IPv4 inside IPv6
// (mapped, NAT64, 6to4) is judged by the IPv4 address.
func addrClass(ip netip.Addr) string {
	ip = ip.Unmap()
	switch {
	case !ip.IsValid():
		return "invalid"
	case ip.IsUnspecified():
		return "unspecified"
	case ip.IsLoopback():
		return "loopback"
	case ip.IsLinkLocalUnicast(), ip.IsLinkLocalMulticast():
		return "link-local"
	case ip.IsPrivate():
		return "private"
	case ip.IsMulticast():
		return "multicast"
	}
	for _, s := range special {
		if s.prefix.Contains(ip) {
			return s.class
		}
	}
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return addrClass(netip.AddrFrom4([4]byte(b[12:16])))
		case sixTo4.Contains(ip):
			return addrClass(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	return ""
}

// printable returns a host name or URL part the upstream chose, fit to put in a message: the
// characters a host can hold, and not too many of them.
func printable(s string) string {
	if len(s) > 255 {
		return "(a host name too long to show)"
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-_:[]%*", c)) {
			return "(a host name with characters that are not shown)"
		}
	}
	return s
}

// clip shortens upstream text for the log.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
