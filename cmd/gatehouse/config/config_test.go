package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefault(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("embedded default does not validate: %v", err)
	}
	if c.Listen != "127.0.0.1:5000" || c.Data != "./data" {
		t.Errorf("listen/data = %q %q", c.Listen, c.Data)
	}
	if c.Storage.Filesystem.Root != filepath.Join("data", "content") || c.Metadata.SQLite.Path != filepath.Join("data", "meta.db") {
		t.Errorf("paths under data: %q %q", c.Storage.Filesystem.Root, c.Metadata.SQLite.Path)
	}
	if c.Limits.ManifestSize != 4<<20 {
		t.Errorf("manifest size %d", c.Limits.ManifestSize)
	}
}

func TestDefaultRoutes(t *testing.T) {
	c := Default()
	byPrefix := map[string]Route{}
	for _, r := range c.Routes {
		byPrefix[r.Prefix] = r
	}
	for _, p := range []string{"docker.io", "ghcr.io", "quay.io", "registry.k8s.io"} {
		r, ok := byPrefix[p]
		if !ok || r.Kind != "pull" || r.Upstream == nil || !strings.HasPrefix(r.Upstream.URL, "https://") {
			t.Errorf("default route %s = %+v", p, r)
		}
	}
	// each lists its registry's token realm: a realm not listed (nor on the registry's host) is refused
	if r := byPrefix["docker.io"].Upstream.TokenRealms; len(r) != 1 || r[0] != "https://auth.docker.io/token" {
		t.Errorf("docker.io token realms = %q", r)
	}
	for _, p := range []string{"ghcr.io", "quay.io", "registry.k8s.io"} {
		if len(byPrefix[p].Upstream.TokenRealms) == 0 {
			t.Errorf("%s lists no token realm", p)
		}
	}
	if !*byPrefix["docker.io"].LibraryNamespace || *byPrefix["ghcr.io"].LibraryNamespace {
		t.Error("library_namespace defaults wrong")
	}
	if r, ok := byPrefix[""]; !ok || r.Kind != "push" {
		t.Errorf("no hosted catch-all route: %+v", r)
	}
	// routes given in a file replace the defaults entirely
	c, err := Parse([]byte("routes: [{prefix: ci, kind: push}]\n"))
	if err != nil || len(c.Routes) != 1 {
		t.Errorf("explicit routes: %+v %v", c.Routes, err)
	}
}

func TestParse(t *testing.T) {
	c, err := Parse([]byte(`
listen: 0.0.0.0:6000
data: /var/lib/gatehouse
storage: {driver: inmemory, delete: true}
limits: {manifest_size: 512KiB, digest_algorithms: [sha256]}
uploads: {expiry: 90m}
cache: {manifests: 0}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Limits.ManifestSize != 512<<10 || time.Duration(c.Uploads.Expiry) != 90*time.Minute || !c.Storage.Delete || *c.Cache.Manifests != 0 {
		t.Errorf("parsed %+v", c)
	}
	if c.Metadata.SQLite.Path != "/var/lib/gatehouse/meta.db" {
		t.Errorf("data did not move the default sqlite path: %q", c.Metadata.SQLite.Path)
	}
}

func TestParseRefuses(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown key", "listen: :5000\nlisten_addr: x\n", "field listen_addr not found"},
		{"unknown nested key", "storage: {driver: filesystem, bucket: x}\n", "field bucket not found"},
		{"bad duration", "uploads: {expiry: 3 days}\n", "not a Go duration"},
		{"bad size", "limits: {manifest_size: lots}\n", "not a size"},
		{"bad driver", "storage: {driver: floppy}\n", "storage.driver"},
		{"bad algorithm", "limits: {digest_algorithms: [md5]}\n", "limits.digest_algorithms"},
		{"tls half", "tls: {cert: a.pem}\n", "tls: cert and key"},
		{"bad listen", "listen: nowhere\n", "listen:"},
		{"two errors at once", "log: {format: xml, level: loud}\n", "log.level"},
		{"pull route without upstream", "routes: [{prefix: docker.io, kind: pull}]\n", "routes[0].upstream.url"},
		{"catch-all pull route", "routes: [{prefix: '', kind: pull, upstream: {url: 'https://x'}}]\n", "routes[0].prefix"},
		{"duplicate prefix", "routes: [{prefix: a, kind: push}, {prefix: a, kind: push}]\n", "routes[1].prefix"},
		{"upstream without scheme", "routes: [{prefix: a, kind: pull, upstream: {url: registry.example}}]\n", "must start with https://"},
		{"both credentials", "routes: [{prefix: a, kind: pull, upstream: {url: 'https://x', credentials: {file: a, docker_config: b}}}]\n", "exactly one"},
		{"push with ttl", "routes: [{prefix: a, kind: push, tag_ttl: 1m}]\n", "pull routes only"},
		{"upstream min_rate too low", "routes: [{prefix: a, kind: pull, upstream: {url: 'https://x', min_rate: 100}}]\n", "routes[0].upstream.min_rate"},
		{"upstream max_layers negative", "routes: [{prefix: a, kind: pull, upstream: {url: 'https://x', max_layers: -1}}]\n", "routes[0].upstream.max_layers"},
		{"unknown route key", "routes: [{prefix: a, kind: push, forward: x}]\n", "field forward not found"},
		{"token realm not http(s)", "routes: [{prefix: a, kind: pull, upstream: {url: 'https://x', token_realms: ['ftp://auth.x/token']}}]\n", "routes[0].upstream.token_realms[0]"},
		{"token realm wildcard inside", "routes: [{prefix: a, kind: pull, upstream: {url: 'https://x', token_realms: [ok.example, 'auth*.example']}}]\n", "routes[0].upstream.token_realms[1]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestReadmeDocumentsEveryKey keeps the README's configuration reference true: every key of the
// config struct must appear there as a dotted path.
func TestReadmeDocumentsEveryKey(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range Keys() {
		if !strings.Contains(string(readme), "`"+key+"`") {
			t.Errorf("README.md does not document config key `%s`", key)
		}
	}
}

// Keys lists every configuration key as a dotted path.
func Keys() []string {
	var out []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" {
				continue
			}
			key := prefix + tag
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				walk(key+".", ft)
				continue
			}
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				walk(key+"[].", ft.Elem())
				continue
			}
			out = append(out, key)
		}
	}
	walk("", reflect.TypeOf(Config{}))
	return out
}

// TestExampleConfig keeps deploy/gatehouse.example.yaml loadable and equal to the defaults it
// claims to show.
func TestExampleConfig(t *testing.T) {
	c, err := Load("../../../deploy/gatehouse.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	if !reflect.DeepEqual(c, def) {
		t.Errorf("example config differs from the defaults:\n got %+v\nwant %+v", c, def)
	}
}
