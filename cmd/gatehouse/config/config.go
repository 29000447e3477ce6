package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/proxy/upstream"
)

// Config is the whole configuration of `gatehouse serve`.
type Config struct {
	// Listen is the address the registry listens on.
	Listen string `yaml:"listen"`
	// Data is the default home of everything that names no path of its own.
	Data string `yaml:"data"`
	// Log sets the log format and level.
	Log Log `yaml:"log"`
	// TLS, when present, serves HTTPS; absent, plain HTTP (and the log says so).
	TLS *TLS `yaml:"tls"`
	// Storage is where blob and manifest bytes are kept.
	Storage Storage `yaml:"storage"`
	// Metadata is where tags, manifests' index and referrers are kept.
	Metadata Metadata `yaml:"metadata"`
	// Limits bound what clients may send.
	Limits Limits `yaml:"limits"`
	// Uploads controls blob upload sessions.
	Uploads Uploads `yaml:"uploads"`
	// Cache sizes the in-memory caches.
	Cache Cache `yaml:"cache"`
	// Scan configures the scanning of every image that enters.
	Scan Scan `yaml:"scan"`
	// VulnDB is the local vulnerability database.
	VulnDB VulnDB `yaml:"vulndb"`
	// Admission configures the policy decision on every image.
	Admission Admission `yaml:"admission"`
	// Routes map repository names to pull-through caches of upstream registries and to hosted
	// repositories. Absent: the embedded default (see DefaultRoutes).
	Routes []Route `yaml:"routes"`
}

// Scan configures the built-in scanner and its bounds.
type Scan struct {
	Workers       int      `yaml:"workers"`         // images scanned at once (default 2)
	TempDir       string   `yaml:"temp_dir"`        // where layers are flattened while scanned (default <data>/scan-tmp)
	MaxExpanded   ByteSize `yaml:"max_expanded"`    // expanded layer bytes per image (default 16GiB)
	MaxEntries    int      `yaml:"max_entries"`     // tar entries per image (default 150000)
	MaxFileSize   ByteSize `yaml:"max_file_size"`   // larger files are not examined (default 1GiB)
	MaxPathLength int      `yaml:"max_path_length"` // longer paths are skipped (default 4096)
	Timeout       Duration `yaml:"timeout"`         // per image, extraction included; a scan still running then fails (default 10m)
	// MaxPackages bounds the packages listed per image; past it the scan is incomplete (default 20000).
	MaxPackages int `yaml:"max_packages"`
	// MaxFindings bounds the findings kept per image; past it the scan is incomplete (default 10000).
	MaxFindings int `yaml:"max_findings"`
	// MaxMetadataFile bounds the package databases, manifests and lock files that extractors read
	// whole; a larger one is not read and the scan is incomplete (default 64MiB).
	MaxMetadataFile ByteSize `yaml:"max_metadata_file"`
	// MaxNestedArchive bounds an archive inside a Java archive, written to temp_dir to be read
	// (4 times as many bytes in all per file); past it the file is not read (default 1GiB).
	MaxNestedArchive ByteSize `yaml:"max_nested_archive"`
	MalwareDigests   string   `yaml:"malware_digests"` // file of known-bad SHA-256 digests, "sha256:<hex> name" per line; EICAR is always included
	RegistryURL      string   `yaml:"registry_url"`    // how external scanners reach Gatehouse to pull what they scan (default http://<listen>)
	// FingerprintKey is the file holding this installation's key for secret fingerprints
	// (HMAC-SHA256), created with 32 random bytes on first start (default <data>/fingerprint.key)
	FingerprintKey string `yaml:"fingerprint_key"`
}

// Admission configures policy decisions and the gate that enforces them.
type Admission struct {
	Policy           string   `yaml:"policy"`              // a directory of .rego files replacing the embedded default policy
	Mode             string   `yaml:"mode"`                // enforce (serve only what is admitted) | audit (decide and record, serve everything); default enforce
	RevokeGrace      Duration `yaml:"revoke_grace"`        // a served digest that a later decision refuses is still served this long (default 0: refused at once)
	Hold             Duration `yaml:"hold"`                // how long a first request waits for its admission before 503 + Retry-After (default 60s)
	HighFixGraceDays int      `yaml:"high_fix_grace_days"` // a high vulnerability is denied once its fix is older than this (default 30)
	MaxIndexChildren int      `yaml:"max_index_children"`  // an index listing more manifests is refused (default 1024)
}

