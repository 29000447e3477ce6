package upstream

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
)

func TestAddrClass(t *testing.T) {
	tests := []struct{ ip, want string }{
		{"127.0.0.1", "loopback"},
		{"127.0.0.2", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"192.168.1.1", "private"},
		{"::ffff:10.0.0.1", "private"},
		{"fc00::1", "private"},
		{"fd00:ec2::254", "private"}, // AWS's IPv6 metadata endpoint
		{"169.254.169.254", "link-local"},
		{"fe80::1", "link-local"},
		{"100.64.0.1", "shared (CGNAT)"},
		{"100.127.255.254", "shared (CGNAT)"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"0.1.2.3", "this-network"},
		{"224.0.0.1", "link-local"},
		{"239.1.1.1", "multicast"},
		{"ff02::1", "link-local"},
		{"ff05::1", "multicast"},
		{"255.255.255.255", "reserved"},
		{"240.0.0.1", "reserved"},
		{"198.18.0.1", "benchmarking"},
		{"192.0.2.1", "documentation"},
		{"64:ff9b::a9fe:a9fe", "link-local"}, // NAT64 of 169.254.169.254
		{"2002:7f00:1::", "loopback"},        // 6to4 of 127.0.0.1
		{"2001:db8::1", "documentation"},
		{"fec0::1", "site-local"},
		{"::127.0.0.1", "reserved"},
		// public
		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"100.128.0.1", ""}, // just past CGNAT
		{"172.32.0.1", ""},  // just past 172.16/12
		{"2606:4700:4700::1111", ""},
		{"64:ff9b::808:808", ""}, // NAT64 of 8.8.8.8
	}
	for _, tt := range tests {
		if got := addrClass(netip.MustParseAddr(tt.ip)); got != tt.want {
			t.Errorf("addrClass(%s) = %q, want %q", tt.ip, got, tt.want)
		}
	}
}

func TestParseRealm(t *testing.T) {
	good := map[string]realmRule{
		"https://auth.docker.io/token": {scheme: "https", host: "auth.docker.io", path: "/token"},
		"auth.docker.io":               {host: "auth.docker.io"},
		"Auth.Example:8443":            {host: "auth.example", port: "8443"},
		"https://*.pkg.dev/v2/token":   {scheme: "https", host: "*.pkg.dev", path: "/v2/token"},
		"*.pkg.dev":                    {host: "*.pkg.dev"},
		"http://localhost:5001/":       {scheme: "http", host: "localhost", port: "5001"},
	}
	for entry, want := range good {
		got, err := parseRealm(entry)
		if err != nil || got != want {
			t.Errorf("parseRealm(%q) = %+v, %v; want %+v", entry, got, err, want)
		}
	}
	for _, entry := range []string{"", "ftp://auth.example", "https://u:p@auth.example/token", "https://auth.example/token?x=1",
		"auth*.example", "*.", "*.*.example", "a.*.example", "https:///token", "auth example"} {
		if _, err := parseRealm(entry); err == nil {
			t.Errorf("parseRealm(%q) accepted", entry)
		}
	}
}

