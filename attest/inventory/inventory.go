package inventory

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"

	"github.com/google/osv-scalibr/extractor/filesystem"
	scalibrfs "github.com/google/osv-scalibr/fs"
	"github.com/google/osv-scalibr/plugin"
	"github.com/google/osv-scalibr/plugin/config"
	"github.com/google/osv-scalibr/plugin/list"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"

	cpb "github.com/google/osv-scalibr/binary/proto/config_go_proto"
)

// Package is one package found in an image.
type Package struct {
	Ecosystem string `json:"ecosystem"` // OSV ecosystem, e.g. "Debian:12", "Go", "npm", "PyPI"
	Name      string `json:"name"`
	Source    string `json:"source,omitempty"` // the source package of an OS package (advisories name it)
	// SourceVersion is the source package's version when it is not Version (dpkg's
	// "Source: glibc (2.36-9+deb12u1)"): advisories naming the source package are matched by it.
	SourceVersion string        `json:"source_version,omitempty"`
	Version       string        `json:"version"`
	PURL          string        `json:"purl,omitempty"`
	Path          string        `json:"path"`            // the file it was read from
	Layer         digest.Digest `json:"layer,omitempty"` // the layer that last wrote that file
	Extractor     string        `json:"extractor"`
}

// Secret is a credential found in a file; only a fingerprint of its value is kept.
type Secret struct {
	Kind        string        `json:"kind"` // the detector's name for it, e.g. "privatekey", "awsaccesskey", "github"
	Path        string        `json:"path"`
	Layer       digest.Digest `json:"layer,omitempty"`
	Fingerprint string        `json:"fingerprint"` // Fingerprinter.Of the value: keyed, never the value
}

// Unread is a file the extraction could not read as the tool that loads it would: an extractor
// that failed or panicked on it, a file too large or of a kind it could not examine, metadata that
// tools would read differently. Any Unread makes the scan incomplete (fail closed: what was not
// read may hold a vulnerable package).
type Unread struct {
	Path      string `json:"path"`
	Extractor string `json:"extractor,omitempty"`
	Reason    string `json:"reason"`
}

// Inventory is everything extracted from one image.
type Inventory struct {
	Packages []Package `json:"packages"`
	Secrets  []Secret  `json:"secrets"`
	Unread   []Unread  `json:"unread,omitempty"`
	Scanner  string    `json:"scanner"` // osv-scalibr's version
}

// Groups are the osv-scalibr extractor groups Gatehouse runs. Secrets are searched separately
// (fileSecrets): osv-scalibr's secret extractor reads only files with certain extensions, and
// an SSH key named id_ed25519 has none.
var Groups = []string{"os", "go", "javascript", "python", "java", "rust", "ruby", "php", "dotnet"}

var (
	pluginsOnce sync.Once
	plugins     []plugin.Plugin
	extractors  []filesystem.Extractor
	pluginsErr  error
	capabs      = &plugin.Capabilities{OS: plugin.OSLinux, Network: plugin.NetworkOffline, DirectFS: false, RunningSystem: false}
)

// loadPlugins loads the extractors once, each guarded (guard.go): keep asks these copies,
// and each extraction runs its own guarded copies. No extractor is left a size limit of its own
// (noSizeLimit): the guard bounds what they read and says when it did not let one read a file.
func loadPlugins() error {
	pluginsOnce.Do(func() {
		var ps []plugin.Plugin
		ps, pluginsErr = list.FromNames(Groups, &config.PluginConfig{ProtoConfig: &cpb.PluginConfig{MaxFileSizeBytes: noSizeLimit}})
		if pluginsErr != nil {
			return
		}
		// npm, PyPI and dpkg metadata are read by Gatehouse's own readers (metadata.go)
		plugins = withoutReplaced(plugin.FilterByCapabilities(ps, capabs))
		for _, p := range plugins {
			if e, ok := p.(filesystem.Extractor); ok {
				extractors = append(extractors, guarded{Extractor: e})
			}
		}
	})
	return pluginsErr
}

