package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path"
	"reflect"
	"sort"
	"strings"

	scalibr "github.com/google/osv-scalibr"
	scalibrfs "github.com/google/osv-scalibr/fs"
	"github.com/google/osv-scalibr/plugin"
	"github.com/google/osv-scalibr/plugin/list"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// Package is one package found in an image.
type Package struct {
	Ecosystem string        `json:"ecosystem"` // OSV ecosystem, e.g. "Debian:12", "Go", "npm", "PyPI"
	Name      string        `json:"name"`
	Source    string        `json:"source,omitempty"` // the source package of an OS package (advisories name it)
	Version   string        `json:"version"`
	PURL      string        `json:"purl,omitempty"`
	Path      string        `json:"path"`            // the file it was read from
	Layer     digest.Digest `json:"layer,omitempty"` // the layer that last wrote that file
	Extractor string        `json:"extractor"`
}

// Secret is a credential found in a file; only a fingerprint of its value is kept.
type Secret struct {
	Kind        string        `json:"kind"` // the detector's name for it, e.g. "privatekey", "awsaccesskey", "github"
	Path        string        `json:"path"`
	Layer       digest.Digest `json:"layer,omitempty"`
	Fingerprint string        `json:"fingerprint"` // sha256 of the value, first 16 hex digits
}

// Inventory is everything extracted from one image.
type Inventory struct {
	Packages []Package `json:"packages"`
	Secrets  []Secret  `json:"secrets"`
	Scanner  string    `json:"scanner"` // osv-scalibr's version
}

// Groups are the osv-scalibr extractor groups Gatehouse runs. Secrets are searched separately
// (fileSecrets): osv-scalibr's secret extractor reads only files with certain extensions, and
// an SSH key named id_ed25519 has none.
var Groups = []string{"os", "go", "javascript", "python", "java", "rust", "ruby", "php", "dotnet"}

// Extract lists the packages and secrets in a flattened tree.
func Extract(ctx context.Context, tree *layerfs.Result) (*Inventory, error) {
	plugins, err := list.FromNames(Groups, nil)
	if err != nil {
		return nil, fmt.Errorf("inventory: plugins: %w", err)
	}
	capabs := &plugin.Capabilities{OS: plugin.OSLinux, Network: plugin.NetworkOffline, DirectFS: false, RunningSystem: false}
	plugins = plugin.FilterByCapabilities(plugins, capabs)
	root, err := os.OpenRoot(tree.Root)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	fsys, ok := root.FS().(scalibrfs.FS)
	if !ok {
		return nil, fmt.Errorf("inventory: os.Root's FS lacks ReadDir or Stat")
	}
	res := scalibr.New().Scan(ctx, &scalibr.ScanConfig{
		Plugins:      plugins,
		Capabilities: capabs,
		ScanRoots:    []*scalibrfs.ScanRoot{{FS: fsys}},
		MaxFileSize:  256 << 20,
	})
	if res.Status != nil && res.Status.Status == plugin.ScanStatusFailed {
		return nil, fmt.Errorf("inventory: scan failed: %s", res.Status.FailureReason)
	}
	inv := &Inventory{Packages: []Package{}, Secrets: []Secret{}, Scanner: "osv-scalibr " + res.Version}
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
	secrets, err := fileSecrets(ctx, tree)
	if err != nil {
		return nil, fmt.Errorf("inventory: %w", err)
	}
	inv.Secrets = append(inv.Secrets, secrets...)
	sort.Slice(inv.Packages, func(a, b int) bool {
		x, y := inv.Packages[a], inv.Packages[b]
		return x.Ecosystem+"\x00"+x.Name+"\x00"+x.Version+"\x00"+x.Path < y.Ecosystem+"\x00"+y.Name+"\x00"+y.Version+"\x00"+y.Path
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

// fingerprint identifies a secret without keeping it: the first 16 hex digits of the SHA-256 of
// its value as the detector reported it.
func fingerprint(v any) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%#v", v)))
	return hex.EncodeToString(sum[:8])
}