func TestRealmRules(t *testing.T) {
	tests := []struct {
		upstream string
		realms   []string
		realm    string
		want     bool
	}{
		{"https://ghcr.io", nil, "https://ghcr.io/token", true}, // the registry's own host
		{"https://ghcr.io", nil, "https://ghcr.io:443/token", true},
		{"https://ghcr.io", nil, "https://ghcr.io:8443/token", false}, // same name, another port
		{"https://ghcr.io", nil, "http://ghcr.io/token", false},       // port 80 is not the registry's
		{"http://127.0.0.1:5000", nil, "http://127.0.0.1:5000/token", true},
		{"http://127.0.0.1:5000", nil, "http://127.0.0.1:8500/token", false},
		{"http://127.0.0.1:5000", nil, "http://localhost:5000/token", false},
		{"https://registry-1.docker.io", nil, "https://auth.docker.io/token", false},
		{"https://registry-1.docker.io", []string{"https://auth.docker.io/token"}, "https://auth.docker.io/token", true},
		{"https://registry-1.docker.io", []string{"https://auth.docker.io/token"}, "https://auth.docker.io/other", false},
		{"https://registry-1.docker.io", []string{"https://auth.docker.io/token"}, "https://auth.docker.io:8443/token", false},
		{"https://registry-1.docker.io", []string{"auth.docker.io"}, "https://auth.docker.io/any/path", true},
		{"https://registry-1.docker.io", []string{"auth.docker.io"}, "http://auth.docker.io/token", false}, // no downgrade for an https registry
		{"http://reg.test:5000", []string{"auth.test"}, "http://auth.test/token", true},
		{"https://reg.test", []string{"http://auth.test/token"}, "http://auth.test/token", false}, // an https registry's realm is https, listed or not
		{"http://reg.test", []string{"http://auth.test/token"}, "http://auth.test/token", true},
		{"http://reg.test", []string{"https://auth.test/token"}, "http://auth.test/token", false},
		{"https://registry.k8s.io", []string{"https://*.pkg.dev/v2/token"}, "https://us-west1-docker.pkg.dev/v2/token", true},
		{"https://registry.k8s.io", []string{"https://*.pkg.dev/v2/token"}, "https://pkg.dev/v2/token", false},
		{"https://registry.k8s.io", []string{"https://*.pkg.dev/v2/token"}, "https://evilpkg.dev/v2/token", false},
		{"https://registry.k8s.io", []string{"https://*.pkg.dev/v2/token"}, "https://pkg.dev.evil.example/v2/token", false},
		{"http://127.0.0.1:5000", []string{"localhost:9000"}, "http://localhost:9000/token", true},
		{"http://127.0.0.1:5000", []string{"localhost:9000"}, "http://localhost:9001/token", false},
		{"http://127.0.0.1:5000", []string{"localhost:9000"}, "http://localhost.:9000/token", false},
	}
	for _, tt := range tests {
		g := testEgress(t, tt.upstream, tt.realms...)
		u, _ := url.Parse(tt.realm)
		if got := g.realmAllowed(u); got != tt.want {
			t.Errorf("upstream %s, realms %q: realm %s allowed = %v, want %v", tt.upstream, tt.realms, tt.realm, got, tt.want)
		}
	}
}

func TestCredentialRule(t *testing.T) {
	g := testEgress(t, "https://registry.k8s.io", "https://*.pkg.dev/v2/token", "auth.example")
	tests := []struct {
		url  string
		hops int
		auth string
		want bool
	}{
		{"https://registry.k8s.io/v2/pause/manifests/3.9", 0, "Basic dTpw", true},
		{"https://registry.k8s.io/v2/pause/manifests/3.9", 2, "Bearer t", true}, // back on the registry's host
		{"https://auth.example/token", 0, "Basic dTpw", true},                   // a token request (its realm checked first)
		{"https://us-west1-docker.pkg.dev/v2/x/manifests/3.9", 1, "Bearer t", true},
		{"https://us-west1-docker.pkg.dev/v2/x/manifests/3.9", 1, "Basic dTpw", false},
		{"https://auth.example/somewhere", 1, "Basic dTpw", false},
		{"https://cdn.example/blob", 1, "Bearer t", false},
		{"https://cdn.example/blob", 1, "Basic dTpw", false},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.url)
		if got := g.mayCarryCredentials(u, tt.hops, tt.auth); got != tt.want {
			t.Errorf("%s after %d redirects with %q: %v, want %v", tt.url, tt.hops, tt.auth, got, tt.want)
		}
	}
}

func TestInternalAllowed(t *testing.T) {
	g := testEgress(t, "http://127.0.0.1:5000", "http://localhost:9000/token", "auth.corp")
	tests := []struct {
		host, port string
		token      bool // a token request rather than a registry request or a redirect
		want       bool
	}{
		{"127.0.0.1", "5000", false, true},
		{"127.0.0.1", "8500", false, false}, // the upstream is internal; its neighbours are not allowed by that
		{"localhost", "5000", false, false}, // nor the same server under another name
		{"127.0.0.2", "5000", false, false},
		{"localhost", "9000", true, true}, // a listed realm, for tokens
		{"localhost", "9000", false, false},
		{"localhost", "9001", true, false},
		{"auth.corp", "443", true, true},
		{"auth.corp", "80", true, true},
		{"auth.corp", "8443", true, false},
		{"auth.corp", "443", false, false},
	}
	for _, tt := range tests {
		if got := g.internalAllowed(tt.host, tt.port, tt.token); got != tt.want {
			t.Errorf("internalAllowed(%s, %s, token %v) = %v, want %v", tt.host, tt.port, tt.token, got, tt.want)
		}
	}
	// a public upstream lends nothing: its own name is the only exception, and only if it
	// resolves inside
	pub := testEgress(t, "https://registry-1.docker.io", "https://auth.docker.io/token")
	if err := pub.checkAddr("evil.example", "443", netip.MustParseAddr("10.0.0.1"), false); err == nil || !strings.Contains(err.Error(), "private") {
		t.Errorf("a name resolving to 10.0.0.1: %v", err)
	}
	if err := pub.checkAddr("evil.example", "443", netip.MustParseAddr("93.184.216.34"), false); err != nil {
		t.Errorf("a public address: %v", err)
	}
}