// Extraction is one image's extraction: Options plans the flattening (write only what the
// extractors read; stream small text files to the secret detectors as the layers are read),
// Finish runs the extractors over the tree.
type Extraction struct {
	ctx     context.Context
	fp      *Fingerprinter
	jobs    chan secretJob
	close   sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	secrets []Secret
	err     error
	limits  Limits
	env     []string // the image config's Env (WithEnv)
	// dpkgAdmin is the dpkg database DPKG_ADMINDIR in env names, as a path of the tree ("": none)
	dpkgAdmin string
}

// Option configures an extraction.
type Option func(*Extraction)

// WithLimits bounds what the extractors read (a zero field keeps DefaultLimits' value).
func WithLimits(l Limits) Option {
	return func(e *Extraction) {
		if l.MaxPackages > 0 {
			e.limits.MaxPackages = l.MaxPackages
		}
		if l.MaxMetadataFile > 0 {
			e.limits.MaxMetadataFile = l.MaxMetadataFile
		}
		if l.MaxNestedArchive > 0 {
			e.limits.MaxNestedArchive = l.MaxNestedArchive
		}
	}
}

// WithEnv gives the image config's Env ("K=V") and WorkingDir: the tools read some of their
// paths from it (DPKG_ADMINDIR, NODE_PATH), so the extraction reads the files there too. A
// relative path in them is taken from workDir, where the image's processes start.
func WithEnv(env []string, workDir string) Option {
	return func(e *Extraction) {
		e.env = absEnv(env, workDir)
		e.dpkgAdmin = dpkgAdminDir(e.env) // once: keep asks about every entry
	}
}

// absEnv is env with the relative paths of DPKG_ADMINDIR and NODE_PATH made absolute from dir.
func absEnv(env []string, dir string) []string {
	abs := func(p string) string {
		if p == "" || path.IsAbs(p) {
			return p
		}
		return path.Join("/", dir, p)
	}
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "DPKG_ADMINDIR":
			kv = k + "=" + abs(v)
		case "NODE_PATH":
			parts := strings.Split(v, ":")
			for i := range parts {
				parts[i] = abs(parts[i])
			}
			kv = k + "=" + strings.Join(parts, ":")
		}
		out = append(out, kv)
	}
	return out
}

type secretJob struct {
	path  string
	layer digest.Digest
	data  []byte
}

// Start begins an extraction; its secret detectors run on workers goroutines and fingerprint
// what they find with fp (required). A panic in a detector fails the extraction (Finish says
// where) instead of the process.
func Start(ctx context.Context, workers int, fp *Fingerprinter, opts ...Option) (*Extraction, error) {
	if fp == nil {
		return nil, fmt.Errorf("inventory: %w", ErrNoFingerprintKey)
	}
	if err := loadPlugins(); err != nil {
		return nil, fmt.Errorf("inventory: plugins: %w", err)
	}
	if _, err := secretEngine(); err != nil {
		return nil, fmt.Errorf("inventory: secret detectors: %w", err)
	}
	e := &Extraction{ctx: ctx, fp: fp, jobs: make(chan secretJob, 64), limits: DefaultLimits}
	for _, o := range opts {
		o(e)
	}
	for range max(workers, 1) {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			for j := range e.jobs {
				found, err := detectGuarded(ctx, fp, j)
				e.mu.Lock()
				if err != nil && e.err == nil {
					e.err = err
				}
				e.secrets = append(e.secrets, found...)
				e.mu.Unlock()
			}
		}()
	}
	return e, nil
}

// Options are the layerfs options of this extraction.
func (e *Extraction) Options() layerfs.Options {
	return layerfs.Options{
		Keep:       e.keep,
		Sniff:      sniff,
		Tail:       zipEndOfFile,
		TailCheck:  zipKept,
		Wants:      secretCandidate,
		InspectMax: MaxSecretFileSize,
		Inspect: func(p string, l digest.Digest, data []byte) {
			select {
			case e.jobs <- secretJob{p, l, data}:
			case <-e.ctx.Done():
			}
		},
	}
}

