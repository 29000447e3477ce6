// Command gatehouse is the one Gatehouse binary. It only wires: it parses the configuration,
// builds the parts (content store, metadata store, API) and starts them.
//
//	gatehouse serve [--config FILE] [--listen ADDR] [--data DIR] [--log-format text|json] [--log-level LEVEL]
//	gatehouse config check FILE
//	gatehouse db update [--from URL|FILE|DIR] [--config FILE] [--data DIR]
//	gatehouse db info [--config FILE] [--data DIR]
//	gatehouse db export FILE [--config FILE] [--data DIR]
//	gatehouse policy test [--dir DIR]
//	gatehouse policy eval --repo REPO --digest DIGEST [--config FILE] [--data DIR]
//	gatehouse version
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/cmd/gatehouse/config"
	"github.com/gatehouse-dev/gatehouse/policies"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(os.Stderr, "gatehouse:", err)
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "gatehouse:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  gatehouse serve [--config FILE] [--listen ADDR] [--data DIR] [--log-format text|json] [--log-level debug|info|warn|error]
  gatehouse config check FILE
  gatehouse db update [--from URL|FILE|DIR] [--config FILE] [--data DIR]
  gatehouse db info [--config FILE] [--data DIR]
  gatehouse db export [--config FILE] [--data DIR] FILE
  gatehouse policy test [--dir DIR]
  gatehouse policy eval --repo REPO --digest DIGEST [--config FILE] [--data DIR]
  gatehouse version
