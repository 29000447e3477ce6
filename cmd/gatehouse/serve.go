package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"

	"github.com/gatehouse-dev/gatehouse/attest/harbor"
	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/cmd/gatehouse/config"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/admission"
	"github.com/gatehouse-dev/gatehouse/proxy/api"
	"github.com/gatehouse-dev/gatehouse/proxy/gate"
	"github.com/gatehouse-dev/gatehouse/proxy/pull"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/proxy/scanning"
	"github.com/gatehouse-dev/gatehouse/proxy/upstream"
	"github.com/gatehouse-dev/gatehouse/storage/content"
	"github.com/gatehouse-dev/gatehouse/storage/meta/sqlite"
)

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// logrusToSlog forwards distribution's own logrus errors into our log and drops its chatter.
type logrusToSlog struct{ log *slog.Logger }

func (h logrusToSlog) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel}
}

func (h logrusToSlog) Fire(e *logrus.Entry) error {
	h.log.Debug("storage: "+e.Message, "component", "distribution")
	return nil
}

func newDriver(ctx context.Context, s config.Storage) (storagedriver.StorageDriver, error) {
	switch s.Driver {
	case "filesystem":
		if err := os.MkdirAll(s.Filesystem.Root, 0o750); err != nil {
			return nil, fmt.Errorf("storage.filesystem.root: %w", err)
		}
		return factory.Create(ctx, "filesystem", map[string]any{
			"rootdirectory": s.Filesystem.Root,
			"maxthreads":    s.Filesystem.MaxThreads,
		})
	case "inmemory":
		return factory.Create(ctx, "inmemory", nil)
	}
	return nil, fmt.Errorf("storage.driver %q is not built in", s.Driver)
}

