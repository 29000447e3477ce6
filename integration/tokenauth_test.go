//go:build integration

package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// tokenIssuer is a small Docker token-auth server: it checks basic credentials and issues
// ES256 JWTs whose x5c chain the registry verifies against rootcertbundle.
type tokenIssuer struct {
	addr       string
	key        *ecdsa.PrivateKey
	certDER    []byte
	user, pass string
	granted    atomic.Int64 // tokens issued with access
	refused    atomic.Int64
}

func startTokenIssuer(t *testing.T, user, pass string) *tokenIssuer {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gatehouse test token issuer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ti := &tokenIssuer{key: key, certDER: der, user: user, pass: pass}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ti.addr = l.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(ti.serve)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return ti
}

func (ti *tokenIssuer) serve(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || u != ti.user || p != ti.pass {
		ti.refused.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
		return
	}
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	var grants []access
	for _, scope := range r.URL.Query()["scope"] {
		parts := strings.Split(scope, ":")
		if len(parts) == 3 && parts[0] == "repository" {
			grants = append(grants, access{"repository", parts[1], strings.Split(parts[2], ",")})
		}
	}
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"iss": "test-issuer", "sub": u, "aud": r.URL.Query().Get("service"),
		"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprint(now.UnixNano()), "access": grants,
	})
	header, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(ti.certDER)}})
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	rr, ss, err := ecdsa.Sign(rand.Reader, ti.key, sum[:])
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	sig := make([]byte, 64)
	rr.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	token := signing + "." + enc.EncodeToString(sig)
	ti.granted.Add(1)
	json.NewEncoder(w).Encode(map[string]any{"token": token, "access_token": token, "expires_in": 300, "issued_at": now.Format(time.RFC3339)})
}

func (ti *tokenIssuer) rootBundle(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "token-ca.pem")
	os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ti.certDER}), 0o644)
	return p
}

// TestProxyTokenAuthUpstream pulls through Gatehouse from an upstream behind Docker token auth:
// with the route's credentials the pull works; a route without them is refused with DENIED.
// The realm is on another host:port than the registry, so both routes list it in
// upstream.token_realms (Gatehouse sends token requests nowhere else), by name: go-containerregistry
// refuses token realms on private IP literals unless they are the registry's own host:port.
func TestProxyTokenAuthUpstream(t *testing.T) {
	crane := tool(t, "crane")
	ti := startTokenIssuer(t, "puller", "s3cret-pass")
	up := startUpstream(t, fmt.Sprintf(`auth:
  token:
    realm: http://localhost:%s/token
    service: test-registry
    issuer: test-issuer
    rootcertbundle: %s
`, strings.TrimPrefix(ti.addr, "127.0.0.1:"), ti.rootBundle(t)))

	// crane pushes with the same credentials, from a Docker config
	dockerDir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("puller:s3cret-pass"))
	os.WriteFile(filepath.Join(dockerDir, "config.json"), []byte(`{"auths":{"`+up.addr+`":{"auth":"`+auth+`"}}}`), 0o600)
	t.Setenv("DOCKER_CONFIG", dockerDir)
	digest, _ := pushImage(t, crane, up.addr+"/library/private:v1")
	if resp, err := http.Get("http://" + up.addr + "/v2/library/private/manifests/v1"); err != nil || resp.StatusCode != 401 {
		t.Fatalf("the upstream is not behind auth: %v %v", resp, err)
	}

	creds := filepath.Join(t.TempDir(), "creds.json")
	os.WriteFile(creds, []byte(`{"username":"puller","password":"s3cret-pass"}`), 0o600)
	gh := startGatehouse(t, fmt.Sprintf(`routes:
  - prefix: docker.io
    kind: pull
    upstream: {url: "http://%[1]s", credentials: {file: %[2]s}, token_realms: ["http://localhost:%[3]s/token"]}
  - prefix: anonymous.test
    kind: pull
    upstream: {url: "http://%[1]s", token_realms: ["http://localhost:%[3]s/token"]}
  - {prefix: "", kind: push}
`, up.addr, creds, strings.TrimPrefix(ti.addr, "127.0.0.1:")))
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // the client itself has no credentials for gatehouse's upstream

	before := ti.granted.Load()
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", gh.addr+"/docker.io/library/private:v1")); got != digest {
		t.Fatalf("digest through gatehouse = %q, want %s", got, digest)
	}
	exported := filepath.Join(t.TempDir(), "fs.tar")
	run(t, nil, crane, "export", "--insecure", gh.addr+"/docker.io/library/private:v1", exported)
	if ti.granted.Load() == before {
		t.Error("gatehouse got no token from the issuer")
	}
	status, _, body := get(t, gh.url("/v2/anonymous.test/library/private/manifests/v1"), nil)
	if status != 403 || !strings.Contains(string(body), "DENIED") || !strings.Contains(string(body), "credentials") {
		t.Errorf("route without credentials: %d %s", status, body)
	}
	if strings.Contains(gh.log.String(), "s3cret-pass") {
		t.Error("the upstream password appears in gatehouse's log")
	}
	gh.healthy(t)
}