// VulnDB configures the local OSV vulnerability database.
type VulnDB struct {
	Path    string   `yaml:"path"`    // default <data>/vulndb.sqlite
	MaxAge  Duration `yaml:"max_age"` // older than this, the database is reported stale (default 72h)
	Recheck Duration `yaml:"recheck"` // how often the server looks for a newly imported database (default 30s)
	// Sources are where the database is built from, in order: an http(s) URL of an archive
	// (ending .zip or .json), an http(s) base URL in OSV's bucket layout (<base>/<Ecosystem>/all.zip
	// for each of Ecosystems), or a local zip, JSON file or directory. Default: OSV's public bucket.
	Sources    []string `yaml:"sources"`
	Ecosystems []string `yaml:"ecosystems"` // the ecosystems of bucket sources (default: every one the built-in scanner inventories)
	Cache      string   `yaml:"cache"`      // where the sources' archives and their state are kept (default <data>/vulndb-sources)
	// UpdateInterval is how often the server updates the database from its sources (default 6h;
	// 0: never, only `gatehouse db update`). A server that starts with no database updates at once.
	UpdateInterval *Duration `yaml:"update_interval"`
	// Stall cuts a source download that brings no byte for this long (default 1m).
	Stall Duration `yaml:"stall"`
}

// Route is one route: a path prefix (also the containerd ?ns= value of a pull route) and what
// serves the names under it.
type Route struct {
	Prefix string `yaml:"prefix"` // "" on a push route: every name no other route claims
	Kind   string `yaml:"kind"`   // pull | push
	// Upstream is the registry a pull route caches.
	Upstream *Upstream `yaml:"upstream"`
	// LibraryNamespace maps one-component names to library/<name> (Docker Hub's official
	// images). Default: true for the docker.io prefix.
	LibraryNamespace *bool    `yaml:"library_namespace"`
	Allow            []string `yaml:"allow"`     // upstream repository globs allowed ("*" in a component, "**" across); empty: all
	Deny             []string `yaml:"deny"`      // globs refused, even if allowed
	TagTTL           Duration `yaml:"tag_ttl"`   // serve a cached tag this long before revalidating (default 10m)
	MaxStale         Duration `yaml:"max_stale"` // serve a cached tag this long past its TTL while the upstream cannot answer (default 24h)
	// Scanner replaces the built-in scanner for this route's images (absent: built-in).
	Scanner *RouteScanner `yaml:"scanner"`
	// AdmissionMode overrides admission.mode for this route (enforce | audit).
	AdmissionMode string `yaml:"admission_mode"`
	// TagFallback "last-admitted": on a pull route, a tag whose new upstream digest is pending or
	// refused keeps serving the digest it last served admitted ("": refuse).
	TagFallback string `yaml:"tag_fallback"`
	// Policy is a directory of .rego files that decides this route's images instead of admission.policy.
	Policy string `yaml:"policy"`
}

// RouteScanner selects an external scanner.
type RouteScanner struct {
	Harbor *HarborScanner `yaml:"harbor"` // a Harbor pluggable scanner adapter (API v1.1), e.g. Trivy's or Clair's
}

// HarborScanner is a scanner adapter.
type HarborScanner struct {
	URL               string `yaml:"url"`                // the adapter's base URL
	AuthorizationFile string `yaml:"authorization_file"` // file holding the Authorization header value for the adapter ("Bearer ...")
}

