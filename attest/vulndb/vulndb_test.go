package vulndb

import (
	"archive/zip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
)

func TestAffects(t *testing.T) {
	rng := func(events ...Event) Affected { return Affected{Ranges: []Range{{Type: "ECOSYSTEM", Events: events}}} }
	tests := []struct {
		name      string
		a         Affected
		eco, ver  string
		want      bool
		wantFixed string
	}{
		{"go below fix", rng(Event{Introduced: "0"}, Event{Fixed: "0.33.0"}), "Go", "0.30.0", true, "0.33.0"},
		{"go at fix", rng(Event{Introduced: "0"}, Event{Fixed: "0.33.0"}), "Go", "0.33.0", false, ""},
		{"go above fix", rng(Event{Introduced: "0"}, Event{Fixed: "0.33.0"}), "Go", "0.34.0", false, ""},
		{"npm inside", rng(Event{Introduced: "3.7.0"}, Event{Fixed: "4.17.19"}), "npm", "4.17.15", true, "4.17.19"},
		{"npm before introduced", rng(Event{Introduced: "3.7.0"}, Event{Fixed: "4.17.19"}), "npm", "3.6.0", false, ""},
		{"semver prerelease", rng(Event{Introduced: "1.0.0"}, Event{Fixed: "1.2.0"}), "npm", "1.2.0-rc.1", true, "1.2.0"},
		{"last_affected inclusive", rng(Event{Introduced: "1.0"}, Event{LastAffected: "1.4"}), "PyPI", "1.4", true, ""},
		{"last_affected above", rng(Event{Introduced: "1.0"}, Event{LastAffected: "1.4"}), "PyPI", "1.4.1", false, ""},
		{"two ranges, second", rng(Event{Introduced: "1.0"}, Event{Fixed: "1.1"}, Event{Introduced: "2.0"}, Event{Fixed: "2.3"}), "npm", "2.1.0", true, "2.3"},
		{"two ranges, between", rng(Event{Introduced: "1.0"}, Event{Fixed: "1.1"}, Event{Introduced: "2.0"}, Event{Fixed: "2.3"}), "npm", "1.5.0", false, ""},
		{"debian epoch and revision", rng(Event{Introduced: "0"}, Event{Fixed: "1:2.36-9+deb12u4"}), "Debian:12", "1:2.36-9+deb12u3", true, "1:2.36-9+deb12u4"},
		{"debian tilde sorts first", rng(Event{Introduced: "0"}, Event{Fixed: "3.0.11-1~deb12u2"}), "Debian:12", "3.0.11-1~deb12u1", true, "3.0.11-1~deb12u2"},
		{"debian unfixed", rng(Event{Introduced: "0"}), "Debian:12", "2.6.1", true, ""},
		{"alpine", rng(Event{Introduced: "0"}, Event{Fixed: "3.1.4-r1"}), "Alpine:v3.20", "3.1.4-r0", true, "3.1.4-r1"},
		{"listed version", Affected{Versions: []string{"1.2.3"}}, "PyPI", "1.2.3", true, ""},
		{"limit", rng(Event{Introduced: "0"}, Event{Limit: "2.0"}), "npm", "2.1.0", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, fixed := tt.a.affects(tt.eco, tt.ver)
			if got != tt.want || fixed != tt.wantFixed {
				t.Errorf("affects(%s %s) = %v %q, want %v %q", tt.eco, tt.ver, got, fixed, tt.want, tt.wantFixed)
			}
		})
	}
}

func TestEcosystemMatches(t *testing.T) {
	for _, tt := range []struct {
		adv, pkg string
		want     bool
	}{{"Debian:12", "Debian:12", true}, {"Debian:11", "Debian:12", false}, {"Debian", "Debian:12", true}, {"npm", "npm", true}, {"Go", "npm", false}} {
		if got := ecosystemMatches(tt.adv, tt.pkg); got != tt.want {
			t.Errorf("ecosystemMatches(%q, %q) = %v", tt.adv, tt.pkg, got)
		}
	}
}