// keep is keep for this image: it keeps too the files of the dpkg database its Env names.
func (e *Extraction) keep(p string, info fs.FileInfo) (bool, layerfs.Check) {
	if e.dpkgAdmin != "" && info.Mode().IsRegular() && dpkgAdminFile(e.dpkgAdmin, p) {
		return true, nil
	}
	return keep(p, info)
}

// keep decides what goes into the tree: the files that identify the distribution, and the files
// osv-scalibr's extractors ask for — except that executables asked for only by the Go and Rust
// binary extractors (every executable) are kept only if they carry Go build info or
// cargo-auditable data, which hasBuildInfo reads from the file on disk.
func keep(p string, info fs.FileInfo) (bool, layerfs.Check) {
	if osRelease[p] {
		return true, nil
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		// Extractors read files and follow no symlink: layerfs makes, at a link's path, the file
		// it resolves to when this wants that path and not the file's own.
		return false, nil
	}
	if metadataFile(p) {
		return true, nil // read by metadata.go's readers
	}
	api := fileAPI{path: p, info: info}
	binaryOnly := false
	for _, x := range extractors {
		if !x.FileRequired(api) {
			continue
		}
		if !binaryExtractors[x.Name()] {
			return true, nil
		}
		binaryOnly = true
	}
	if binaryOnly {
		return false, hasBuildInfo
	}
	return false, nil
}

// sniff has files that no extractor asked for by name and mode judged by their bytes: an ELF
// file by hasBuildInfo (the kernel runs a program named app.json, dlopen loads a library of any
// name and mode, and go version -m lists either's modules, while osv-scalibr's go/binary asks
// only for executables and *.so names it expects), and a zip archive by zipKept (a Python zip on
// sys.path may have any name). A zip after other data (Python reads a zip from its end) is
// found by zipEndOfFile instead, without writing every file to the tree.
func sniff(head []byte) layerfs.Check {
	switch {
	case bytes.HasPrefix(head, elfMagic) && len(head) == layerfs.SniffLen:
		return hasBuildInfo // (a shorter file cannot hold an ELF header and its program headers)
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return zipKept
	}
	return nil
}

// zipEndOfFile says whether a file's end holds a zip end-of-central-directory record where
// Python's zipfile and the JVM look for one: the file is then read again and judged by zipKept.
func zipEndOfFile(tail []byte) bool {
	i := bytes.LastIndex(tail, []byte("PK\x05\x06"))
	return i >= 0 && i+zipEndLen <= len(tail)
}

var elfMagic = []byte("\x7fELF")

// binaryExtractors read compiled programs; they ask for every executable.
var binaryExtractors = map[string]bool{"go/binary": true, "rust/cargoauditable": true}

// hasBuildInfo reports whether an ELF program carries Go build info, found as Go's own reader
// finds it (in the section named .go.buildinfo, or without one in the data segment: no section
// name is needed), or cargo-auditable data (which its readers find by section name). It reads
// headers and searches the data in bounded chunks, so a large program is judged, not skipped;
// build info Go's reader could not read, or headers claiming more than the bounds, are an error
// (elfBuildInfo). A file without either is kept still if it is a zip archive Python imports
// distributions from or a Java archive (zipKept: an executable .pyz or jar, a program with a zip
// after it).
func hasBuildInfo(r io.ReaderAt, size int64) (bool, error) {
	if ok, err := elfBuildInfo(r, size); ok || err != nil {
		return ok, err
	}
	return zipKept(r, size) // an executable .pyz or jar, or a program with a zip after it
}

// osRelease are the files that identify the distribution.
var osRelease = map[string]bool{
	"etc/os-release": true, "usr/lib/os-release": true, "etc/debian_version": true, "etc/alpine-release": true,
	"etc/redhat-release": true, "etc/system-release": true, "etc/lsb-release": true,
}