// Upstream is a registry a pull route caches.
type Upstream struct {
	URL         string       `yaml:"url"`         // https://host[:port] (http:// for a plain-HTTP registry)
	Credentials *Credentials `yaml:"credentials"` // absent: anonymous
	TLS         *UpstreamTLS `yaml:"tls"`
	Timeout     Duration     `yaml:"timeout"` // connect and response-header timeout, and the longest a blob may stall (default 30s)
	// MinRate is the bytes a second a blob must average: one of S bytes has timeout + S/min_rate
	// to arrive in all, so a drip ends (default 64KiB).
	MinRate ByteSize `yaml:"min_rate"`
	// MaxLayers refuses an image manifest from this upstream that lists more layers (default 1024).
	MaxLayers int `yaml:"max_layers"`
	// TokenRealms are the token realms, besides the registry's own host, that may receive token
	// requests and the route's credentials: realm URLs or hosts ("*.pkg.dev" for every name
	// under a domain). A challenge naming any other realm fails the pull.
	TokenRealms []string `yaml:"token_realms"`
}

// Credentials are read from a file, never written inline.
type Credentials struct {
	File         string `yaml:"file"`          // JSON {"username": ..., "password": ...} or {"token": ...}
	DockerConfig string `yaml:"docker_config"` // a Docker config.json; the entry for the upstream's host is used
}

// UpstreamTLS configures HTTPS to an upstream.
type UpstreamTLS struct {
	CA                 string `yaml:"ca"`                   // PEM bundle trusted in addition to the system roots
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"` // do not verify the upstream's certificate (tests only)
}

// DefaultRoutes are the routes of the embedded default: pull-through caches of the public
// registries people pull from most, and a hosted route for every other name.
// Each lists the token realms its registry's challenges name: Docker Hub's is on another host;
// registry.k8s.io redirects to Artifact Registry's regional hosts (us-west1-docker.pkg.dev, …),
// which challenge with their own /v2/token.
func DefaultRoutes() []Route {
	pull := func(prefix, url string, realms ...string) Route {
		return Route{Prefix: prefix, Kind: "pull", Upstream: &Upstream{URL: url, TokenRealms: realms}}
	}
	return []Route{
		pull("docker.io", "https://registry-1.docker.io", "https://auth.docker.io/token"),
		pull("ghcr.io", "https://ghcr.io", "https://ghcr.io/token"),
		pull("quay.io", "https://quay.io", "https://quay.io/v2/auth"),
		pull("registry.k8s.io", "https://registry.k8s.io", "https://*.pkg.dev/v2/token"),
		{Prefix: "", Kind: "push"},
	}
}

// Log configures logging.
type Log struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// TLS configures HTTPS.
type TLS struct {
	Cert     string `yaml:"cert"`      // PEM certificate chain
	Key      string `yaml:"key"`       // PEM private key
	ClientCA string `yaml:"client_ca"` // when set, clients must present a certificate signed by this CA
}

// Storage selects a distribution/v3 storage driver and its settings.
type Storage struct {
	Driver     string            `yaml:"driver"`     // filesystem | inmemory
	Delete     bool              `yaml:"delete"`     // allow manifest, tag and blob deletion
	Redirect   bool              `yaml:"redirect"`   // send blob GETs to the driver's direct URL when it has one
	Filesystem FilesystemStorage `yaml:"filesystem"` // settings of the filesystem driver
}

// FilesystemStorage configures the filesystem driver.
type FilesystemStorage struct {
	Root       string `yaml:"root"`        // default: <data>/content
	MaxThreads int    `yaml:"max_threads"` // concurrent filesystem operations (default 100)
}

// Metadata selects the metadata store.
type Metadata struct {
	Driver string `yaml:"driver"` // sqlite
	SQLite SQLite `yaml:"sqlite"`
}

// SQLite configures the embedded metadata store.
type SQLite struct {
	Path string `yaml:"path"` // default: <data>/meta.db
}

// Limits bound requests.
type Limits struct {
	ManifestSize     ByteSize `yaml:"manifest_size"`     // largest manifest body accepted (default 4MiB)
	NameLength       int      `yaml:"name_length"`       // longest repository name (default 255)
	DigestAlgorithms []string `yaml:"digest_algorithms"` // accepted digest algorithms (default sha256, sha512)
	BlobSize         ByteSize `yaml:"blob_size"`         // largest blob an upload may make (default 0: no limit)
	BodyIdleTimeout  Duration `yaml:"body_idle_timeout"` // a request body or response that moves no byte this long is cut (default 1m)
	BodyMinRate      ByteSize `yaml:"body_min_rate"`     // bytes a second a request body must average once body_idle_timeout has passed (default 1KiB)
}