var pkgs = []inventory.Package{
	{Ecosystem: "Go", Name: "golang.org/x/net", Version: "0.30.0", Path: "app/server", Layer: "sha256:aa"},
	{Ecosystem: "npm", Name: "lodash", Version: "4.17.15", Path: "app/node_modules/lodash/package.json"},
	{Ecosystem: "Debian:12", Name: "apt", Version: "2.6.1", Path: "var/lib/dpkg/status"},
	{Ecosystem: "Debian:12", Name: "libc6", Source: "glibc", Version: "2.36-9+deb12u14", Path: "var/lib/dpkg/status"},
	{Ecosystem: "npm", Name: "left-pad", Version: "1.3.0"},
}

func TestImportAndMatch(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "vulndb.sqlite")
	db := Open(path)
	defer db.Close()
	if _, _, err := db.Match(ctx, pkgs); !errors.Is(err, ErrNoDatabase) {
		t.Fatalf("match without a database: %v", err)
	}
	info, err := Import(ctx, path, "testdata/osv", nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Records != 4 || info.Version == "" {
		t.Fatalf("info %+v", info)
	}
	found, got, err := db.Match(ctx, pkgs)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != info.Version {
		t.Errorf("match used version %s, imported %s", got.Version, info.Version)
	}
	byPkg := map[string]Finding{}
	for _, f := range found {
		byPkg[f.Package] = f
	}
	if len(found) != 3 {
		t.Fatalf("%d findings, want 3 (x/net merged, lodash, apt): %+v", len(found), found)
	}
	net := byPkg["golang.org/x/net"]
	if net.Published != "2024-12-18T20:22:26Z" {
		t.Errorf("published = %q, want the earliest of the merged records", net.Published)
	}
	if net.ID != "CVE-2024-45338" || strings.Join(net.Aliases, ",") != "GHSA-w32m-9786-jp63,GO-2024-3333" || net.Fixed != "0.33.0" || net.Severity != Medium || net.Score != 5.3 || net.Layer != "sha256:aa" {
		t.Errorf("x/net finding: %+v", net)
	}
	lodash := byPkg["lodash"]
	if lodash.ID != "CVE-2020-8203" || lodash.Severity != High || lodash.Score != 7.4 || lodash.Fixed != "4.17.19" || lodash.Installed != "4.17.15" {
		t.Errorf("lodash finding: %+v", lodash)
	}
	if apt := byPkg["apt"]; apt.ID != "DEBIAN-CVE-2011-3374" || apt.Severity != Low || apt.Fixed != "" {
		t.Errorf("apt finding: %+v", apt)
	}
	if found[0].Package != "lodash" {
		t.Errorf("findings not ordered by severity: first %s", found[0].Package)
	}
}