func testEgress(t *testing.T, upstream string, realms ...string) *egress {
	t.Helper()
	u, _ := url.Parse(upstream)
	var rules []realmRule
	for _, r := range realms {
		rule, err := parseRealm(r)
		if err != nil {
			t.Fatal(err)
		}
		rules = append(rules, rule)
	}
	return newEgress(u, rules, discard)
}

const marker = "INTERNAL-MARKER-5b1e"

// sink is an internal service: it records every request and answers with marker text.
type sink struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []http.Header
	body string
}

func newSink(t *testing.T) *sink {
	s := &sink{body: `{"token":"` + marker + `","internal":"` + marker + `"}`}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.seen = append(s.seen, r.Header.Clone())
		body := s.body
		s.mu.Unlock()
		io.WriteString(w, body)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) requests() []http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]http.Header(nil), s.seen...)
}

func (s *sink) port() string { _, p, _ := net.SplitHostPort(s.srv.Listener.Addr().String()); return p }

// upstreamServer serves every path, /v2/ included, with h.
func upstreamServer(t *testing.T, h http.HandlerFunc, o Options) (*Client, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	o.URL, o.Timeout, o.Log = srv.URL, 2*time.Second, discard
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

var (
	discard = slog.New(slog.DiscardHandler)
	creds   = authn.FromConfig(authn.AuthConfig{Username: "route-user", Password: "route-s3cret"})
)

func challenge(realm string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}
}

// TestTokenRealmRefused: a challenge naming a realm neither on the registry's host nor listed
// fails with a refusal that says how to allow it, and the realm gets no request at all.
func TestTokenRealmRefused(t *testing.T) {
	sk := newSink(t)
	p := sk.port()
	for _, realm := range []string{
		"http://localhost:" + p + "/token",
		"http://localhost.:" + p + "/token",
		"http://127.0.0.2:" + p + "/token",
		"http://[::1]:" + p + "/token",
		"http://169.254.169.254/latest/meta-data/iam",
		"https://auth.elsewhere.example/token",
	} {
		t.Run(realm, func(t *testing.T) {
			c, _ := upstreamServer(t, challenge(realm), Options{Auth: creds})
			_, err := c.ManifestGet(context.Background(), "r", "v1")
			e, ok := AsError(err)
			if !ok || !e.Refused || !strings.Contains(err.Error(), "not allowed") || !strings.Contains(err.Error(), "upstream.token_realms") {
				t.Fatalf("err = %v", err)
			}
			if strings.Contains(err.Error(), marker) || strings.Contains(err.Error(), "route-s3cret") {
				t.Errorf("the error leaks: %v", err)
			}
		})
	}
	if n := len(sk.requests()); n != 0 {
		t.Errorf("the unlisted realm got %d requests", n)
	}
}

// TestTokenRealmListed: a listed realm (here an internal one, so also reachable by rule 4's
// exception) gets the route's credentials, and the registry the token.
func TestTokenRealmListed(t *testing.T) {
	var realmAuth, registryAuth string
	var mu sync.Mutex
	realm := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		realmAuth = r.Header.Get("Authorization")
		mu.Unlock()
		json.NewEncoder(w).Encode(map[string]string{"token": "issued-token"})
	}))
	defer realm.Close()
	realmURL := "http://localhost:" + realm.URL[strings.LastIndexByte(realm.URL, ':')+1:] + "/token"
	c, _ := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer issued-token" {
			challenge(realmURL)(w, r)
			return
		}
		mu.Lock()
		registryAuth = r.Header.Get("Authorization")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		io.WriteString(w, body)
	}, Options{Auth: creds, TokenRealms: []string{realmURL}})
	if _, err := c.ManifestGet(context.Background(), "r", "v1"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if u, p, _ := (&http.Request{Header: http.Header{"Authorization": {realmAuth}}}).BasicAuth(); u != "route-user" || p != "route-s3cret" {
		t.Errorf("the listed realm got Authorization %q", realmAuth)
	}
	if registryAuth != "Bearer issued-token" {
		t.Errorf("the registry got Authorization %q", registryAuth)
	}
}