// Uploads configures upload sessions.
type Uploads struct {
	Expiry        Duration `yaml:"expiry"`         // a session older than this is refused and purged (default 24h)
	PurgeInterval Duration `yaml:"purge_interval"` // how often expired sessions are deleted (default 1h)

	// Caps on the sessions open at once (a POST past one gets 429 TOOMANYREQUESTS), and the
	// idle timeout that frees a slot a client forgot.
	MaxSessions              int      `yaml:"max_sessions"`                // in all (default 1000)
	MaxSessionsPerRepository int      `yaml:"max_sessions_per_repository"` // in one repository (default 100)
	IdleTimeout              Duration `yaml:"idle_timeout"`                // a session with no PATCH or PUT this long is closed and its bytes removed (default 10m)
}

// Cache sizes in-memory caches.
type Cache struct {
	Manifests *int `yaml:"manifests"` // manifests kept in memory for the pull path (default 8192; 0 turns it off)
}

// Default returns the embedded default configuration.
func Default() Config {
	c := Config{}
	c.applyDefaults()
	return c
}

// Load reads a configuration file strictly and completes it with defaults.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML strictly (unknown keys are errors), applies defaults and validates.
func Parse(b []byte) (Config, error) { return ParseWithOverrides(b, Overrides{}) }

