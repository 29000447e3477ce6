package main

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
	"github.com/gatehouse-dev/gatehouse/storage/meta"
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

func serve(ctx context.Context, cfg config.Config, cfgPath string, stderr io.Writer) error {
	log := newLogger(cfg.Log, stderr)
	logrus.SetOutput(io.Discard)
	logrus.AddHook(logrusToSlog{log})

	if cfgPath == "" {
		log.Info("no --config given: running on the embedded default", "data", cfg.Data)
	}
	driver, err := newDriver(ctx, cfg.Storage)
	if err != nil {
		return err
	}
	store, err := content.New(ctx, driver, content.WithDelete(cfg.Storage.Delete), content.WithRedirect(cfg.Storage.Redirect))
	if err != nil {
		return err
	}
	md, err := sqlite.Open(ctx, cfg.Metadata.SQLite.Path)
	if err != nil {
		return err
	}
	defer md.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	algs := make([]digest.Algorithm, len(cfg.Limits.DigestAlgorithms))
	for i, a := range cfg.Limits.DigestAlgorithms {
		algs[i] = digest.Algorithm(a)
	}
	pullMetrics := pull.NewMetrics(reg)
	table, upstreams, err := buildRoutes(cfg, pullMetrics, log)
	if err != nil {
		return err
	}
	for _, r := range table.Routes() {
		log.Info("route", "prefix", r.Prefix, "kind", r.Kind, "upstream", r.Upstream)
	}
	// every image that enters is scanned; the puller learns of the scanner once it exists
	var scans *scanning.Service
	submit := func(repo string, d digest.Digest, mediaType string) { scans.Submit(repo, d, mediaType) }
	pullOpts := []pull.Option{pull.WithLogger(log), pull.WithDigestAlgorithms(algs...), pull.WithMetrics(pullMetrics), pull.WithManifestHook(submit),
		pull.WithMaxBlobSize(int64(cfg.Limits.BlobSize))}
	for _, rc := range cfg.Routes {
		if rc.Kind == "pull" {
			pullOpts = append(pullOpts, pull.WithUpstreamLimits(rc.Prefix, pull.UpstreamLimits{Grace: time.Duration(rc.Upstream.Timeout),
				MinRate: int64(rc.Upstream.MinRate), MaxLayers: rc.Upstream.MaxLayers}))
		}
	}
	puller := pull.New(store, md, upstreams, pullOpts...)
	scanner, err := newScanner(cfg.Scan)
	if err != nil {
		return err
	}
	if scanner.FingerprintKey, err = fingerprintKey(cfg.Scan.FingerprintKey, log); err != nil {
		return fmt.Errorf("scan.fingerprint_key: %w", err)
	}
	inventory.SetLogger(log)
	vdb := vulndb.Open(cfg.VulnDB.Path)
	defer vdb.Close()
	if info, err := vdb.Info(); err != nil {
		log.Warn("no vulnerability database: images are scanned but not matched until `gatehouse db update --from ...` imports one", "path", cfg.VulnDB.Path)
	} else {
		log.Info("vulnerability database", "version", info.Version, "records", info.Records, "age", info.Age(time.Now()).Round(time.Minute))
	}
	if n, err := scanning.RemoveStaleTrees(scanner.TempDir); err != nil {
		return fmt.Errorf("scan.temp_dir: removing the scan trees a previous run left: %w", err)
	} else if n > 0 {
		log.Info("removed the scan trees a previous run left (it stopped mid-scan); those images are scanned again when asked for", "count", n, "dir", scanner.TempDir)
	}
	scans = scanning.New(store, md, scanner, vdb, table, puller, log, scanning.NewMetrics(reg), cfg.Scan.Workers)
	for i, rc := range cfg.Routes {
		if rc.Scanner == nil || rc.Scanner.Harbor == nil {
			continue
		}
		ext := &harbor.Client{URL: rc.Scanner.Harbor.URL}
		if f := rc.Scanner.Harbor.AuthorizationFile; f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("routes[%d].scanner.harbor.authorization_file: %w", i, err)
			}
			ext.Authorization = strings.TrimSpace(string(b))
		}
		scans.UseExternal(rc.Prefix, ext, cfg.Scan.RegistryURL)
		log.Info("route scanned by an external scanner", "prefix", rc.Prefix, "adapter", rc.Scanner.Harbor.URL)
	}
	def, routePolicies := loadPolicies(ctx, cfg)
	if err := policyErrors(def, routePolicies); err != nil {
		log.Error("a policy does not compile: nothing new is admitted under it until it is fixed (already admitted images are still served)", "err", err)
	}
	revoked := prometheus.NewCounter(prometheus.CounterOpts{Name: "gatehouse_verdicts_revoked_total",
		Help: "Admitted digests that a later decision (a new advisory, a policy change) quarantined."})
	reg.MustRegister(revoked)
	admitter := &admission.Admitter{Revoked: revoked, Content: store, Meta: md, DB: vdb, Policy: def.Engine, PolicyErr: def.Err, RoutePolicies: routePolicies, Routes: table,
		Settings: policies.Settings{HighFixGraceDays: cfg.Admission.HighFixGraceDays}, MaxAge: time.Duration(cfg.VulnDB.MaxAge)}
	gcfg := gate.Config{Default: gate.Mode(cfg.Admission.Mode), Hold: time.Duration(cfg.Admission.Hold), RevokeGrace: time.Duration(cfg.Admission.RevokeGrace), Routes: map[string]gate.Mode{}, Fallback: map[string]bool{},
		Table: table, MaxIndexChildren: cfg.Admission.MaxIndexChildren}
	for _, rc := range cfg.Routes {
		if rc.AdmissionMode != "" {
			gcfg.Routes[rc.Prefix] = gate.Mode(rc.AdmissionMode)
		}
		gcfg.Fallback[rc.Prefix] = rc.TagFallback == "last-admitted"
	}
	// admit fetches (on a pull route) and scans an image unless done, then decides it.
	admit := func(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
		if rt, err := table.Resolve(repo, ""); err == nil && rt.Route.Kind == route.Pull {
			if err := puller.Manifest(ctx, rt, d); err != nil {
				return meta.Verdict{}, err
			}
			// the policy reads the image config from this repository, even when the digest was
			// scanned through another one
			if body, err := store.ManifestGet(ctx, d); err == nil {
				var m struct {
					Config struct {
						Digest digest.Digest
						Size   int64
					}
				}
				if json.Unmarshal(body, &m) == nil && m.Config.Digest != "" {
					if err := puller.EnsureBlob(ctx, rt, m.Config.Digest, m.Config.Size); err != nil {
						return meta.Verdict{}, err
					}
				}
			}
		}
		if _, err := scans.ScanNow(ctx, repo, d); err != nil {
			if _, serr := md.ScanGet(ctx, d); serr != nil {
				return meta.Verdict{}, err // not even a failed scan was recorded: nothing to decide on
			}
		}
		if v, err := md.VerdictGet(ctx, repo, d); err == nil && v.State != meta.Pending {
			return v, nil
		}
		v, _, err := admitter.Decide(ctx, repo, d)
		return v, err
	}
	gt, err := gate.New(gcfg, md, store, admit, log, reg)
	if err != nil {
		return err
	}
	// a policy changed since the last run: re-decide stored verdicts from stored evidence before
	// serving, so no verdict of the old policy is served under the new one
	start := time.Now()
	if n, err := admitter.Reevaluate(ctx, func(v meta.Verdict) { gt.Record(ctx, v) }); err != nil {
		return fmt.Errorf("re-evaluating stored verdicts under the current policy: %w", err)
	} else if n > 0 {
		log.Info("verdicts re-decided under the current policy", "count", n, "took", time.Since(start).Round(time.Millisecond))
	}
	scans.DecideWith(func(ctx context.Context, repo string, d digest.Digest) {
		v, dec, err := admitter.Decide(ctx, repo, d)
		if err != nil {
			log.Error("admission decision failed", "repo", repo, "digest", d, "err", err)
			return
		}
		gt.Record(ctx, v)
		attrs := []any{"repo", repo, "digest", d, "verdict", v.State}
		if len(dec.Deny) > 0 {
			attrs = append(attrs, "reason", dec.Deny[0].Message)
		}
		log.Info("admission decision", attrs...)
	})
	if def.Engine != nil {
		log.Info("admission policy", "source", def.Source, "policy", def.Engine.Digest())
	}
	scanCtx, stopScans := context.WithCancel(ctx)
	defer func() { stopScans(); scans.Wait() }()
	scans.Start(scanCtx, time.Duration(cfg.VulnDB.Recheck))
	handler, err := api.New(store, md,
		api.WithRoutes(table),
		api.WithPuller(puller),
		api.WithManifestHook(submit),
		api.WithGate(gt),
		api.WithManagement(scans.Handler(time.Duration(cfg.VulnDB.MaxAge))),
		api.WithLogger(log),
		api.WithMaxManifestSize(int64(cfg.Limits.ManifestSize)),
		api.WithMaxNameLength(cfg.Limits.NameLength),
		api.WithDigestAlgorithms(algs...),
		api.WithDelete(cfg.Storage.Delete),
		api.WithUploadExpiry(time.Duration(cfg.Uploads.Expiry)),
		api.WithUploadSessions(cfg.Uploads.MaxSessions, cfg.Uploads.MaxSessionsPerRepository, time.Duration(cfg.Uploads.IdleTimeout)),
		api.WithMaxBlobSize(int64(cfg.Limits.BlobSize)),
		api.WithBodyTimeouts(time.Duration(cfg.Limits.BodyIdleTimeout), int64(cfg.Limits.BodyMinRate)),
		api.WithManifestCache(*cfg.Cache.Manifests),
		api.WithMetricsRegistry(reg),
	)
	if err != nil {
		return err
	}

	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	// a shutdown answers requests held for an admission at once (503, retry) instead of waiting
	// out admission.hold past the shutdown deadline
	srv.RegisterOnShutdown(gt.Release)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// a response the client stops taking is cut after limits.body_idle_timeout without progress
	ln = api.WatchWrites(ln, time.Duration(cfg.Limits.BodyIdleTimeout))
	if cfg.TLS != nil {
		tc, err := tlsConfig(cfg.TLS)
		if err != nil {
			ln.Close()
			return err
		}
		ln = tls.NewListener(ln, tc)
		log.Info("serving HTTPS", "addr", ln.Addr().String(), "client_ca", cfg.TLS.ClientCA != "")
	} else {
		log.Warn("serving plain HTTP (no tls: in the config); clients must be told the registry is insecure", "addr", ln.Addr().String())
	}
	log.Info("gatehouse ready", "addr", ln.Addr().String(), "storage", cfg.Storage.Driver, "metadata", cfg.Metadata.Driver, "delete", cfg.Storage.Delete)

	go purgeUploads(ctx, log, store, time.Duration(cfg.Uploads.Expiry), time.Duration(cfg.Uploads.PurgeInterval))

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
	puller.Close(10 * time.Second)
	log.Info("stopped")
	return nil
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

