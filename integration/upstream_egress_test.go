//go:build integration

package integration

import (
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Issue 9, class 3: an upstream cannot make Gatehouse reach inside. An upstream chooses its
// token realm and where its redirects go; these tests point both at an internal service (a sink
// on loopback) under every name that reaches it, and check that the sink hears nothing it
// should not, that no client sees its bytes, and that the legitimate arrangements still work.

const sinkMarker = "GATEHOUSE-SINK-MARKER-4e1f"

// sink is an internal service: one port on 127.0.0.1, 127.0.0.2 and [::1], recording every
// request with its Authorization, and answering 132,000-odd bytes of token-shaped JSON full of
// sinkMarker.
type sink struct {
	port string
	mu   sync.Mutex
	reqs []sinkRequest
}

type sinkRequest struct{ local, method, path, auth string }

func startSink(t *testing.T) *sink {
	t.Helper()
	s := &sink{}
	body := `{"token":"` + sinkMarker + `","access_token":"` + sinkMarker + `","pad":"` + strings.Repeat(sinkMarker, 5000) + `"}`
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		s.mu.Lock()
		s.reqs = append(s.reqs, sinkRequest{fmt.Sprint(local), r.Method, r.URL.Path, r.Header.Get("Authorization")})
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, s.port, _ = net.SplitHostPort(l.Addr().String())
	go srv.Serve(l)
	for _, host := range []string{"127.0.0.2", "::1"} {
		l, err := net.Listen("tcp", net.JoinHostPort(host, s.port))
		if err != nil {
			t.Fatalf("the sink cannot listen on %s: %v", host, err)
		}
		go srv.Serve(l)
	}
	t.Cleanup(func() { srv.Close() })
	// every name answers, so "the sink got no request" below means Gatehouse sent none
	for _, u := range s.urls("/probe") {
		if u.probe {
			resp, err := http.Get(u.url)
			if err != nil {
				t.Fatalf("the sink does not answer at %s: %v", u.url, err)
			}
			resp.Body.Close()
		}
	}
	s.mu.Lock()
	s.reqs = nil
	s.mu.Unlock()
	return s
}

type sinkURL struct {
	url   string
	named bool // by a name rather than an IP literal
	probe bool // Go's resolver reaches it (it does not resolve "localhost." here)
}

// urls are path on the sink under each loopback name and address that reaches it: localhost in
// two spellings and as an absolute name, this machine's host name when it resolves to loopback,
// 127.0.0.1 (the upstream's address, on another port), 127.0.0.2 and [::1].
func (s *sink) urls(path string) []sinkURL {
	out := []sinkURL{
		{"http://localhost:" + s.port + path, true, true},
		{"http://LocalHost:" + s.port + path, true, true},
		{"http://localhost.:" + s.port + path, true, false},
		{"http://127.0.0.1:" + s.port + path, false, true},
		{"http://127.0.0.2:" + s.port + path, false, true},
		{"http://[::1]:" + s.port + path, false, true},
	}
	if h, err := os.Hostname(); err == nil {
		if ips, err := net.LookupIP(h); err == nil && len(ips) > 0 && ips[0].IsLoopback() {
			out = append(out, sinkURL{"http://" + h + ":" + s.port + path, true, true})
		}
	}
	return out
}

func (s *sink) requests() []sinkRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sinkRequest(nil), s.reqs...)
}

// lyingUpstream stands in front of a real registry and lies as told: it challenges every request
// with a token realm of its choosing, or redirects blobs and manifests to a URL of its choosing
// (the request's path appended). Requests under /direct/ are the registry's, so a redirect to
// the upstream's own host can be told apart; /token is served by issuer when it is set.
type lyingUpstream struct {
	addr string
	mu   sync.Mutex
	// set by tests
	registry   string // host:port of the registry behind
	realm      string
	blobTo     string
	manifestTo string
	issuer     *tokenIssuer
	// counted
	direct int
}