// serve runs the server until ctx ends: it builds the parts from the configuration, evaluates
// again what a changed policy must, and serves.
func serve(ctx context.Context, cfg config.Config, cfgPath string, stderr io.Writer) error {
	log := newLogger(cfg.Log, stderr)
	logrus.SetOutput(io.Discard)
	logrus.AddHook(logrusToSlog{log})
	if cfgPath == "" {
		log.Info("no --config given: running on the embedded default", "data", cfg.Data)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p, err := build(ctx, cfg, reg, log)
	if err != nil {
		return err
	}
	defer p.close()
	// a policy changed since the last run: evaluate stored verdicts again from stored evidence before
	// serving, so no verdict of the old policy is served under the new one
	start := time.Now()
	if n, err := p.pipeline.Reevaluate(ctx); err != nil {
		return fmt.Errorf("re-evaluating stored verdicts under the current policy: %w", err)
	} else if n > 0 {
		log.Info("verdicts evaluated again under the current policy", "count", n, "took", time.Since(start).Round(time.Millisecond))
	}
	gt, err := gate.New(gate.Config{Hold: time.Duration(cfg.Admission.Hold), RevokeGrace: time.Duration(cfg.Admission.RevokeGrace)}, p.meta, p.content, p.pipeline, log, reg)
	if err != nil {
		return err
	}
	feed := newFeed(cfg, nil)
	vulndbMetrics(reg, p.vulndb, feed)
	handler, err := newAPI(cfg, p, gt, feed, reg, log)
	if err != nil {
		return err
	}
	bg, stopBackground := context.WithCancel(ctx)
	defer stopBackground()
	if every := time.Duration(*cfg.VulnDB.UpdateInterval); every > 0 {
		p.pipeline.Feed, p.pipeline.DBWait = feed, time.Duration(cfg.Admission.Hold)/2
		feed.Start(bg, every, log)
	}
	go p.pipeline.Watch(bg, gt, time.Duration(cfg.VulnDB.Recheck))
	go handler.PurgeUploads(bg, time.Duration(cfg.Uploads.PurgeInterval))

	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	// a shutdown answers requests held for an admission at once (503, retry) instead of waiting
	// out admission.hold past the shutdown deadline
	srv.RegisterOnShutdown(gt.Release)
	ln, err := listen(cfg, log)
	if err != nil {
		return err
	}
	log.Info("gatehouse ready", "addr", ln.Addr().String(), "storage", cfg.Storage.Driver, "metadata", cfg.Metadata.Driver, "delete", cfg.Storage.Delete)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests (30s at most)")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	gt.Wait() // admissions stopped by the shutdown end before the metadata store closes
	p.puller.Close(10 * time.Second)
	log.Info("stopped")
	return nil
}

// parts are what serve and policy eval build from the configuration: the stores, the routes
// (each with its admission settings) and admission itself.
type parts struct {
	content  *content.Store
	meta     *sqlite.Store
	vulndb   *vulndb.DB
	routes   *route.Table
	puller   *pull.Puller
	pipeline *admission.Pipeline
}

func (p *parts) close() {
	p.vulndb.Close()
	p.meta.Close()
}

// build opens the stores and builds the routes and admission (reg may be nil: no metrics).
func build(ctx context.Context, cfg config.Config, reg prometheus.Registerer, log *slog.Logger) (*parts, error) {
	driver, err := newDriver(ctx, cfg.Storage)
	if err != nil {
		return nil, err
	}
	store, err := content.New(ctx, driver, content.WithDelete(cfg.Storage.Delete), content.WithRedirect(cfg.Storage.Redirect))
	if err != nil {
		return nil, err
	}
	md, err := sqlite.Open(ctx, cfg.Metadata.SQLite.Path)
	if err != nil {
		return nil, err
	}
	p := &parts{content: store, meta: md, vulndb: vulndb.Open(cfg.VulnDB.Path)}
	if err := p.admission(ctx, cfg, reg, log); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// admission builds the routes, the fill, the scanners and the pipeline.
func (p *parts) admission(ctx context.Context, cfg config.Config, reg prometheus.Registerer, log *slog.Logger) error {
	pullMetrics := pull.NewMetrics(reg)
	table, upstreams, err := buildRoutes(ctx, cfg, pullMetrics, log)
	if err != nil {
		return err
	}
	p.routes = table
	opts := []pull.Option{pull.WithLogger(log), pull.WithDigestAlgorithms(digestAlgorithms(cfg)...), pull.WithMetrics(pullMetrics),
		pull.WithMaxBlobSize(int64(cfg.Limits.BlobSize))}
	for _, rc := range cfg.Routes {
		if rc.Kind == "pull" {
			opts = append(opts, pull.WithUpstreamLimits(rc.Prefix, pull.UpstreamLimits{Grace: time.Duration(rc.Upstream.Timeout),
				MinRate: int64(rc.Upstream.MinRate), MaxLayers: rc.Upstream.MaxLayers}))
		}
	}
	p.puller = pull.New(p.content, p.meta, upstreams, opts...)
	scanner, err := newScanner(cfg.Scan)
	if err != nil {
		return err
	}
	if scanner.FingerprintKey, err = fingerprintKey(cfg.Scan.FingerprintKey, log); err != nil {
		return fmt.Errorf("scan.fingerprint_key: %w", err)
	}
	inventory.SetLogger(log)
	if n, err := scanning.RemoveStaleTrees(scanner.TempDir); err != nil {
		return fmt.Errorf("scan.temp_dir: removing the scan trees a previous run left: %w", err)
	} else if n > 0 {
		log.Info("removed the scan trees a previous run left (it stopped mid-scan); those images are scanned again when asked for", "count", n, "dir", scanner.TempDir)
	}
	scans := scanning.New(p.content, p.meta, scanner, p.vulndb, p.puller, log, scanning.NewMetrics(reg), cfg.Scan.Workers)
	scans.RegistryURL = cfg.Scan.RegistryURL
	revoked := prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_verdicts_revoked_total",
		Help: "Admitted digests that a later verdict (a new advisory, a policy change) quarantined."})
	if reg != nil {
		reg.MustRegister(revoked)
	}
	p.pipeline = &admission.Pipeline{Content: p.content, Meta: p.meta, Fill: p.puller, Scans: scans, DB: p.vulndb, Routes: table,
		Settings: policies.Settings{HighFixGraceDays: cfg.Admission.HighFixGraceDays}, MaxAge: time.Duration(cfg.VulnDB.MaxAge),
		MaxIndexChildren: cfg.Admission.MaxIndexChildren, Revoked: revoked, Log: log}
	if info, err := p.vulndb.Info(); err != nil {
		log.Warn("no vulnerability database yet: images are scanned but not matched (and refused) until one is in place; it is fetched from vulndb.sources at start unless vulndb.update_interval is 0, or `gatehouse db update` fetches it", "path", cfg.VulnDB.Path)
	} else {
		log.Info("vulnerability database", "version", info.Version, "records", info.Records, "age", info.Age(time.Now()).Round(time.Minute))
	}
	return nil
}