// applyDefaults fills what the file left out.
func (c *Config) applyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Listen, "127.0.0.1:5000")
	def(&c.Data, "./data")
	def(&c.Log.Format, "text")
	def(&c.Log.Level, "info")
	def(&c.Storage.Driver, "filesystem")
	def(&c.Storage.Filesystem.Root, filepath.Join(c.Data, "content"))
	if c.Storage.Filesystem.MaxThreads == 0 {
		c.Storage.Filesystem.MaxThreads = 100
	}
	def(&c.Metadata.Driver, "sqlite")
	def(&c.Metadata.SQLite.Path, filepath.Join(c.Data, "meta.db"))
	if c.Limits.ManifestSize == 0 {
		c.Limits.ManifestSize = 4 << 20
	}
	if c.Limits.NameLength == 0 {
		c.Limits.NameLength = 255
	}
	if len(c.Limits.DigestAlgorithms) == 0 {
		c.Limits.DigestAlgorithms = []string{"sha256", "sha512"}
	}
	if c.Uploads.Expiry == 0 {
		c.Uploads.Expiry = Duration(24 * time.Hour)
	}
	if c.Uploads.PurgeInterval == 0 {
		c.Uploads.PurgeInterval = Duration(time.Hour)
	}
	if c.Uploads.MaxSessions == 0 {
		c.Uploads.MaxSessions = 1000
	}
	if c.Uploads.MaxSessionsPerRepository == 0 {
		c.Uploads.MaxSessionsPerRepository = 100
	}
	if c.Uploads.IdleTimeout == 0 {
		c.Uploads.IdleTimeout = min(Duration(10*time.Minute), c.Uploads.Expiry)
	}
	if c.Limits.BodyIdleTimeout == 0 {
		c.Limits.BodyIdleTimeout = Duration(time.Minute)
	}
	if c.Limits.BodyMinRate == 0 {
		c.Limits.BodyMinRate = 1 << 10
	}
	if c.Cache.Manifests == nil {
		n := 8192
		c.Cache.Manifests = &n
	}
	if c.Scan.Workers == 0 {
		c.Scan.Workers = 2
	}
	def(&c.Scan.TempDir, filepath.Join(c.Data, "scan-tmp"))
	def(&c.Scan.FingerprintKey, filepath.Join(c.Data, "fingerprint.key"))
	if c.Scan.MaxExpanded == 0 {
		c.Scan.MaxExpanded = 16 << 30
	}
	if c.Scan.MaxEntries == 0 {
		c.Scan.MaxEntries = 150_000
	}
	if c.Scan.MaxFileSize == 0 {
		c.Scan.MaxFileSize = 1 << 30
	}
	if c.Scan.MaxPackages == 0 {
		c.Scan.MaxPackages = 20_000
	}
	if c.Scan.MaxFindings == 0 {
		c.Scan.MaxFindings = 10_000
	}
	if c.Scan.MaxMetadataFile == 0 {
		c.Scan.MaxMetadataFile = 64 << 20
	}
	if c.Scan.MaxNestedArchive == 0 {
		c.Scan.MaxNestedArchive = 1 << 30
	}
	if c.Scan.MaxPathLength == 0 {
		c.Scan.MaxPathLength = 4096
	}
	if c.Scan.Timeout == 0 {
		c.Scan.Timeout = Duration(10 * time.Minute)
	}
	def(&c.Scan.RegistryURL, "http://"+c.Listen)
	def(&c.VulnDB.Path, filepath.Join(c.Data, "vulndb.sqlite"))
	def(&c.Admission.Mode, "enforce")
	if c.Admission.Hold == 0 {
		c.Admission.Hold = Duration(60 * time.Second)
	}
	if c.Admission.MaxIndexChildren == 0 {
		c.Admission.MaxIndexChildren = 1024
	}
	if c.Admission.HighFixGraceDays == 0 {
		c.Admission.HighFixGraceDays = 30
	}
	if c.VulnDB.MaxAge == 0 {
		c.VulnDB.MaxAge = Duration(72 * time.Hour)
	}
	if c.VulnDB.Recheck == 0 {
		c.VulnDB.Recheck = Duration(30 * time.Second)
	}
	if c.VulnDB.Sources == nil {
		c.VulnDB.Sources = []string{vulndb.OSVBucket}
	}
	if c.VulnDB.Ecosystems == nil {
		c.VulnDB.Ecosystems = slices.Clone(vulndb.Ecosystems)
	}
	def(&c.VulnDB.Cache, filepath.Join(c.Data, "vulndb-sources"))
	if c.VulnDB.UpdateInterval == nil {
		d := Duration(6 * time.Hour)
		c.VulnDB.UpdateInterval = &d
	}
	if c.VulnDB.Stall == 0 {
		c.VulnDB.Stall = Duration(time.Minute)
	}
	if c.Routes == nil {
		c.Routes = DefaultRoutes()
	}
	for i := range c.Routes {
		r := &c.Routes[i]
		if r.Kind != "pull" {
			continue
		}
		if r.LibraryNamespace == nil {
			lib := r.Prefix == "docker.io"
			r.LibraryNamespace = &lib
		}
		if r.TagTTL == 0 {
			r.TagTTL = Duration(10 * time.Minute)
		}
		if r.MaxStale == 0 {
			r.MaxStale = Duration(24 * time.Hour)
		}
		if r.Upstream != nil && r.Upstream.Timeout == 0 {
			r.Upstream.Timeout = Duration(30 * time.Second)
		}
		if r.Upstream != nil && r.Upstream.MinRate == 0 {
			r.Upstream.MinRate = 64 << 10
		}
		if r.Upstream != nil && r.Upstream.MaxLayers == 0 {
			r.Upstream.MaxLayers = 1024
		}
	}
}