func TestImportZipReplacesAtomically(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "vulndb.sqlite")
	if _, err := Import(ctx, path, "testdata/osv/GHSA-p6mc-m468-83gw.json", nil); err != nil {
		t.Fatal(err)
	}
	db := Open(path)
	defer db.Close()
	found, first, err := db.Match(ctx, pkgs)
	// lodash's, and the Debian:12 packages' release, which this database has no advisory for
	if err != nil || len(found) != 2 || found[0].ID != UncoveredID && found[1].ID != UncoveredID {
		t.Fatalf("first database: %d findings %+v, %v", len(found), found, err)
	}
	// an all.zip as osv.dev publishes them
	zp := filepath.Join(dir, "all.zip")
	zf, _ := os.Create(zp)
	zw := zip.NewWriter(zf)
	entries, _ := os.ReadDir("testdata/osv")
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join("testdata/osv", e.Name()))
		w, _ := zw.Create(e.Name())
		w.Write(b)
	}
	zw.Close()
	zf.Close()
	second, err := Import(ctx, path, zp, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.checked = db.checked.Add(-2 * time.Second) // as if a second had passed
	found, now, err := db.Match(ctx, pkgs)
	if err != nil || len(found) != 3 || now.Version != second.Version || now.Version == first.Version {
		t.Fatalf("after the second import: %d findings, version %s (first %s, second %s), %v", len(found), now.Version, first.Version, second.Version, err)
	}
	// a broken source leaves the database in place
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"not":"osv"}`), 0o644)
	if _, err := Import(ctx, path, bad, nil); err == nil {
		t.Fatal("imported a file with no OSV record")
	}
	if info, err := db.Info(); err != nil || info.Version != second.Version {
		t.Errorf("a failed import disturbed the database: %+v %v", info, err)
	}
	if m, _ := filepath.Glob(path + ".import-*"); len(m) != 0 {
		t.Errorf("import left temporary files: %v", m)
	}
}

// TestMatchSourceVersion: an advisory that names a binary package's source package is matched by
// the source's version when dpkg records one of its own ("Source: glibc (2.36-9+deb12u1)" of a
// libc6 whose own version is another), as Debian's advisories give source versions.
func TestMatchSourceVersion(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := os.ReadFile("../../integration/testdata/osv-pkg/DEBIAN-CVE-2023-4911.json") // glibc, fixed in 2.36-9+deb12u3
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "DEBIAN-CVE-2023-4911.json"), b, 0o644)
	path := filepath.Join(t.TempDir(), "vulndb.sqlite")
	if _, err := Import(ctx, path, dir, nil); err != nil {
		t.Fatal(err)
	}
	db := Open(path)
	defer db.Close()
	for _, tt := range []struct {
		p    inventory.Package
		want int
	}{
		{inventory.Package{Ecosystem: "Debian:12", Name: "libc6", Source: "glibc", Version: "2.36-9+deb12u1"}, 1},
		{inventory.Package{Ecosystem: "Debian:12", Name: "libc6", Source: "glibc", Version: "2.36-9+deb12u9", SourceVersion: "2.36-9+deb12u1"}, 1},
		{inventory.Package{Ecosystem: "Debian:12", Name: "libc6", Source: "glibc", Version: "1:2.36-9+deb12u1", SourceVersion: "2.36-9+deb12u9"}, 0},
	} {
		found, _, err := db.Match(ctx, []inventory.Package{tt.p})
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != tt.want {
			t.Errorf("%+v: %d findings, want %d", tt.p, len(found), tt.want)
		}
	}
}

// TestMatchUncoveredRelease: the packages of a Debian or Ubuntu release the database has no
// advisory for (the image's os-release chooses it: VERSION_ID="99") make one GH-VULN-UNCOVERED
// finding per release, instead of matching nothing.
func TestMatchUncoveredRelease(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "vulndb.sqlite")
	if _, err := Import(ctx, path, "testdata/osv", nil); err != nil {
		t.Fatal(err)
	}
	db := Open(path)
	defer db.Close()
	found, _, err := db.Match(ctx, []inventory.Package{
		{Ecosystem: "Debian:99", Name: "apt", Version: "2.6.1", Path: "var/lib/dpkg/status"},
		{Ecosystem: "Debian:99", Name: "libc6", Source: "glibc", Version: "2.36-9+deb12u1", Path: "var/lib/dpkg/status"},
		{Ecosystem: "Ubuntu:99.04", Name: "apt", Version: "2.6.1", Path: "var/lib/dpkg/status"},
		{Ecosystem: "Debian:12", Name: "apt", Version: "2.6.1", Path: "var/lib/dpkg/status"},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range found {
		got[f.ID+" "+f.Ecosystem] = true
	}
	if len(found) != 3 || !got[UncoveredID+" Debian:99"] || !got[UncoveredID+" Ubuntu:99.04"] || !got["DEBIAN-CVE-2011-3374 Debian:12"] {
		t.Errorf("findings %v; want one uncovered finding for each of Debian:99 and Ubuntu:99.04, and apt's in Debian:12", got)
	}
}