// fileAPI presents a tar entry to osv-scalibr's FileRequired.
type fileAPI struct {
	path string
	info fs.FileInfo
}

func (f fileAPI) Path() string               { return f.path }
func (f fileAPI) Stat() (fs.FileInfo, error) { return f.info, nil }

// Close stops the secret detectors (Finish does it; call Close when flattening failed).
func (e *Extraction) Close() {
	e.close.Do(func() {
		close(e.jobs)
		e.wg.Wait()
	})
}

// Finish waits for the secret detectors and lists the packages in the flattened tree. Every
// extractor runs guarded (guard.go): a panic fails the extraction with a *PanicError naming the
// extractor and the file; an extractor's error on a file, a plugin that did not succeed, a file
// past Limits and packages past Limits.MaxPackages are Unread. The walk stops when ctx ends, and
// Finish then fails with ctx's error.
func (e *Extraction) Finish(ctx context.Context, tree *layerfs.Result) (*Inventory, error) {
	e.Close()
	if e.err != nil {
		return nil, fmt.Errorf("inventory: secrets: %w", e.err)
	}
	root, err := os.OpenRoot(tree.Root)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	fsys, ok := root.FS().(scalibrfs.FS)
	if !ok {
		return nil, fmt.Errorf("inventory: os.Root's FS lacks ReadDir or Stat")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := &guard{lim: e.limits, cancel: cancel, tempDir: filepath.Dir(tree.Root), tempPrefix: filepath.Base(tree.Root) + "-jar-", root: tree.Root}
	res, err := g.run(ctx, fsys, extractors)
	if err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	inv := &Inventory{Packages: []Package{}, Secrets: []Secret{}, Scanner: "osv-scalibr " + res.Version}
	inv.Unread = unreadOf(res.PluginStatus)
	layerOf := func(p string) digest.Digest { return tree.Files[strings.TrimPrefix(p, "/")].Layer }
	for _, p := range res.Inventory.Packages {
		path := p.Location.PathOrEmpty()
		pkg := Package{
			Ecosystem: p.Ecosystem().String(),
			Name:      p.Name,
			Version:   p.Version,
			Path:      path,
			Layer:     layerOf(path),
			Extractor: strings.Join(p.Plugins, ","),
		}
		if u := p.PURL(); u != nil {
			pkg.PURL = u.String()
			for _, q := range u.Qualifiers {
				if q.Key == "source" && q.Value != "" && q.Value != "UNKNOWN" && q.Value != p.Name {
					pkg.Source = q.Value
				}
			}
		}
		inv.Packages = append(inv.Packages, pkg)
	}
	if err := g.readMetadata(ctx, root, tree, inv, e.env); err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	inv.Unread = capUnread(append(inv.Unread, g.unreadOf()...))
	inv.Secrets = append(inv.Secrets, e.secrets...)
	sort.Slice(inv.Packages, func(a, b int) bool {
		x, y := inv.Packages[a], inv.Packages[b]
		return x.Ecosystem+"\x00"+x.Name+"\x00"+x.Version+"\x00"+x.Path < y.Ecosystem+"\x00"+y.Name+"\x00"+y.Version+"\x00"+y.Path
	})
	sort.Slice(inv.Secrets, func(a, b int) bool {
		return inv.Secrets[a].Path+inv.Secrets[a].Layer.String() < inv.Secrets[b].Path+inv.Secrets[b].Layer.String()
	})
	return inv, nil
}

// kindOf names a detected secret by its detector's package: "privatekey", "awsaccesskey",
// "github", ... (the type names alone, such as Credentials, say too little).
func kindOf(v any) string {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "unknown"
	}
	if pkg := path.Base(t.PkgPath()); pkg != "." && pkg != "" {
		return pkg
	}
	return strings.ToLower(t.Name())
}