func startLyingUpstream(t *testing.T) *lyingUpstream {
	t.Helper()
	f := &lyingUpstream{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		registry, realm, blobTo, manifestTo, issuer := f.registry, f.realm, f.blobTo, f.manifestTo, f.issuer
		if strings.HasPrefix(r.URL.Path, "/direct/") {
			f.direct++
		}
		f.mu.Unlock()
		switch {
		case issuer != nil && r.URL.Path == "/token":
			issuer.serve(w, r)
		case realm != "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="lying"`)
			w.WriteHeader(http.StatusUnauthorized)
		case strings.HasPrefix(r.URL.Path, "/direct/"):
			r.URL.Path = strings.TrimPrefix(r.URL.Path, "/direct")
			httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: registry}).ServeHTTP(w, r)
		case blobTo != "" && strings.Contains(r.URL.Path, "/blobs/"):
			http.Redirect(w, r, blobTo+r.URL.Path, http.StatusTemporaryRedirect)
		case manifestTo != "" && strings.Contains(r.URL.Path, "/manifests/"):
			http.Redirect(w, r, manifestTo+r.URL.Path, http.StatusFound)
		default:
			httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: registry}).ServeHTTP(w, r)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *lyingUpstream) set(fn func(f *lyingUpstream)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func credsFile(t *testing.T, user, pass string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "creds.json")
	if err := os.WriteFile(p, []byte(`{"username":"`+user+`","password":"`+pass+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// noSinkBytes fails if a response to a client carries anything of the sink's.
func noSinkBytes(t *testing.T, what string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if strings.Contains(p, sinkMarker) {
			t.Errorf("%s: the client received the sink's bytes: %.300s", what, p)
		}
	}
}

// TestUpstreamEgressRealm (a, b, c): an upstream whose 401 names a token realm on an internal
// service — by localhost, another loopback name or address, a name that resolves to loopback,
// the metadata address — fails the pull with an error that says the realm is not allowed and
// how to allow it; the realm receives no request at all, so neither the route's credentials nor
// its answer go anywhere.
func TestUpstreamEgressRealm(t *testing.T) {
	crane := tool(t, "crane")
	sk := startSink(t)
	f := startLyingUpstream(t)
	gh := startGatehouse(t, fmt.Sprintf(`routes:
  - prefix: docker.io
    kind: pull
    upstream: {url: "http://%s", credentials: {file: %s}, timeout: 5s}
  - {prefix: "", kind: push}
`, f.addr, credsFile(t, "route-user", "route-s3cret")))
	t.Setenv("DOCKER_CONFIG", t.TempDir())

	realms := append(sk.urls("/token"), sinkURL{url: "http://169.254.169.254/latest/api/token"})
	for i, realm := range realms {
		f.set(func(f *lyingUpstream) { f.realm = realm.url })
		repo := fmt.Sprintf("library/realm%d", i)
		status, hdr, body := get(t, gh.url("/v2/docker.io/"+repo+"/manifests/v1"), map[string]string{"Accept": acceptAll})
		texts := map[string]string{"GET": string(body)}
		if i < 2 { // crane retries a 503 for some seconds: twice is enough to show what a client sees
			texts["crane"] = runFail(t, nil, crane, "digest", "--insecure", gh.addr+"/docker.io/"+repo+":v1")
		}
		for what, text := range texts {
			if !strings.Contains(text, "token realm") || !strings.Contains(text, "not allowed") || !strings.Contains(text, "upstream.token_realms") {
				t.Errorf("realm %s, %s: the error does not say the realm was refused and how to allow it:\n%s", realm.url, what, text)
			}
			if realm.named && !strings.Contains(strings.ToLower(text), strings.ToLower(strings.TrimPrefix(strings.TrimSuffix(realm.url, "/token"), "http://"))) {
				t.Errorf("realm %s, %s: the error does not name the realm's host:\n%s", realm.url, what, text)
			}
			if strings.Contains(text, "route-s3cret") {
				t.Errorf("realm %s, %s: the error shows the route's password", realm.url, what)
			}
		}
		if status != http.StatusServiceUnavailable {
			t.Errorf("realm %s: GET = %d %s", realm.url, status, body)
		}
		noSinkBytes(t, "realm "+realm.url, texts["crane"], string(body), fmt.Sprint(hdr))
	}
	if reqs := sk.requests(); len(reqs) != 0 {
		t.Errorf("the internal realm got %d requests: %+v", len(reqs), reqs)
	}
	if strings.Contains(gh.log.String(), "route-s3cret") {
		t.Error("the route's password appears in gatehouse's log")
	}
	gh.healthy(t)
}

// TestUpstreamEgressRedirects (d): blob and manifest redirects to the internal sink — under
// every name, also one the route lists as a token realm — and to the real registry behind the
// upstream, on the upstream's IP but another port, where the bytes would have been right, are
// refused before connecting, on an audit route and on an enforcing one: the sink gets no
// request (so no credentials), and no client sees its bytes.
func TestUpstreamEgressRedirects(t *testing.T) {
	crane := tool(t, "crane")
	sk := startSink(t)
	up := startUpstream(t, "")
	_, _ = pushImage(t, crane, up.addr+"/library/app:v1")
	_, _ = pushImage(t, crane, up.addr+"/library/gated:v1")
	_, _ = pushImage(t, crane, up.addr+"/library/gated2:v1")
	_, _, m := get(t, "http://"+up.addr+"/v2/library/app/manifests/v1", map[string]string{"Accept": acceptAll})
	layer := blobsOf(t, m)[1]
	f := startLyingUpstream(t)
	f.set(func(f *lyingUpstream) { f.registry = up.addr })
	creds := credsFile(t, "route-user", "route-s3cret")
	routes := `routes:
  - prefix: audit.test
    kind: pull
    upstream: {url: "http://%[1]s", credentials: {file: %[2]s}, timeout: 5s}
  - prefix: enforce.test
    kind: pull
    admission_mode: enforce
    upstream: {url: "http://%[1]s", credentials: {file: %[2]s}, timeout: 5s}
  - prefix: listed.test
    kind: pull
    upstream: {url: "http://%[1]s", credentials: {file: %[2]s}, timeout: 5s, token_realms: ["localhost:%[3]s"]}
  - {prefix: "", kind: push}
`
	gh := startGatehouse(t, "admission: {mode: audit, hold: 20s}\nvulndb: {recheck: 200ms, max_age: 87600h}\n"+
		fmt.Sprintf(routes, f.addr, creds, sk.port))
	gateDB(t, gh)

	targets := append(sk.urls(""), sinkURL{url: "http://" + up.addr, probe: true})
	refused := func(what string, status int, body []byte) {
		t.Helper()
		if status == http.StatusOK {
			t.Errorf("%s: served (%d bytes); the redirect should have been refused", what, len(body))
		}
		noSinkBytes(t, what, string(body))
	}
	for _, target := range targets {
		f.set(func(f *lyingUpstream) { f.blobTo, f.manifestTo = target.url, "" })
		status, _, body := get(t, gh.url("/v2/audit.test/library/app/blobs/"+layer), nil)
		refused("audit route, blob redirected to "+target.url, status, body)
		t.Logf("audit route, blob redirected to %s: %d %.300s", target.url, status, body)
		// (localhost. does not resolve for Go here: refused all the same, by DNS)
		if target.probe && (status != http.StatusServiceUnavailable || !strings.Contains(string(body), "refused to connect")) {
			t.Errorf("audit route, blob redirected to %s: %d %s", target.url, status, body)
		}

		f.set(func(f *lyingUpstream) { f.blobTo, f.manifestTo = "", target.url })
		for _, route := range []string{"audit.test", "enforce.test", "listed.test"} {
			status, _, body := get(t, gh.url("/v2/"+route+"/library/app/manifests/v1"), map[string]string{"Accept": acceptAll})
			refused(route+", manifest redirected to "+target.url, status, body)
			if target.probe && !strings.Contains(string(body), "refused to connect") {
				t.Errorf("%s, manifest redirected to %s: %d %s", route, target.url, status, body)
			}
		}
	}
	// crane, the way a client meets it
	f.set(func(f *lyingUpstream) { f.blobTo, f.manifestTo = "http://127.0.0.2:"+sk.port, "" })
	out := runFail(t, nil, crane, "export", "--insecure", gh.addr+"/audit.test/library/app:v1", filepath.Join(t.TempDir(), "fs.tar"))
	noSinkBytes(t, "crane export", out)

	// the enforcing route admits from what it fetched itself: its layers redirected inside,
	// the scan cannot read them and nothing is served
	for i, target := range []string{"http://" + up.addr, "http://localhost:" + sk.port} {
		repo := []string{"gated", "gated2"}[i]
		f.set(func(f *lyingUpstream) { f.blobTo, f.manifestTo = target, "" })
		status, _, body := get(t, gh.url("/v2/enforce.test/library/"+repo+"/manifests/v1"), map[string]string{"Accept": acceptAll})
		refused("enforcing route, layers redirected to "+target, status, body)
		t.Logf("enforcing route, layers redirected to %s: %d %.400s", target, status, body)
		_, _, gm := get(t, "http://"+up.addr+"/v2/library/"+repo+"/manifests/v1", map[string]string{"Accept": acceptAll})
		for _, b := range blobsOf(t, gm) {
			status, _, body := get(t, gh.url("/v2/enforce.test/library/"+repo+"/blobs/"+b), nil)
			refused("enforcing route, blob "+b[:19]+" redirected to "+target, status, body)
		}
	}
	// the route that lists the sink's localhost:port as a token realm: a redirect there is
	// refused like any other (a realm is reached for tokens only)
	f.set(func(f *lyingUpstream) { f.blobTo, f.manifestTo = "http://localhost:"+sk.port, "" })
	status, _, body := get(t, gh.url("/v2/listed.test/library/app/blobs/"+layer), nil)
	refused("listed route, blob redirected to the listed realm's host", status, body)
	if !strings.Contains(string(body), "refused to connect") {
		t.Errorf("listed route, blob redirected to the listed realm's host: %d %s", status, body)
	}

	if reqs := sk.requests(); len(reqs) != 0 {
		t.Errorf("the internal sink got %d requests: %+v", len(reqs), reqs)
	}
	if !strings.Contains(gh.log.String(), "refused a connection inside the network") {
		t.Error("gatehouse's log does not record the refused connections")
	}
	if strings.Contains(gh.log.String(), "route-s3cret") || strings.Contains(gh.log.String(), base64.StdEncoding.EncodeToString([]byte("route-user:route-s3cret"))) {
		t.Error("the route's credentials appear in gatehouse's log")
	}
	gh.healthy(t)
}

// TestUpstreamEgressAllowed (e): what registries really do still works — a token realm on the
// registry's own host:port (unlisted), a realm on another host that the route lists (and the
// same registry through a route that does not list it, refused), and redirects to the
// upstream's own host.
func TestUpstreamEgressAllowed(t *testing.T) {
	crane := tool(t, "crane")
	ti := startTokenIssuer(t, "puller", "s3cret-pass")
	dockerDir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dockerDir)
	pushAs := func(registry, ref string) string {
		auth := base64.StdEncoding.EncodeToString([]byte("puller:s3cret-pass"))
		os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(`{"auths":{"`+registry+`":{"auth":"`+auth+`"}}}`), 0o600)
		d, _ := pushImage(t, crane, ref)
		os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(`{}`), 0o600)
		return d
	}
	tokenAuth := func(realm string) string {
		return fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: %s\n", realm, ti.rootBundle(t))
	}

	// the realm on the upstream's own host:port: the front serves /token and the registry
	same := startLyingUpstream(t)
	sameUp := startUpstream(t, tokenAuth("http://"+same.addr+"/token"))
	same.set(func(f *lyingUpstream) { f.registry, f.issuer = sameUp.addr, ti })
	sameDigest := pushAs(same.addr, same.addr+"/library/same:v1")

	// the realm on another host, by name
	other := startUpstream(t, tokenAuth("http://localhost:"+strings.TrimPrefix(ti.addr, "127.0.0.1:")+"/token"))
	otherDigest := pushAs(other.addr, other.addr+"/library/other:v1")

	// redirects to the upstream's own host
	anon := startUpstream(t, "")
	anonDigest, files := pushImage(t, crane, anon.addr+"/library/anon:v1")
	self := startLyingUpstream(t)
	self.set(func(f *lyingUpstream) {
		f.registry = anon.addr
		f.blobTo, f.manifestTo = "http://"+self.addr+"/direct", "http://"+self.addr+"/direct"
	})

	creds := credsFile(t, "puller", "s3cret-pass")
	gh := startGatehouse(t, fmt.Sprintf(`routes:
  - prefix: same.test
    kind: pull
    upstream: {url: "http://%[1]s", credentials: {file: %[2]s}}
  - prefix: listed.test
    kind: pull
    upstream: {url: "http://%[3]s", credentials: {file: %[2]s}, token_realms: ["localhost:%[4]s"]}
  - prefix: unlisted.test
    kind: pull
    upstream: {url: "http://%[3]s", credentials: {file: %[2]s}}
  - prefix: self.test
    kind: pull
    upstream: {url: "http://%[5]s", credentials: {file: %[2]s}}
  - {prefix: "", kind: push}
`, same.addr, creds, other.addr, strings.TrimPrefix(ti.addr, "127.0.0.1:"), self.addr))

	before := ti.granted.Load()
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", gh.addr+"/same.test/library/same:v1")); got != sameDigest {
		t.Errorf("realm on the upstream's host: digest %q, want %s", got, sameDigest)
	}
	run(t, nil, crane, "export", "--insecure", gh.addr+"/same.test/library/same:v1", filepath.Join(t.TempDir(), "fs.tar"))
	if ti.granted.Load() == before {
		t.Error("realm on the upstream's host: gatehouse got no token")
	}

	before = ti.granted.Load()
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", gh.addr+"/listed.test/library/other:v1")); got != otherDigest {
		t.Errorf("listed realm: digest %q, want %s", got, otherDigest)
	}
	run(t, nil, crane, "export", "--insecure", gh.addr+"/listed.test/library/other:v1", filepath.Join(t.TempDir(), "fs.tar"))
	if ti.granted.Load() == before {
		t.Error("listed realm: gatehouse got no token")
	}
	refusedBefore := ti.granted.Load() + ti.refused.Load()
	out := runFail(t, nil, crane, "digest", "--insecure", gh.addr+"/unlisted.test/library/other:v1")
	if !strings.Contains(out, "localhost:"+strings.TrimPrefix(ti.addr, "127.0.0.1:")) || !strings.Contains(out, "upstream.token_realms") {
		t.Errorf("the same realm unlisted: %s", out)
	}
	if ti.granted.Load()+ti.refused.Load() != refusedBefore {
		t.Error("the unlisted realm was asked for a token")
	}

	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", gh.addr+"/self.test/library/anon:v1")); got != anonDigest {
		t.Errorf("redirect to the upstream's own host: digest %q, want %s", got, anonDigest)
	}
	assertFiles(t, crane, gh.addr+"/self.test/library/anon:v1", files)
	self.mu.Lock()
	direct := self.direct
	self.mu.Unlock()
	if direct == 0 {
		t.Error("the upstream's redirects to its own host were never followed")
	}
	gh.healthy(t)
}