// newAPI builds the HTTP handler.
func newAPI(cfg config.Config, p *parts, gt *gate.Gate, feed *vulndb.Feed, reg *prometheus.Registry, log *slog.Logger) (*api.Handler, error) {
	return api.New(p.content, p.meta,
		api.WithRoutes(p.routes),
		api.WithPuller(p.puller),
		api.WithGate(gt),
		api.WithReports(p.meta, p.vulndb, feed, time.Duration(cfg.VulnDB.MaxAge)),
		api.WithLogger(log),
		api.WithMaxManifestSize(int64(cfg.Limits.ManifestSize)),
		api.WithMaxNameLength(cfg.Limits.NameLength),
		api.WithDigestAlgorithms(digestAlgorithms(cfg)...),
		api.WithDelete(cfg.Storage.Delete),
		api.WithUploadExpiry(time.Duration(cfg.Uploads.Expiry)),
		api.WithUploadSessions(cfg.Uploads.MaxSessions, cfg.Uploads.MaxSessionsPerRepository, time.Duration(cfg.Uploads.IdleTimeout)),
		api.WithMaxBlobSize(int64(cfg.Limits.BlobSize)),
		api.WithBodyTimeouts(time.Duration(cfg.Limits.BodyIdleTimeout), int64(cfg.Limits.BodyMinRate)),
		api.WithManifestCache(*cfg.Cache.Manifests),
		api.WithMetricsRegistry(reg),
	)
}

