package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
)

// Error is an upstream failure. Its text is Gatehouse's own words: what failed, the status and,
// when it is one the distribution spec registers, the OCI error code — never a message, body
// or header text the upstream (or a host it redirected to) chose, since these errors reach
// clients. What the upstream said is logged, shortened.
type Error struct {
	Status     int           // 0: no HTTP answer (unreachable, refused, or a token exchange that failed)
	Code       string        // the OCI error code the upstream sent, if the spec registers it
	Message    string        // what went wrong, in Gatehouse's words
	RetryAfter time.Duration // from a 429's Retry-After
	Upstream   string
	// Refused: Gatehouse would not send the request (a token realm or an address the
	// route does not allow, a redirect out of bounds); Status is 0.
	Refused bool
}

func (e *Error) Error() string {
	switch {
	case e.Status == 0:
		return fmt.Sprintf("upstream %s: %s", e.Upstream, e.Message)
	case e.Code != "":
		return fmt.Sprintf("upstream %s answered %d %s: %s", e.Upstream, e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("upstream %s answered %d: %s", e.Upstream, e.Status, e.Message)
}

// NotFound reports whether the upstream said the thing does not exist (or is not there for us).
func (e *Error) NotFound() bool { return e.Status == http.StatusNotFound }

// Temporary reports whether the upstream could not answer now (down, rate limited, failing):
// the cases in which a cached copy may stand in.
func (e *Error) Temporary() bool {
	return e.Status == 0 || e.Status == http.StatusTooManyRequests || e.Status >= 500
}

// AsError returns err's *Error, if it has one.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// Options configure a Client.
type Options struct {
	// URL of the registry: scheme and host (http:// for plain-HTTP registries).
	URL string
	// Auth authenticates to the registry (nil: anonymous).
	Auth authn.Authenticator
	// Timeout bounds connecting and waiting for response headers; blob bodies may take longer
	// but fail after Timeout without progress. Default 30s.
	Timeout time.Duration
	// TLS configures HTTPS (nil: system roots).
	TLS *tls.Config
	// MaxManifestSize bounds manifest bodies read from the upstream (default 4 MiB).
	MaxManifestSize int64
	// Observe, if set, is told of every upstream response (kind is manifest, blob, tags or
	// referrers; status 0 for a transport failure).
	Observe func(kind string, status int)
	// TokenRealms are the token realms, besides the registry's own host, that may be sent
	// token requests and credentials: realm URLs (https://auth.docker.io/token) or hosts
	// (auth.docker.io, *.pkg.dev). See egress.go for all the rules on where requests go.
	TokenRealms []string
	// Log receives what the upstream said when it failed, shortened, and every refusal
	// (nil: slog.Default()).
	Log *slog.Logger
}

// Client talks to one upstream registry.
type Client struct {
	opts       Options
	base       string // scheme://host
	egress     *egress
	reg        name.Registry
	rt         http.RoundTripper
	transports *lru.Cache[string, http.RoundTripper] // per repository (bearer scopes are per repository)
	mu         sync.Mutex
	backoff    time.Time // no requests until then (a 429's Retry-After)
	backoffErr *Error
}

// New returns a client for the upstream at o.URL.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("upstream url %q must be http(s)://host[:port]", o.URL)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("upstream url %q: registries serve /v2/ at the root; give no path", o.URL)
	}
	var nopts []name.Option
	if u.Scheme == "http" {
		nopts = append(nopts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, nopts...)
	if err != nil {
		return nil, fmt.Errorf("upstream url %q: %w", o.URL, err)
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxManifestSize == 0 {
		o.MaxManifestSize = 4 << 20
	}
	if o.Auth == nil {
		o.Auth = authn.Anonymous
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	var realms []realmRule
	for _, entry := range o.TokenRealms {
		r, err := parseRealm(entry)
		if err != nil {
			return nil, err
		}
		realms = append(realms, r)
	}
	g := newEgress(u, realms, o.Log)
	g.inner, g.tokens = g.transport(o, false), g.transport(o, true)
	cache, _ := lru.New[string, http.RoundTripper](1024)
	return &Client{opts: o, base: u.Scheme + "://" + u.Host, reg: reg, egress: g, rt: g, transports: cache}, nil
}

// URL is the upstream's address, for messages.
func (c *Client) URL() string { return c.base }

func (c *Client) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	if t, ok := c.transports.Get(repo); ok {
		return t, nil
	}
	t, err := transport.NewWithContext(ctx, c.reg, c.opts.Auth, c.rt, []string{"repository:" + repo + ":pull"})
	if err != nil {
		return nil, c.wrap(err)
	}
	c.transports.Add(repo, t)
	return t, nil
}

// wrap turns a transport, ping or token failure into an *Error in Gatehouse's words, and logs
// what the upstream said.
func (c *Client) wrap(err error) error {
	if _, ok := AsError(err); ok {
		return err
	}
	var r *Refusal
	if errors.As(err, &r) {
		return &Error{Upstream: c.base, Refused: true, Message: r.msg}
	}
	var te *transport.Error
	if errors.As(err, &te) {
		e := &Error{Status: te.StatusCode, Upstream: c.base, Message: c.whose(te.Request) + " answered " + statusText(te.StatusCode)}
		if len(te.Errors) > 0 {
			e.Code = registered(string(te.Errors[0].Code))
		}
		c.opts.Log.Info("upstream: failed", "upstream", c.base, "status", te.StatusCode, "said", clip(te.Error(), 512))
		return e
	}
	msg, refused := c.describe(err)
	c.opts.Log.Info("upstream: failed", "upstream", c.base, "err", clip(err.Error(), 512))
	return &Error{Upstream: c.base, Message: msg, Refused: refused}
}

// whose names who answered req: the registry, its token service or a host it redirected to.
func (c *Client) whose(req *http.Request) string {
	if req == nil {
		return "the registry"
	}
	g, u := c.egress, req.URL
	own := g.upstreamHost(u.Hostname(), u.Port(), u.Scheme)
	if req.Response == nil && (!own && g.realmAllowed(u) || own && !strings.HasPrefix(u.Path, "/v2/")) {
		return "its token service " + printable(u.Host)
	}
	if own {
		return "the registry"
	}
	return "the host it redirected to"
}

func statusText(status int) string {
	if t := http.StatusText(status); t != "" {
		return fmt.Sprintf("%d %s", status, t)
	}
	return strconv.Itoa(status)
}

// registered returns code if the distribution spec registers it ("" otherwise): an upstream may
// put anything in its error's code field.
func registered(code string) string {
	switch code {
	case "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
		"MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
		"NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS":
		return code
	}
	return ""
}

// describe says in Gatehouse's words why a request failed without an HTTP answer (and whether
// Gatehouse refused it). The errors' own text is not used: Go's and go-containerregistry's
// messages quote URLs from Location headers, response bytes and token-service bodies.
func (c *Client) describe(err error) (msg string, refused bool) {
	text := err.Error()
	var (
		dns      *net.DNSError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
		syntax   *json.SyntaxError
		typ      *json.UnmarshalTypeError
		nerr     net.Error
	)
	switch {
	case strings.Contains(text, "invalid realm in www-authenticate"):
		return "the upstream's token realm is not allowed: a realm is https (http only for an http registry) and, unless it is the registry's own host, is named by a host listed in upstream.token_realms, never by a private or link-local IP address", true
	case strings.Contains(text, "refusing token-server redirect"):
		return "its token service redirected to a host that is not allowed", true
	case strings.Contains(text, "missing realm"):
		return "the upstream's challenge names no token realm", false
	case strings.Contains(text, "no token in bearer response"):
		return "its token service answered without a token", false
	case errors.As(err, &syntax), errors.As(err, &typ):
		return "an answer was not the JSON expected", false
	case errors.Is(err, context.Canceled):
		return "the request was cancelled", false
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return fmt.Sprintf("no answer within %s", c.opts.Timeout), false
	case errors.As(err, &dns):
		if strings.EqualFold(dns.Name, c.egress.host) {
			return printable(dns.Name) + " does not resolve", false
		}
		return "a host name it sent Gatehouse to does not resolve", false
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", false
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset", false
	case errors.As(err, &unknown):
		return "its TLS certificate is signed by an authority Gatehouse does not trust (see upstream.tls.ca)", false
	case errors.As(err, &hostname):
		return "its TLS certificate is not valid for its host name", false
	case errors.As(err, &invalid):
		return "its TLS certificate is not valid (expired, or not yet valid)", false
	case errors.As(err, &record), strings.Contains(text, "server gave HTTP response to HTTPS client"):
		return "it did not answer in TLS (is it a plain-http registry?)", false
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "the connection closed before the answer was complete", false
	}
	return "the request failed", false
}

// do sends one request to the upstream for repo, honouring a pending backoff, and turns any
// status other than want into an *Error (the body is closed then).
func (c *Client) do(ctx context.Context, kind, method, repo, path string, header http.Header, want ...int) (*http.Response, error) {
	c.mu.Lock()
	if time.Now().Before(c.backoff) {
		e := *c.backoffErr
		e.RetryAfter = time.Until(c.backoff)
		c.mu.Unlock()
		return nil, &e
	}
	c.mu.Unlock()
	t, err := c.transport(ctx, repo)
	if err != nil {
		c.observe(kind, err)
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/v2/"+repo+path, nil)
	if err != nil {
		return nil, &Error{Upstream: c.base, Message: "cannot make a request URL for this repository"}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Transport: t, Timeout: 0}).Do(req)
	if err != nil {
		err = c.wrap(err)
		c.observe(kind, err)
		return nil, err
	}
	if c.opts.Observe != nil {
		c.opts.Observe(kind, resp.StatusCode)
	}
	for _, w := range want {
		if resp.StatusCode == w {
			return resp, nil
		}
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode, Upstream: c.base, Message: c.whose(resp.Request) + " answered " + statusText(resp.StatusCode)}
	if method != http.MethodHead {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var oci struct {
			Errors []struct{ Code, Message string }
		}
		if json.Unmarshal(body, &oci) == nil && len(oci.Errors) > 0 {
			e.Code = registered(oci.Errors[0].Code)
			c.opts.Log.Debug("upstream: error", "upstream", c.base, "kind", kind, "status", resp.StatusCode,
				"code", clip(oci.Errors[0].Code, 64), "said", clip(oci.Errors[0].Message, 256))
		}
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		e.RetryAfter = retryAfter(resp.Header.Get("Retry-After"))
		c.mu.Lock()
		c.backoff, c.backoffErr = time.Now().Add(e.RetryAfter), e
		c.mu.Unlock()
	}
	return nil, e
}

func (c *Client) observe(kind string, err error) {
	if c.opts.Observe == nil {
		return
	}
	status := 0
	if e, ok := AsError(err); ok {
		status = e.Status
	}
	c.opts.Observe(kind, status)
}

// retryAfter reads seconds or an HTTP date; absent or unreadable means one minute, and the
// wait is capped at ten.
func retryAfter(v string) time.Duration {
	d := time.Minute
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		d = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = time.Until(t)
	}
	return max(0, min(d, 10*time.Minute))
}

var acceptManifests = http.Header{"Accept": {strings.Join(manifest.MediaTypes, ", ")}}

// ManifestHead asks for a manifest's descriptor without its body.
func (c *Client) ManifestHead(ctx context.Context, repo, ref string) (v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.do(ctx, "manifest", http.MethodHead, repo, "/manifests/"+ref, acceptManifests, http.StatusOK)
	if err != nil {
		return v1.Descriptor{}, err
	}
	resp.Body.Close()
	d, _ := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	return v1.Descriptor{MediaType: mediaType(resp.Header), Digest: d, Size: resp.ContentLength}, nil
}

// Manifest is a manifest as the upstream served it.
type Manifest struct {
	MediaType string
	Digest    digest.Digest
	Body      []byte
}

// ManifestGet fetches a manifest. Fetched by digest, the body must hash to it; fetched by tag,
// it must hash to the Docker-Content-Digest the upstream sent (when it sent one).
func (c *Client) ManifestGet(ctx context.Context, repo, ref string) (Manifest, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.do(ctx, "manifest", http.MethodGet, repo, "/manifests/"+ref, acceptManifests, http.StatusOK)
	if err != nil {
		return Manifest{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxManifestSize+1))
	if err != nil {
		msg, _ := c.describe(err)
		return Manifest{}, &Error{Upstream: c.base, Message: "reading manifest " + ref + ": " + msg}
	}
	if int64(len(body)) > c.opts.MaxManifestSize {
		return Manifest{}, &Error{Status: http.StatusBadGateway, Upstream: c.base, Message: fmt.Sprintf("manifest %s is larger than %d bytes", ref, c.opts.MaxManifestSize)}
	}
	want, err := digest.Parse(ref)
	if err != nil { // a tag: trust only a digest the body proves
		want, _ = digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	}
	got := digest.FromBytes(body)
	if want != "" {
		got = want.Algorithm().FromBytes(body)
		if got != want {
			return Manifest{}, &Error{Status: http.StatusBadGateway, Upstream: c.base, Message: fmt.Sprintf("manifest %s: the body has digest %s, not %s", ref, got, want)}
		}
	}
	return Manifest{MediaType: mediaType(resp.Header), Digest: got, Body: body}, nil
}

// mediaType is the Content-Type without parameters. One that is not a plausible media type
// (over 127 bytes, or characters no media type has) becomes "invalid/content-type": the value
// is quoted in the refusal a client sees, and an upstream's header may hold anything.
func mediaType(h http.Header) string {
	mt := h.Get("Content-Type")
	if i := strings.IndexByte(mt, ';'); i >= 0 {
		mt = strings.TrimSpace(mt[:i])
	}
	if len(mt) > 127 || strings.ContainsFunc(mt, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/.+-_", c))
	}) {
		return "invalid/content-type"
	}
	return mt
}