// Validate reports every problem, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	oneOf := func(key, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		bad(key, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
	if _, _, err := splitHostPort(c.Listen); err != nil {
		bad("listen", "%v", err)
	}
	oneOf("log.format", c.Log.Format, "text", "json")
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	if c.TLS != nil {
		if c.TLS.Cert == "" || c.TLS.Key == "" {
			bad("tls", "cert and key are both required when tls is present")
		}
	}
	oneOf("storage.driver", c.Storage.Driver, "filesystem", "inmemory")
	if c.Storage.Filesystem.MaxThreads < 25 {
		bad("storage.filesystem.max_threads", "must be at least 25 (distribution's minimum), got %d", c.Storage.Filesystem.MaxThreads)
	}
	oneOf("metadata.driver", c.Metadata.Driver, "sqlite")
	if c.Limits.ManifestSize < 1024 {
		bad("limits.manifest_size", "must be at least 1KiB, got %d bytes", c.Limits.ManifestSize)
	}
	if c.Limits.NameLength < 1 || c.Limits.NameLength > 4096 {
		bad("limits.name_length", "must be between 1 and 4096, got %d", c.Limits.NameLength)
	}
	for _, a := range c.Limits.DigestAlgorithms {
		oneOf("limits.digest_algorithms", a, "sha256", "sha512")
	}
	if c.Uploads.Expiry < Duration(time.Minute) {
		bad("uploads.expiry", "must be at least 1m, got %s", c.Uploads.Expiry)
	}
	if c.Uploads.PurgeInterval < Duration(time.Second) {
		bad("uploads.purge_interval", "must be at least 1s, got %s", c.Uploads.PurgeInterval)
	}
	if c.Uploads.MaxSessions < 1 {
		bad("uploads.max_sessions", "must be at least 1, got %d", c.Uploads.MaxSessions)
	}
	if n := c.Uploads.MaxSessionsPerRepository; n < 1 || n > c.Uploads.MaxSessions {
		bad("uploads.max_sessions_per_repository", "must be between 1 and uploads.max_sessions (%d), got %d", c.Uploads.MaxSessions, n)
	}
	if c.Uploads.IdleTimeout < Duration(time.Second) || c.Uploads.IdleTimeout > c.Uploads.Expiry {
		bad("uploads.idle_timeout", "must be between 1s and uploads.expiry (%s), got %s", c.Uploads.Expiry, c.Uploads.IdleTimeout)
	}
	if c.Limits.BodyIdleTimeout < Duration(time.Second) {
		bad("limits.body_idle_timeout", "must be at least 1s, got %s", c.Limits.BodyIdleTimeout)
	}
	if *c.Cache.Manifests < 0 {
		bad("cache.manifests", "must not be negative")
	}
	if c.Scan.Workers < 1 || c.Scan.Workers > 64 {
		bad("scan.workers", "must be between 1 and 64, got %d", c.Scan.Workers)
	}
	if c.Scan.MaxExpanded < 1<<20 {
		bad("scan.max_expanded", "must be at least 1MiB")
	}
	if c.Scan.MaxPackages < 1 {
		bad("scan.max_packages", "must be at least 1, got %d", c.Scan.MaxPackages)
	}
	if c.Scan.MaxFindings < 2 {
		bad("scan.max_findings", "must be at least 2, got %d", c.Scan.MaxFindings)
	}
	if c.Scan.MaxMetadataFile < 1<<20 {
		bad("scan.max_metadata_file", "must be at least 1MiB")
	}
	if c.Scan.MaxNestedArchive < 1<<20 {
		bad("scan.max_nested_archive", "must be at least 1MiB")
	}
	if c.Scan.Timeout < Duration(time.Second) {
		bad("scan.timeout", "must be at least 1s")
	}
	if c.Admission.Mode != "enforce" && c.Admission.Mode != "audit" {
		bad("admission.mode", "must be enforce or audit, got %q", c.Admission.Mode)
	}
	if c.Admission.RevokeGrace < 0 {
		bad("admission.revoke_grace", "must not be negative")
	}
	if c.Admission.Hold < Duration(100*time.Millisecond) {
		bad("admission.hold", "must be at least 100ms")
	}
	if c.Admission.MaxIndexChildren < 0 {
		bad("admission.max_index_children", "must not be negative")
	}
	if c.Admission.HighFixGraceDays < 0 {
		bad("admission.high_fix_grace_days", "must not be negative")
	}
	if c.VulnDB.Recheck < Duration(100*time.Millisecond) {
		bad("vulndb.recheck", "must be at least 100ms")
	}
	if i := *c.VulnDB.UpdateInterval; i != 0 && i < Duration(time.Minute) {
		bad("vulndb.update_interval", "must be 0 (off) or at least 1m")
	}
	for i, src := range c.VulnDB.Sources {
		if strings.TrimSpace(src) == "" {
			bad(fmt.Sprintf("vulndb.sources[%d]", i), "must not be empty")
		}
	}
	prefixes := map[string]int{}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if m := r.AdmissionMode; m != "" && m != "enforce" && m != "audit" {
			bad(key+".admission_mode", "must be enforce or audit, got %q", m)
		}
		switch {
		case r.TagFallback != "" && r.TagFallback != "last-admitted":
			bad(key+".tag_fallback", "must be last-admitted or empty, got %q", r.TagFallback)
		case r.TagFallback != "" && r.Kind != "pull":
			bad(key+".tag_fallback", "applies to pull routes only (a pushed tag moves only when someone pushes it)")
		}
		if j, dup := prefixes[r.Prefix]; dup {
			bad(key+".prefix", "%q is also the prefix of routes[%d]", r.Prefix, j)
		}
		prefixes[r.Prefix] = i
		if strings.HasPrefix(r.Prefix, "/") || strings.HasSuffix(r.Prefix, "/") || strings.ContainsAny(r.Prefix, ":@ ") {
			bad(key+".prefix", "%q must be a repository path prefix (no leading or trailing '/', no ':', '@' or spaces)", r.Prefix)
		}
		if r.Scanner != nil && (r.Scanner.Harbor == nil || r.Scanner.Harbor.URL == "") {
			bad(key+".scanner", "name an external scanner: scanner: {harbor: {url: ...}}")
		}
		switch r.Kind {
		case "pull":
			if r.Prefix == "" {
				bad(key+".prefix", "a pull route needs a prefix (a catch-all pull route would send every name upstream)")
			}
			if r.Upstream == nil || r.Upstream.URL == "" {
				bad(key+".upstream.url", "a pull route needs an upstream url")
				continue
			}
			if !strings.HasPrefix(r.Upstream.URL, "https://") && !strings.HasPrefix(r.Upstream.URL, "http://") {
				bad(key+".upstream.url", "%q must start with https:// (or http:// for a plain-HTTP registry)", r.Upstream.URL)
			}
			if cr := r.Upstream.Credentials; cr != nil && (cr.File == "") == (cr.DockerConfig == "") {
				bad(key+".upstream.credentials", "give exactly one of file and docker_config")
			}
			if r.Upstream.Timeout < Duration(time.Second) {
				bad(key+".upstream.timeout", "must be at least 1s, got %s", r.Upstream.Timeout)
			}
			for j, realm := range r.Upstream.TokenRealms {
				if err := upstream.ValidRealm(realm); err != nil {
					bad(fmt.Sprintf("%s.upstream.token_realms[%d]", key, j), "%v", err)
				}
			}
			if r.Upstream.MinRate < 1<<10 {
				bad(key+".upstream.min_rate", "must be at least 1KiB (a second), got %d bytes", r.Upstream.MinRate)
			}
			if r.Upstream.MaxLayers < 1 {
				bad(key+".upstream.max_layers", "must be at least 1, got %d", r.Upstream.MaxLayers)
			}
		case "push":
			if r.Upstream != nil {
				bad(key+".upstream", "a push route has no upstream")
			}
			if len(r.Allow) > 0 || len(r.Deny) > 0 || r.TagTTL != 0 || r.MaxStale != 0 || r.LibraryNamespace != nil {
				bad(key, "allow, deny, tag_ttl, max_stale and library_namespace apply to pull routes only")
			}
		default:
			bad(key+".kind", "%q is not pull or push", r.Kind)
		}
	}
	return errors.Join(errs...)
}

func splitHostPort(addr string) (string, int, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", 0, fmt.Errorf("%q is not host:port", addr)
	}
	port, err := strconv.Atoi(addr[i+1:])
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q has no valid port", addr)
	}
	return addr[:i], port, nil
}

// Duration is a Go duration written as a string ("90s", "10m").
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a Go duration such as 90s or 10m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// ByteSize is a size in bytes, written as a number or with a unit (512KiB, 4MiB, 1GB).
type ByteSize int64

var units = []struct {
	suffix string
	mult   int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

// UnmarshalYAML parses a size.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// ParseByteSize parses "4194304", "4MiB", "512KiB", "1GB".
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size such as 4194304, 512KiB or 4MiB", s)
	}
	return ByteSize(n * mult), nil
}

// Overrides are command-line settings that take precedence over the file.
type Overrides struct {
	Listen, Data, LogFormat, LogLevel string
}

// ParseWithOverrides is Parse with command-line overrides applied before defaults, so that
// --data also moves every path that defaults under it.
func ParseWithOverrides(b []byte, o Overrides) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&c.Listen, o.Listen)
	set(&c.Data, o.Data)
	set(&c.Log.Format, o.LogFormat)
	set(&c.Log.Level, o.LogLevel)
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