// vulndbMetrics exposes the database's age and size and how its last update went.
func vulndbMetrics(reg prometheus.Registerer, db *vulndb.DB, feed *vulndb.Feed) {
	info := func(f func(vulndb.Info) float64) func() float64 {
		return func() float64 {
			i, err := db.Info()
			if err != nil {
				return 0
			}
			return f(i)
		}
	}
	last := func(f func(*vulndb.UpdateOutcome) float64) func() float64 {
		return func() float64 {
			if o := feed.LastUpdate(); o != nil {
				return f(o)
			}
			return 0
		}
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gatehouse_vulndb_age_seconds", Help: "Age of the vulnerability database in place (since its newest record); 0 without one."},
			info(func(i vulndb.Info) float64 { return i.Age(time.Now()).Seconds() })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gatehouse_vulndb_records", Help: "OSV records in the vulnerability database in place."},
			info(func(i vulndb.Info) float64 { return float64(i.Records) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gatehouse_vulndb_last_update_success", Help: "1 when the last background update of the database worked, 0 when it failed or none ran."},
			last(func(o *vulndb.UpdateOutcome) float64 {
				if o.Err == "" {
					return 1
				}
				return 0
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gatehouse_vulndb_last_update_seconds", Help: "How long the last background update of the database took."},
			last(func(o *vulndb.UpdateOutcome) float64 { return o.Took.Seconds() })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "gatehouse_vulndb_last_update_timestamp_seconds", Help: "When the last background update of the database ended (Unix time)."},
			last(func(o *vulndb.UpdateOutcome) float64 { return float64(o.At.Unix()) })),
	)
}

func digestAlgorithms(cfg config.Config) []digest.Algorithm {
	algs := make([]digest.Algorithm, len(cfg.Limits.DigestAlgorithms))
	for i, a := range cfg.Limits.DigestAlgorithms {
		algs[i] = digest.Algorithm(a)
	}
	return algs
}

// listen opens the listener: TLS when configured, and every response the client stops taking
// cut after limits.body_idle_timeout without progress.
func listen(cfg config.Config, log *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	ln = api.WatchWrites(ln, time.Duration(cfg.Limits.BodyIdleTimeout))
	if cfg.TLS == nil {
		log.Warn("serving plain HTTP (no tls: in the config); clients must be told the registry is insecure", "addr", ln.Addr().String())
		return ln, nil
	}
	tc, err := tlsConfig(cfg.TLS)
	if err != nil {
		ln.Close()
		return nil, err
	}
	log.Info("serving HTTPS", "addr", ln.Addr().String(), "client_ca", cfg.TLS.ClientCA != "")
	return tls.NewListener(ln, tc), nil
}

// newScanner builds the built-in scanner from its configuration.
func newScanner(c config.Scan) (*scan.Scanner, error) {
	if err := os.MkdirAll(c.TempDir, 0o750); err != nil {
		return nil, fmt.Errorf("scan.temp_dir: %w", err)
	}
	s := &scan.Scanner{TempDir: c.TempDir, Limits: layerfs.Limits{
		MaxBytes: int64(c.MaxExpanded), MaxEntries: c.MaxEntries, MaxFileSize: int64(c.MaxFileSize),
		MaxPathLen: c.MaxPathLength, Timeout: time.Duration(c.Timeout),
	}, Extract: inventory.Limits{
		MaxPackages: c.MaxPackages, MaxMetadataFile: int64(c.MaxMetadataFile), MaxNestedArchive: int64(c.MaxNestedArchive),
	}, MaxFindings: c.MaxFindings}
	if c.MalwareDigests != "" {
		m, err := scan.LoadDigestList(c.MalwareDigests)
		if err != nil {
			return nil, fmt.Errorf("scan.malware_digests: %w", err)
		}
		s.Malware = m
	}
	return s, nil
}

// buildRoutes turns the configured routes into the route table, each route with its admission
// settings (mode, tag fallback, policy, scanner), and one upstream client per pull route.
func buildRoutes(ctx context.Context, cfg config.Config, m *pull.Metrics, log *slog.Logger) (*route.Table, map[string]pull.Upstream, error) {
	def, own := loadPolicies(ctx, cfg)
	if err := policyErrors(def, own); err != nil {
		log.Error("a policy does not compile: nothing new is admitted under it until it is fixed (already admitted images are still served)", "err", err)
	} else {
		log.Info("admission policy", "source", def.Source, "policy", def.Engine.Digest())
	}
	var routes []route.Route
	upstreams := map[string]pull.Upstream{}
	for i, rc := range cfg.Routes {
		r := route.Route{Prefix: rc.Prefix, Kind: route.Kind(rc.Kind), Allow: rc.Allow, Deny: rc.Deny,
			TagTTL: time.Duration(rc.TagTTL), MaxStale: time.Duration(rc.MaxStale),
			Admission: route.Admission{Mode: route.Mode(cfg.Admission.Mode), TagFallback: rc.TagFallback == "last-admitted", Policy: &def}}
		if rc.LibraryNamespace != nil {
			r.LibraryNamespace = *rc.LibraryNamespace
		}
		if rc.AdmissionMode != "" {
			r.Admission.Mode = route.Mode(rc.AdmissionMode)
		}
		if b, ok := own[rc.Prefix]; ok {
			r.Admission.Policy = &b
		}
		if rc.Scanner != nil && rc.Scanner.Harbor != nil {
			ext := &harbor.Client{URL: rc.Scanner.Harbor.URL}
			if f := rc.Scanner.Harbor.AuthorizationFile; f != "" {
				b, err := os.ReadFile(f)
				if err != nil {
					return nil, nil, fmt.Errorf("routes[%d].scanner.harbor.authorization_file: %w", i, err)
				}
				ext.Authorization = strings.TrimSpace(string(b))
			}
			r.Admission.Scanner = ext
			log.Info("route scanned by an external scanner", "prefix", rc.Prefix, "adapter", rc.Scanner.Harbor.URL)
		}
		if rc.Kind == "pull" {
			up, err := newUpstream(rc.Upstream, cfg.Limits, m.Upstream(rc.Prefix), log.With("route", rc.Prefix))
			if err != nil {
				return nil, nil, fmt.Errorf("routes[%d] (%s): %w", i, rc.Prefix, err)
			}
			r.Upstream = up.URL()
			upstreams[rc.Prefix] = up
		}
		log.Info("route", "prefix", r.Prefix, "kind", r.Kind, "upstream", r.Upstream, "admission", r.Admission.Mode)
		routes = append(routes, r)
	}
	t, err := route.NewTable(routes)
	return t, upstreams, err
}

func newUpstream(u *config.Upstream, limits config.Limits, observe func(string, int), log *slog.Logger) (*upstream.Client, error) {
	o := upstream.Options{URL: u.URL, Timeout: time.Duration(u.Timeout), MaxManifestSize: int64(limits.ManifestSize), Observe: observe,
		TokenRealms: u.TokenRealms, Log: log}
	if c := u.Credentials; c != nil {
		var err error
		switch {
		case c.File != "":
			o.Auth, err = upstream.CredentialsFile(c.File)
		case c.DockerConfig != "":
			host := strings.TrimPrefix(strings.TrimPrefix(u.URL, "https://"), "http://")
			o.Auth, err = upstream.DockerConfig(c.DockerConfig, host)
		}
		if err != nil {
			return nil, err
		}
	}
	if t := u.TLS; t != nil {
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify}
		if t.CA != "" {
			pem, err := os.ReadFile(t.CA)
			if err != nil {
				return nil, fmt.Errorf("upstream.tls.ca: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("upstream.tls.ca: %s holds no PEM certificate", t.CA)
			}
			o.TLS.RootCAs = pool
		}
	}
	return upstream.New(o)
}

func tlsConfig(c *config.TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client_ca: %s holds no PEM certificate", c.ClientCA)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