// BlobGet opens a blob stream; size is -1 when the upstream does not say. The caller verifies
// the digest while reading (this client does not buffer).
func (c *Client) BlobGet(ctx context.Context, repo string, d digest.Digest) (io.ReadCloser, int64, error) {
	resp, err := c.do(ctx, "blob", http.MethodGet, repo, "/blobs/"+d.String(), nil, http.StatusOK)
	if err != nil {
		return nil, 0, err
	}
	return &stallReader{rc: resp.Body, timeout: c.opts.Timeout}, resp.ContentLength, nil
}

// BlobHead asks whether the upstream repository holds a blob, and its size.
func (c *Client) BlobHead(ctx context.Context, repo string, d digest.Digest) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.do(ctx, "blob", http.MethodHead, repo, "/blobs/"+d.String(), nil, http.StatusOK)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.ContentLength, nil
}

// Referrers lists the upstream's referrers of a digest. Registries without the referrers API
// answer 404; that is reported as an empty list.
func (c *Client) Referrers(ctx context.Context, repo string, d digest.Digest) ([]v1.Descriptor, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.do(ctx, "referrers", http.MethodGet, repo, "/referrers/"+d.String(), nil, http.StatusOK)
	if e, ok := AsError(err); ok && e.NotFound() {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var idx v1.Index
	if err := json.NewDecoder(io.LimitReader(resp.Body, c.opts.MaxManifestSize)).Decode(&idx); err != nil {
		return nil, &Error{Status: http.StatusBadGateway, Upstream: c.base, Message: "referrers of " + d.String() + " are not an image index"}
	}
	return idx.Manifests, nil
}

// TagList lists a repository's tags upstream, one page (n <= 0: the upstream's default page).
func (c *Client) TagList(ctx context.Context, repo string, n int, last string) (tags []string, more bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	q := url.Values{}
	if n > 0 {
		q.Set("n", strconv.Itoa(n))
	}
	if last != "" {
		q.Set("last", last)
	}
	path := "/tags/list"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	resp, err := c.do(ctx, "tags", http.MethodGet, repo, path, nil, http.StatusOK)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	var body struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&body); err != nil {
		return nil, false, &Error{Status: http.StatusBadGateway, Upstream: c.base, Message: "the tag list is not JSON"}
	}
	return body.Tags, resp.Header.Get("Link") != "", nil
}

// stallReader fails a read that makes no progress for timeout (an upstream that hangs mid-blob).
type stallReader struct {
	rc      io.ReadCloser
	timeout time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	timer := time.AfterFunc(s.timeout, func() { s.rc.Close() })
	n, err := s.rc.Read(p)
	if !timer.Stop() && err != nil {
		return n, fmt.Errorf("upstream stalled: no data for %s: %w", s.timeout, err)
	}
	return n, err
}

func (s *stallReader) Close() error { return s.rc.Close() }