// TestRedirectInside: a blob or manifest redirect to another internal host:port — a listed
// realm's included — or to the upstream's own port under another name, is refused before
// connecting.
func TestRedirectInside(t *testing.T) {
	sk := newSink(t)
	var self string
	c, srv := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
		case strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, sk.srv.URL+"/blob", http.StatusTemporaryRedirect)
		case strings.HasSuffix(r.URL.Path, "/manifests/other-name"):
			http.Redirect(w, r, self+"/v2/r/manifests/v1", http.StatusFound)
		default:
			http.Redirect(w, r, "http://localhost:"+sk.port()+"/manifest", http.StatusFound)
		}
	}, Options{Auth: creds, TokenRealms: []string{"localhost:" + sk.port()}}) // listed for tokens, not for redirects
	self = "http://localhost:" + srv.URL[strings.LastIndexByte(srv.URL, ':')+1:]
	ctx := context.Background()
	check := func(what string, err error) {
		t.Helper()
		e, ok := AsError(err)
		if !ok || !e.Refused || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%s: err = %v", what, err)
		}
		if strings.Contains(err.Error(), marker) {
			t.Errorf("%s: the error carries the sink's bytes: %v", what, err)
		}
	}
	_, _, err := c.BlobGet(ctx, "r", digest.FromString("x"))
	check("blob GET", err)
	_, err = c.BlobHead(ctx, "r", digest.FromString("x"))
	check("blob HEAD", err)
	_, err = c.ManifestGet(ctx, "r", "v1")
	check("manifest by another loopback name", err)
	_, err = c.ManifestHead(ctx, "r", "other-name")
	check("the upstream's own port under another name", err)
	if n := len(sk.requests()); n != 0 {
		t.Errorf("the internal sink got %d requests", n)
	}
}

// TestRedirectCarriesNoCredentials: a redirect to another (public, here by the test hook) host
// goes without the route's Basic credentials or the registry's bearer token; one back to the
// registry's own host keeps its token.
func TestRedirectCarriesNoCredentials(t *testing.T) {
	blob := "layer bytes"
	d := digest.FromString(blob)
	cdn := newSink(t)
	cdn.body = blob
	for _, scheme := range []string{"basic", "bearer"} {
		t.Run(scheme, func(t *testing.T) {
			var self string
			var mu sync.Mutex
			var selfAuth []string
			c, srv := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
				auth := r.Header.Get("Authorization")
				switch {
				case r.URL.Path == "/token":
					json.NewEncoder(w).Encode(map[string]string{"token": "registry-token"})
				case scheme == "basic" && !strings.HasPrefix(auth, "Basic "):
					w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
					w.WriteHeader(http.StatusUnauthorized)
				case scheme == "bearer" && auth != "Bearer registry-token":
					challenge(self+"/token")(w, r)
				case r.URL.Path == "/v2/":
				case strings.HasPrefix(r.URL.Path, "/cdn/"):
					mu.Lock()
					selfAuth = append(selfAuth, auth)
					mu.Unlock()
					io.WriteString(w, blob)
				case r.URL.Query().Get("via") == "self":
					http.Redirect(w, r, self+"/cdn/"+d.String(), http.StatusTemporaryRedirect)
				default:
					http.Redirect(w, r, cdn.srv.URL+"/"+d.String(), http.StatusTemporaryRedirect)
				}
			}, Options{Auth: creds})
			self = srv.URL
			cdnHost := cdn.srv.Listener.Addr().String()
			c.egress.reachable = func(host, port string) bool { return net.JoinHostPort(host, port) == cdnHost }
			before := len(cdn.requests())
			rc, _, err := c.BlobGet(context.Background(), "r", d)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(rc)
			rc.Close()
			if string(got) != blob {
				t.Errorf("blob = %q", got)
			}
			reqs := cdn.requests()[before:]
			if len(reqs) != 1 || reqs[0].Get("Authorization") != "" {
				t.Errorf("the other host got %d requests, Authorization %q", len(reqs), reqs[0].Get("Authorization"))
			}
			// the same through a redirect to the registry's own host, which may have its token
			resp, err := c.do(context.Background(), "blob", http.MethodGet, "r", "/blobs/"+d.String()+"?via=self", nil, http.StatusOK)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			if len(selfAuth) != 1 || selfAuth[0] == "" {
				t.Errorf("the redirect to the registry's own host went with Authorization %q", selfAuth)
			}
		})
	}
}