// buildRoutes turns the configured routes into the route table and one upstream client per
// pull route.
func buildRoutes(cfg config.Config, m *pull.Metrics, log *slog.Logger) (*route.Table, map[string]pull.Upstream, error) {
	var routes []route.Route
	upstreams := map[string]pull.Upstream{}
	for i, rc := range cfg.Routes {
		r := route.Route{Prefix: rc.Prefix, Kind: route.Kind(rc.Kind), Allow: rc.Allow, Deny: rc.Deny,
			TagTTL: time.Duration(rc.TagTTL), MaxStale: time.Duration(rc.MaxStale)}
		if rc.LibraryNamespace != nil {
			r.LibraryNamespace = *rc.LibraryNamespace
		}
		if rc.Kind == "pull" {
			up, err := newUpstream(rc.Upstream, cfg.Limits, m.Upstream(rc.Prefix), log.With("route", rc.Prefix))
			if err != nil {
				return nil, nil, fmt.Errorf("routes[%d] (%s): %w", i, rc.Prefix, err)
			}
			r.Upstream = up.URL()
			upstreams[rc.Prefix] = up
		}
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

// purgeUploads deletes upload sessions older than the expiry, at every interval.
func purgeUploads(ctx context.Context, log *slog.Logger, store *content.Store, expiry, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, errs := store.PurgeUploads(ctx, time.Now().Add(-expiry))
			if n > 0 || len(errs) > 0 {
				log.Info("purged expired upload sessions", "files", n, "errors", len(errs))
			}
		}
	}
}