`

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"no command given"}
	}
	switch args[0] {
	case "serve":
		return serveCmd(ctx, args[1:], stderr)
	case "config":
		if len(args) != 3 || args[1] != "check" {
			return usageError{"config takes: check FILE"}
		}
		cfg, err := config.Load(args[2])
		if err != nil {
			return err
		}
		if err := policyErrors(loadPolicies(ctx, cfg)); err != nil {
			return fmt.Errorf("%s: a policy does not compile:\n%w", args[2], err)
		}
		fmt.Fprintf(stdout, "%s: ok\n", args[2])
		return nil
	case "db":
		return dbCmd(ctx, args[1:], stdout, stderr)
	case "policy":
		return policyCmd(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, version())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q", args[0])}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return "gatehouse " + bi.Main.Version + " (" + bi.GoVersion + ")"
	}
	return "gatehouse (unknown version)"
}

// serveCmd runs gatehouse serve, with command-line overrides of the common settings.
func serveCmd(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML); absent: the embedded default")
	listen := fs.String("listen", "", "listen address, overrides listen:")
	data := fs.String("data", "", "data directory, overrides data: (and the paths that default under it)")
	logFormat := fs.String("log-format", "", "text or json, overrides log.format")
	logLevel := fs.String("log-level", "", "debug, info, warn or error, overrides log.level")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("serve takes no arguments, got %q", fs.Args())}
	}
	cfg, err := loadConfig(*cfgPath, config.Overrides{Listen: *listen, Data: *data, LogFormat: *logFormat, LogLevel: *logLevel})
	if err != nil {
		return err
	}
	return serve(ctx, cfg, *cfgPath, stderr)
}

// loadConfig reads the configuration file (none: the embedded default) with command-line overrides.
func loadConfig(path string, o config.Overrides) (config.Config, error) {
	raw := []byte{}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return config.Config{}, fmt.Errorf("config: %w", err)
		}
		raw = b
	}
	cfg, err := config.ParseWithOverrides(raw, o)
	if err != nil && path != "" {
		return config.Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, err
}

// dbCmd imports a vulnerability database or describes the one in place.
func dbCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "update" && args[0] != "info" && args[0] != "export") {
		return usageError{"db takes: update [--from URL|FILE|DIR], info, or export FILE"}
	}
	fs := flag.NewFlagSet("db "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (for vulndb.path)")
	data := fs.String("data", "", "data directory, overrides data:")
	from := fs.String("from", "", "a one-off OSV source: an http(s) URL of a zip, a zip or JSON file, or a directory of them (default: update from vulndb.sources)")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	cfg, err := loadConfig(*cfgPath, config.Overrides{Data: *data})
	if err != nil {
		return err
	}
	if args[0] == "export" {
		if fs.NArg() != 1 {
			return usageError{"db export takes one FILE to write"}
		}
		return dbExport(cfg, fs.Arg(0), stdout)
	}
	if args[0] == "info" {
		printSources(stdout, newFeed(cfg, nil).State())
		info, err := vulndb.Open(cfg.VulnDB.Path).Info()
		if err != nil {
			return err
		}
		age := info.Age(time.Now())
		fmt.Fprintf(stdout, "version  %s\nrecords  %d\nimported %s\nnewest   %s\nage      %s (stale after %s: %v)\nsource   %s\n",
			info.Version, info.Records, info.Imported.Format(time.RFC3339), info.Newest.Format(time.RFC3339),
			age.Round(time.Minute), time.Duration(cfg.VulnDB.MaxAge), age > time.Duration(cfg.VulnDB.MaxAge), info.Source)
		return nil
	}
	if *from == "" {
		// from the configured sources, each fetched only if it changed
		info, changed, status, err := newFeed(cfg, stderr).Update(ctx)
		printSources(stdout, status)
		if err != nil {
			return err
		}
		what := "unchanged"
		if changed {
			what = "updated"
		}
		fmt.Fprintf(stdout, "%s: %s, version %s, %d records\n", cfg.VulnDB.Path, what, info.Version, info.Records)
		return nil
	}
	info, err := vulndb.Import(ctx, cfg.VulnDB.Path, *from, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: version %s, %d records\n", cfg.VulnDB.Path, info.Version, info.Records)
	return nil
}

// dbExport writes the database in place, with a manifest of what it is, to file (written beside
// and renamed, so a half-written export is never left under its name).
func dbExport(cfg config.Config, file string, stdout io.Writer) error {
	tmp := file + ".partial"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	m, err := vulndb.Export(cfg.VulnDB.Path, newFeed(cfg, nil).State(), out)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, file); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: version %s, %d records, SHA-256 %s (import it with gatehouse db update --from %s)\n", file, m.Database.Version, m.Database.Records, m.SHA256, file)
	return nil
}

// newFeed is the database's feed from the configured sources (progress: where bars go; nil: none).
func newFeed(cfg config.Config, progress io.Writer) *vulndb.Feed {
	return &vulndb.Feed{Path: cfg.VulnDB.Path, Cache: cfg.VulnDB.Cache, Sources: vulndb.Sources(cfg.VulnDB.Sources, cfg.VulnDB.Ecosystems),
		Stall: time.Duration(cfg.VulnDB.Stall), Progress: progress}
}

// printSources lists each source's state, one line each.
func printSources(w io.Writer, status []vulndb.SourceStatus) {
	for _, st := range status {
		line := fmt.Sprintf("source   %s  %s  records %d", st.Name, st.URL, st.Records)
		if !st.LastSuccess.IsZero() {
			line += "  last success " + st.LastSuccess.Format(time.RFC3339)
		}
		if st.LastError != "" {
			line += "  last error: " + st.LastError
		}
		fmt.Fprintln(w, line)
	}
}

// policyCmd runs a policy bundle's Rego tests: the embedded default, or the .rego files of --dir.
func policyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "eval" {
		return policyEval(ctx, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "test" {
		return usageError{"policy takes: test [--dir DIR], or eval --repo R --digest D"}
	}
	fs := flag.NewFlagSet("policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "a directory of .rego files (default: the embedded default policy)")
	if err := fs.Parse(args[1:]); err != nil {
		return usageError{err.Error()}
	}
	bundle, name := policies.Default(), "the default policy"
	if *dir != "" {
		bundle, name = os.DirFS(*dir), *dir
	}
	engine, err := policies.Load(ctx, bundle)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	results, err := engine.Test(ctx)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range results {
		status := "PASS"
		if !r.Passed {
			status, failed = "FAIL", failed+1
		}
		fmt.Fprintf(stdout, "%s %s %s\n", status, r.Name, r.Error)
	}
	fmt.Fprintf(stdout, "%s (%s): %d passed, %d failed\n", name, engine.Digest(), len(results)-failed, failed)
	if len(results) == 0 {
		return fmt.Errorf("%s has no tests", name)
	}
	if failed > 0 {
		return fmt.Errorf("%d policy test(s) failed", failed)
	}
	return nil
}

// policyEval explains the decision the policy makes on a stored image: the input it sees and
// what it answers. It records nothing.
func policyEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("policy eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file")
	data := fs.String("data", "", "data directory, overrides data:")
	repo := fs.String("repo", "", "repository (as stored, route prefix included)")
	dg := fs.String("digest", "", "manifest digest")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	d, err := digest.Parse(*dg)
	if err != nil || *repo == "" {
		return usageError{"policy eval needs --repo and a valid --digest"}
	}
	cfg, err := loadConfig(*cfgPath, config.Overrides{Data: *data})
	if err != nil {
		return err
	}
	p, err := build(ctx, cfg, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer p.close()
	rt, err := p.routes.Resolve(*repo, "")
	if err != nil {
		return fmt.Errorf("--repo %s: %w", *repo, err)
	}
	in, dec, err := p.pipeline.Explain(ctx, rt, d)
	if err != nil {
		return err
	}
	policy := ""
	if b := rt.Route.Admission.Policy; b != nil && b.Engine != nil {
		policy = b.Engine.Digest()
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(map[string]any{"policy": policy, "input": in, "decision": dec})
}