// TestRedirectBounds: a redirect loop ends after maxRedirects; https never redirects to http.
func TestRedirectBounds(t *testing.T) {
	var hops int
	var mu sync.Mutex
	c, _ := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		mu.Lock()
		hops++
		mu.Unlock()
		http.Redirect(w, r, r.URL.Path+"x", http.StatusFound)
	}, Options{})
	_, err := c.ManifestGet(context.Background(), "r", "v1")
	if e, ok := AsError(err); !ok || !e.Refused || !strings.Contains(err.Error(), "more than 5") {
		t.Errorf("loop: %v", err)
	}
	if hops != maxRedirects+1 {
		t.Errorf("the loop was followed %d times, want %d", hops, maxRedirects+1)
	}

	plain := newSink(t)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/" {
			http.Redirect(w, r, plain.srv.URL+"/x", http.StatusFound)
		}
	}))
	defer tlsSrv.Close()
	c2, err := New(Options{URL: tlsSrv.URL, TLS: tlsSrv.Client().Transport.(*http.Transport).TLSClientConfig, Log: discard})
	if err != nil {
		t.Fatal(err)
	}
	plainHost := plain.srv.Listener.Addr().String()
	c2.egress.reachable = func(host, port string) bool { return net.JoinHostPort(host, port) == plainHost }
	_, err = c2.ManifestGet(context.Background(), "r", "v1")
	if e, ok := AsError(err); !ok || !e.Refused || !strings.Contains(err.Error(), "https to plain http") {
		t.Errorf("downgrade: %v", err)
	}
	if n := len(plain.requests()); n != 0 {
		t.Errorf("the plain-http host got %d requests", n)
	}
}

// TestUpstreamTextNotReflected: what the registry or its token service says — bodies, messages,
// unregistered codes — never reaches the error's text.
func TestUpstreamTextNotReflected(t *testing.T) {
	ociBody := `{"errors":[{"code":"` + marker + `","message":"` + marker + `"}]}`
	tests := []struct {
		name string
		h    func(self string) http.HandlerFunc
	}{
		{"manifest 500 with an OCI body", func(string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v2/" {
					w.WriteHeader(500)
					io.WriteString(w, ociBody)
				}
			}
		}},
		{"manifest 403 with a registered code", func(string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v2/" {
					w.WriteHeader(403)
					io.WriteString(w, `{"errors":[{"code":"DENIED","message":"`+marker+`"}]}`)
				}
			}
		}},
		{"ping answers 502 with a body", func(string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(502)
				io.WriteString(w, strings.Repeat(marker, 1000))
			}
		}},
		{"token service answers JSON without a token", func(self string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					io.WriteString(w, `{"internal":"`+marker+`"}`)
					return
				}
				challenge(self+"/token")(w, r)
			}
		}},
		{"token service answers 401 with a body", func(self string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					w.WriteHeader(401)
					io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"`+marker+`"}],"x":"`+marker+`"}`)
					return
				}
				challenge(self+"/token")(w, r)
			}
		}},
		{"token service answers HTML", func(self string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/token" {
					io.WriteString(w, "<html>"+marker+"</html>")
					return
				}
				challenge(self+"/token")(w, r)
			}
		}},
		{"a malformed response", func(string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/v2/" {
					return
				}
				conn, buf, _ := w.(http.Hijacker).Hijack()
				buf.WriteString("HTTP/1.1 2" + marker + "\r\n\r\n")
				buf.Flush()
				conn.Close()
			}
		}},
		{"a redirect to an unparsable Location", func(string) http.HandlerFunc {
			return func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v2/" {
					w.Header().Set("Location", "http://[::1"+marker)
					w.WriteHeader(302)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var self string
			c, srv := upstreamServer(t, func(w http.ResponseWriter, r *http.Request) { tt.h(self)(w, r) }, Options{Auth: creds})
			self = srv.URL
			_, err := c.ManifestGet(context.Background(), "r", "v1")
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), marker) {
				t.Errorf("the upstream's text reached the error: %v", err)
			}
			if e, ok := AsError(err); !ok || (e.Code != "" && registered(e.Code) != e.Code) {
				t.Errorf("err = %#v", err)
			}
			t.Log(err)
		})
	}
}

// TestContentTypeNotReflected: a manifest's Content-Type, which a refusal quotes, is kept only
// when it can be a media type.
func TestContentTypeNotReflected(t *testing.T) {
	for ct, want := range map[string]string{
		"application/vnd.oci.image.manifest.v1+json":                "application/vnd.oci.image.manifest.v1+json",
		"application/vnd.docker.distribution.manifest.v2+json; x=y": "application/vnd.docker.distribution.manifest.v2+json",
		"":                                   "",
		"text/" + strings.Repeat(marker, 20): "invalid/content-type",
		"application/json<" + marker + " {":  "invalid/content-type",
	} {
		if got := mediaType(http.Header{"Content-Type": {ct}}); got != want {
			t.Errorf("mediaType(%.40q) = %q, want %q", ct, got, want)
		}
	}
}
