package inventory

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/osv-scalibr/extractor"
	"github.com/google/osv-scalibr/extractor/filesystem"
	"github.com/google/osv-scalibr/extractor/filesystem/language/javascript/packagejson"
	"github.com/google/osv-scalibr/extractor/filesystem/language/python/wheelegg"
	"github.com/google/osv-scalibr/extractor/filesystem/os/dpkg"
	scalibrfs "github.com/google/osv-scalibr/fs"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"

	cpb "github.com/google/osv-scalibr/binary/proto/config_go_proto"
)

// metaEntry is one tar entry of a test layer: a file, or a symlink when link is set.
type metaEntry struct{ name, body, link string }

func metaLayer(t testing.TB, entries ...metaEntry) layerfs.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.body))}
		if e.link != "" {
			h = &tar.Header{Name: e.name, Typeflag: tar.TypeSymlink, Linkname: e.link, Mode: 0o777}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	b := buf.Bytes()
	return layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

// readTree flattens layers and reads the metadata.
func readTree(t testing.TB, layers ...layerfs.Layer) *Inventory {
	t.Helper()
	// every file and symlink in the tree (which of them keep wants is TestMetadataFile's)
	return readTreeEnv(t, nil, layerfs.Options{}, layers...)
}

func TestMetadataFile(t *testing.T) {
	tests := []struct {
		path string
		want bool
	}{
		{"app/node_modules/lodash/package.json", true},
		{"app/package-lock.json", true},
		{"app/node_modules/x/package-lock.json", false},
		{"app/node_modules/lodash/index.js", false},
		{"sp/requests-2.19.1.dist-info/METADATA", true},
		{"sp/requests-2.19.1.dist-info/PKG-INFO", true},
		{"sp/requests-2.19.1.dist-info/RECORD", false},
		{"sp/requests.egg-info/PKG-INFO", true},
		{"sp/requests-2.19.1-py3.11.egg/EGG-INFO/PKG-INFO", true},
		{"sp/x/EGG-INFO/PKG-INFO", false},
		{"sp/requests-2.19.1.egg-info", true},
		{"sp/requests-2.19.1-py3.whl", true},
		{"sp/METADATA", false},
		{"var/lib/dpkg/status", true},
		{"var/lib/dpkg/status-old", false},
		{"var/lib/dpkg/updates/0000", true},
		{"var/lib/dpkg/updates/tmp.i", false},
		{"var/lib/dpkg/status.d/base", true},
		{"var/lib/dpkg/status.d/base.md5sums", false},
		{"usr/lib/opkg/status", true},
		{"etc/passwd", false},
	}
	for _, tt := range tests {
		if got := metadataFile(tt.path); got != tt.want {
			t.Errorf("metadataFile(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}
}

// pkgLine is a package as a comparable line.
func pkgLine(p Package) string {
	return strings.Join([]string{p.Ecosystem, p.Name, p.Version, p.Source, p.PURL, p.Path}, " ")
}

func linesOf(inv *Inventory, extractor string) []string {
	var out []string
	for _, p := range inv.Packages {
		if extractor == "" || p.Extractor == extractor {
			out = append(out, pkgLine(p))
		}
	}
	sort.Strings(out)
	return out
}

const debianRelease = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n"

// Each evasion of issue 9 against the tree: the package the tool loads is listed with the
// version the tool sees (or the file is unread where the honest answer is that we cannot tell).
func TestMetadataEvasions(t *testing.T) {
	status := func(stanzas ...string) string { return strings.Join(stanzas, "\n") }
	libc := "Package: libc6\nStatus: install ok installed\nSource: glibc\nVersion: 2.36-9+deb12u1\nArchitecture: amd64\nMaintainer: m\nDescription: d\n"
	fixed := strings.Replace(libc, "2.36-9+deb12u1", "2.36-9+deb12u10", 1)
	other := "Package: foo\nStatus: install  ok\tinstalled\nVersion: 1.0\nMaintainer: m\nDescription: d\n"
	lodash := func(body string) metaEntry {
		return metaEntry{name: "app/node_modules/lodash/package.json", body: body}
	}
	meta := func(body string) metaEntry {
		return metaEntry{name: "sp/requests-2.19.1.dist-info/METADATA", body: body}
	}
	osr := metaEntry{name: "etc/os-release", body: debianRelease}
	tests := []struct {
		name       string
		entries    []metaEntry
		want       []string // package lines (Ecosystem Name Version Source PURL Path), in order
		wantUnread string   // a part of the one Unread's reason, "" for none
	}{
		{"npm: a Version key beside version", []metaEntry{lodash(`{"name":"lodash","version":"4.17.15","Version":"4.17.21"}`)},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json"}, ""},
		{"npm: a BOM", []metaEntry{lodash("\xef\xbb\xbf" + `{"name":"lodash","version":"4.17.15"}`)},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json"}, ""},
		{"npm: the name Lodash", []metaEntry{lodash(`{"name":"Lodash","version":"=4.17.15"}`)},
			[]string{"npm Lodash 4.17.15  pkg:npm/Lodash@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json", "npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json"}, ""},
		{"npm: no name", []metaEntry{lodash(`{"version":"v4.17.15"}`)},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json"}, ""},
		{"npm: a scoped package", []metaEntry{{name: "app/node_modules/@scope/pkg/package.json", body: `{"name":"@scope/pkg","version":"1.0.0"}`}},
			[]string{"npm @scope/pkg 1.0.0  pkg:npm/%40scope/pkg@1.0.0?source=UNKNOWN app/node_modules/@scope/pkg/package.json"}, ""},
		{"npm: two version keys", []metaEntry{lodash(`{"name":"lodash","version":"4.17.21","version":"4.17.15"}`)}, nil, `2 "version" keys`},
		{"npm: a version semver cannot read", []metaEntry{lodash(`{"name":"lodash","version":"4.17"}`)}, nil, "semver"},
		{"npm: a pnpm link", []metaEntry{
			{name: "app/node_modules/.pnpm/lodash@4.17.15/node_modules/lodash/package.json", body: `{"name":"lodash","version":"4.17.15"}`},
			{name: "app/node_modules/lodash", link: ".pnpm/lodash@4.17.15/node_modules/lodash"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN app/node_modules/.pnpm/lodash@4.17.15/node_modules/lodash/package.json",
				"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json"}, ""},
		{"npm: a link to a package named otherwise", []metaEntry{
			{name: "app/vendor/lodash-x/package.json", body: `{"name":"lodash-x","version":"4.17.15"}`},
			{name: "app/node_modules/lodash", link: "/app/vendor/lodash-x"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json",
				"npm lodash-x 4.17.15  pkg:npm/lodash-x@4.17.15?source=UNKNOWN app/node_modules/lodash/package.json",
				"npm lodash-x 4.17.15  pkg:npm/lodash-x@4.17.15?source=UNKNOWN app/vendor/lodash-x/package.json"}, ""},
		{"npm: a broken fixture inside a package is no package", []metaEntry{
			{name: "app/node_modules/resolve/test/resolver/malformed_package_json/package.json", body: `{"main": "index.js",}`}}, nil, ""},
		// Node looks a package up by name in every module directory it searches, wherever the
		// kernel resolves it: the identity is the directory's name there
		{"npm: node_modules a symlink to ../opt/deps (no name)", []metaEntry{
			{name: "opt/deps/lodash/package.json", body: `{"version":"4.17.15","main":"index.js"}`},
			{name: "app/node_modules", link: "../opt/deps"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN opt/deps/lodash/package.json"}, ""},
		{"npm: node_modules a symlink to /opt/deps (absolute: in the image root)", []metaEntry{
			{name: "opt/deps/lodash/package.json", body: `{"version":"4.17.15","main":"index.js"}`},
			{name: "app/node_modules", link: "/opt/deps"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN opt/deps/lodash/package.json"}, ""},
		{"npm: app a symlink to /srv/app whose node_modules is a directory", []metaEntry{
			{name: "srv/app/node_modules/lodash/package.json", body: `{"version":"4.17.15"}`},
			{name: "app", link: "/srv/app"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN srv/app/node_modules/lodash/package.json"}, ""},
		{"npm: node_modules a symlink to a directory whose lodash is a symlink too", []metaEntry{
			{name: "opt/store/lodash-4.17.15/package.json", body: `{"version":"4.17.15"}`},
			{name: "opt/deps/lodash", link: "../store/lodash-4.17.15"},
			{name: "app/node_modules", link: "/opt/deps"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN opt/deps/lodash/package.json"}, ""},
		{"npm: a scoped package in a directory node_modules links to", []metaEntry{
			{name: "opt/deps/@scope/pkg/package.json", body: `{"version":"1.0.0"}`},
			{name: "app/node_modules", link: "../opt/deps"}},
			[]string{"npm @scope/pkg 1.0.0  pkg:npm/%40scope/pkg@1.0.0?source=UNKNOWN opt/deps/@scope/pkg/package.json"}, ""},
		{"npm: a scope a symlink whose package is a symlink", []metaEntry{
			{name: "opt/store/pkg-1/package.json", body: `{"version":"1.0.0"}`},
			{name: "opt/scope/pkg", link: "../store/pkg-1"},
			{name: "app/node_modules/@scope", link: "/opt/scope"}},
			[]string{"npm @scope/pkg 1.0.0  pkg:npm/%40scope/pkg@1.0.0?source=UNKNOWN app/node_modules/@scope/pkg/package.json"}, ""},
		{"npm: a version semver cannot read in a directory node_modules links to", []metaEntry{
			{name: "opt/deps/lodash/package.json", body: `{"version":"4.17"}`},
			{name: "app/node_modules", link: "../opt/deps"}}, nil, "Node loads lodash"},
		{"npm: a VS Code marker in a directory node_modules links to", []metaEntry{
			{name: "opt/deps/lodash/package.json", body: `{"name":"lodash","version":"4.17.15","contributes":{}}`},
			{name: "app/node_modules", link: "/opt/deps"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN opt/deps/lodash/package.json"}, ""},
		{"npm: engines.vscode in a directory node_modules links to", []metaEntry{
			{name: "opt/deps/lodash/package.json", body: `{"name":"lodash","version":"4.17.15","engines":{"vscode":"^1.0.0"}}`},
			{name: "app/node_modules", link: "../opt/deps"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN opt/deps/lodash/package.json"}, ""},
		{"npm: $HOME/.node_modules", []metaEntry{{name: "root/.node_modules/lodash/package.json", body: `{"version":"4.17.15"}`}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN root/.node_modules/lodash/package.json"}, ""},
		{"npm: $HOME/.node_libraries, a scoped package with a VS Code marker", []metaEntry{
			{name: "home/app/.node_libraries/@scope/pkg/package.json", body: `{"name":"@scope/pkg","version":"1.0.0","contributes":{}}`}},
			[]string{"npm @scope/pkg 1.0.0  pkg:npm/%40scope/pkg@1.0.0?source=UNKNOWN home/app/.node_libraries/@scope/pkg/package.json"}, ""},
		{"npm: $HOME/.node_modules a symlink to /opt/deps", []metaEntry{
			{name: "opt/deps/lodash/package.json", body: `{"version":"4.17.15"}`},
			{name: "root/.node_modules", link: "/opt/deps"}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN opt/deps/lodash/package.json"}, ""},
		{"npm: $PREFIX/lib/node of /usr/bin/node", []metaEntry{{name: "usr/lib/node/lodash/package.json", body: `{"version":"4.17.15"}`}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN usr/lib/node/lodash/package.json"}, ""},
		{"npm: Debian's /usr/share/nodejs and /usr/lib/x86_64-linux-gnu/nodejs", []metaEntry{
			{name: "usr/share/nodejs/lodash/package.json", body: `{"version":"4.17.15"}`},
			{name: "usr/lib/x86_64-linux-gnu/nodejs/@scope/pkg/package.json", body: `{"version":"1.0.0"}`}},
			[]string{"npm @scope/pkg 1.0.0  pkg:npm/%40scope/pkg@1.0.0?source=UNKNOWN usr/lib/x86_64-linux-gnu/nodejs/@scope/pkg/package.json",
				"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN usr/share/nodejs/lodash/package.json"}, ""},
		{"npm: /usr/local/lib/nodejs", []metaEntry{{name: "usr/local/lib/nodejs/lodash/package.json", body: `{"version":"4.17.15"}`}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN usr/local/lib/nodejs/lodash/package.json"}, ""},
		{"npm: $PREFIX/lib/node of /usr/local/bin/node, a symlink to /opt/node-v20/bin/node", []metaEntry{
			{name: "opt/node-v20/bin/node", body: "\x7fELF"},
			{name: "usr/local/bin/node", link: "/opt/node-v20/bin/node"},
			{name: "opt/node-v20/lib/node/lodash/package.json", body: `{"version":"4.17.15"}`}},
			[]string{"npm lodash 4.17.15  pkg:npm/lodash@4.17.15?source=UNKNOWN opt/node-v20/lib/node/lodash/package.json"}, ""},
		{"npm: a lib/node where no node is installed is no module directory", []metaEntry{
			{name: "srv/src/lib/node/tool/package.json", body: `{"main":"index.js"}`}}, nil, ""},
		{"npm: a lock with a Version key", []metaEntry{{name: "app/package-lock.json", body: `{"lockfileVersion":3,"packages":{"node_modules/lodash":{"version":"4.17.15","Version":"4.17.21"}}}`}}, nil, `"Version"`},
		{"PyPI: a 70 KB Summary", []metaEntry{meta("Name: requests\nSummary: " + strings.Repeat("s", 70000) + "\nVersion: 2.19.1\n")},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1.dist-info/METADATA"}, ""},
		{"PyPI: a folded Version", []metaEntry{meta("Name: requests\nVersion:\n 2.19.1\n")},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1.dist-info/METADATA"}, ""},
		{"PyPI: the directory's name", []metaEntry{meta("Name: evil\nVersion: 2.19.1\n")},
			[]string{"PyPI evil 2.19.1  pkg:pypi/evil@2.19.1 sp/requests-2.19.1.dist-info/METADATA", "PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1.dist-info/METADATA"}, ""},
		{"PyPI: PKG-INFO when METADATA is empty", []metaEntry{meta(""), {name: "sp/requests-2.19.1.dist-info/PKG-INFO", body: "Name: requests\nVersion: 2.19.1\n"}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1.dist-info/PKG-INFO"}, ""},
		{"PyPI: a symlinked dist-info", []metaEntry{{name: "sp/real/requests.dist/METADATA", body: "Name: requests\nVersion: 2.19.1\n"},
			{name: "sp/requests-2.19.1.dist-info", link: "real/requests.dist"}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1.dist-info/METADATA"}, ""},
		{"PyPI: a dist-info linked to another one", []metaEntry{{name: "sp/evil-1.0.dist-info/METADATA", body: "Name: evil\nVersion: 2.19.1\n"},
			{name: "sp/requests-2.19.1.dist-info", link: "evil-1.0.dist-info"}},
			[]string{"PyPI evil 2.19.1  pkg:pypi/evil@2.19.1 sp/evil-1.0.dist-info/METADATA", "PyPI evil 2.19.1  pkg:pypi/evil@2.19.1 sp/requests-2.19.1.dist-info/METADATA",
				"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1.dist-info/METADATA"}, ""},
		{"PyPI: an egg-info file", []metaEntry{{name: "sp/requests-2.19.1-py3.11.egg-info", body: "Metadata-Version: 1.1\nName: requests\nVersion: 2.19.1\n"}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1-py3.11.egg-info"}, ""},
		{"PyPI: an egg", []metaEntry{{name: "sp/requests-2.19.1-py3.11.egg", body: string(zipOf(t, map[string]string{"EGG-INFO/PKG-INFO": "Version:\n 2.19.1\n"}))}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 sp/requests-2.19.1-py3.11.egg"}, ""},
		{"PyPI: a zip named by a .pth line", []metaEntry{{name: "sp/deps.pth", body: "/opt/deps.zip\n"},
			{name: "opt/deps.zip", body: string(zipOf(t, map[string]string{"requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion: 2.19.1\n"}))}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 opt/deps.zip"}, ""},
		{"PyPI: a zip of any name", []metaEntry{{name: "opt/deps.dat", body: string(zipOf(t, map[string]string{"requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion: 2.19.1\n"}))}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 opt/deps.dat"}, ""},
		{"PyPI: a .pyz with a shell script before it", []metaEntry{{name: "usr/local/bin/app", body: "#!/bin/sh\nexec python3 \"$0\"\n" +
			string(zipOf(t, map[string]string{"__main__.py": "", "requests-2.19.1.dist-info/PKG-INFO": "Name: requests\nVersion: 2.19.1\n"}))}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 usr/local/bin/app"}, ""},
		{"PyPI: a zip's dist-info named for another version (pip lists the name's)", []metaEntry{{name: "opt/deps.zip", body: string(zipOf(t, map[string]string{"requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion: 2.31.0\n"}))}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 opt/deps.zip", "PyPI requests 2.31.0  pkg:pypi/requests@2.31.0 opt/deps.zip"}, ""},
		{"PyPI: a zip with metadata below its root is nothing to Python", []metaEntry{{name: "opt/deps.zip", body: string(zipOf(t, map[string]string{"lib/requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion: 2.19.1\n"}))}},
			nil, ""},
		{"PyPI: a zip's metadata that cannot be read", []metaEntry{{name: "opt/deps.zip", body: string(zipOf(t, map[string]string{"requests.dist-info/METADATA": "Name: requests\n"}))}},
			nil, "no Version"},
		{"PyPI: an unzipped egg's egg-info in lower case (importlib lower-cases names)", []metaEntry{{name: "opt/requests-2.19.1.egg/egg-info/PKG-INFO", body: "Name: requests\nVersion: 2.19.1\n"}},
			[]string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 opt/requests-2.19.1.egg/egg-info/PKG-INFO"}, ""},
		{"PyPI: a BOM", []metaEntry{meta("\ufeffName: requests\nVersion: 2.19.1\n")}, nil, "no Version header"},
		{"Debian: an earlier Status with two spaces", []metaEntry{osr, {name: "var/lib/dpkg/status", body: status(other, libc)}},
			[]string{"Debian:12 foo 1.0  pkg:deb/debian/foo@1.0?distro=bookworm var/lib/dpkg/status",
				"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=bookworm&source=glibc var/lib/dpkg/status"}, ""},
		{"Debian: half-configured", []metaEntry{osr, {name: "var/lib/dpkg/status", body: strings.Replace(libc, "ok installed", "ok half-configured", 1)}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=bookworm&source=glibc var/lib/dpkg/status"}, ""},
		{"Debian: only usr/lib/os-release", []metaEntry{{name: "usr/lib/os-release", body: debianRelease}, {name: "var/lib/dpkg/status", body: libc}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=bookworm&source=glibc var/lib/dpkg/status"}, ""},
		{"Debian: only etc/debian_version", []metaEntry{{name: "etc/debian_version", body: "12.5\n"}, {name: "var/lib/dpkg/status", body: libc}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=12&source=glibc var/lib/dpkg/status"}, ""},
		{"Debian: a single-quoted VERSION_ID", []metaEntry{{name: "etc/os-release", body: "ID='debian'\nVERSION_ID='12'\n"}, {name: "var/lib/dpkg/status", body: libc}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=12&source=glibc var/lib/dpkg/status"}, ""},
		{"Debian: a point release in VERSION_ID (advisories name the major release)", []metaEntry{{name: "etc/os-release", body: "ID=debian\nVERSION_ID=\"12.4\"\n"}, {name: "var/lib/dpkg/status", body: libc}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=12&source=glibc var/lib/dpkg/status"}, ""},
		{"Debian: a distribution advisories do not cover", []metaEntry{{name: "etc/os-release", body: "ID=mydistro\nVERSION_ID=12\n"}, {name: "var/lib/dpkg/status", body: libc}},
			[]string{" libc6 2.36-9+deb12u1 glibc pkg:deb/mydistro/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=12&source=glibc var/lib/dpkg/status"}, "a release advisories are not published for"},
		{"Debian: an os-release without ID", []metaEntry{{name: "etc/os-release", body: "VERSION_ID=12\n"}, {name: "var/lib/dpkg/status", body: libc}},
			[]string{"Linux:12 libc6 2.36-9+deb12u1 glibc pkg:deb/linux/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=12&source=glibc var/lib/dpkg/status"}, "a release advisories are not published for"},
		{"Debian: no release at all", []metaEntry{{name: "var/lib/dpkg/status", body: libc}},
			[]string{"Linux libc6 2.36-9+deb12u1 glibc pkg:deb/linux/libc6@2.36-9%2Bdeb12u1?arch=amd64&source=glibc var/lib/dpkg/status"}, "which release"},
		{"Debian: the journal replaces a record", []metaEntry{osr, {name: "var/lib/dpkg/status", body: fixed}, {name: "var/lib/dpkg/updates/0000", body: libc},
			{name: "var/lib/dpkg/updates/tmp.i", body: other}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=bookworm&source=glibc var/lib/dpkg/updates/0000"}, ""},
		{"Debian: names in capitals", []metaEntry{osr, {name: "var/lib/dpkg/status", body: strings.NewReplacer("libc6", "LIBC6", "glibc", "GLIBC").Replace(libc)}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=bookworm&source=glibc var/lib/dpkg/status"}, ""},
		{"Debian: a distroless status.d", []metaEntry{osr, {name: "var/lib/dpkg/status.d/libc6", body: strings.Replace(libc, "Status: install ok installed\n", "", 1)},
			{name: "var/lib/dpkg/status.d/libc6.md5sums", body: "x"}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=bookworm&source=glibc var/lib/dpkg/status.d/libc6"}, ""},
		{"Debian: a duplicate field", []metaEntry{osr, {name: "var/lib/dpkg/status", body: libc + "Version: 2.36-9+deb12u10\n"}},
			[]string{"Debian:12 libc6 2.36-9+deb12u1 glibc pkg:deb/debian/libc6@2.36-9%2Bdeb12u1?arch=amd64&distro=bookworm&source=glibc var/lib/dpkg/status"}, "second Version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := readTree(t, metaLayer(t, tt.entries...))
			got := linesOf(inv, "")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("packages:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			switch {
			case tt.wantUnread == "" && len(inv.Unread) > 0:
				t.Errorf("unread: %+v", inv.Unread)
			case tt.wantUnread != "" && (len(inv.Unread) != 1 || !strings.Contains(inv.Unread[0].Reason, tt.wantUnread)):
				t.Errorf("unread %+v, want one saying %q", inv.Unread, tt.wantUnread)
			}
			for _, p := range inv.Packages {
				if p.Layer == "" {
					t.Errorf("%s: no layer", pkgLine(p))
				}
			}
		})
	}
}

// scalibrShape is what Finish lists for an osv-scalibr package (its conversion, repeated).
func scalibrShape(p *extractor.Package) Package {
	pkg := Package{Ecosystem: p.Ecosystem().String(), Name: p.Name, Version: p.Version, Path: p.Location.PathOrEmpty()}
	if u := p.PURL(); u != nil {
		pkg.PURL = u.String()
		for _, q := range u.Qualifiers {
			if q.Key == "source" && q.Value != "" && q.Value != "UNKNOWN" && q.Value != p.Name {
				pkg.Source = q.Value
			}
		}
	}
	return pkg
}

// scalibrRead runs one osv-scalibr extractor on one file of a directory.
func scalibrRead(t *testing.T, x filesystem.Extractor, dir, p string) []Package {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, p))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	inv, err := x.Extract(context.Background(), &filesystem.ScanInput{FS: scalibrfs.DirFS(dir), Path: p, Root: dir, Reader: f, Info: fi})
	if err != nil {
		return nil
	}
	var out []Package
	for _, pk := range inv.Packages {
		out = append(out, scalibrShape(pk))
	}
	return out
}

// Real metadata reads as osv-scalibr reads it: this machine's dpkg database (every package:
// ecosystem, name, version, source and PURL, as TestScanRealImage and the matching expect),
// its Python distributions' METADATA and npm's own node_modules.
func TestMetadataRealFiles(t *testing.T) {
	status, err := os.ReadFile("/var/lib/dpkg/status")
	if err != nil {
		t.Fatalf("this machine's dpkg status is the test's Debian content: %v", err)
	}
	osr, _ := os.ReadFile("/etc/os-release")
	entries := []metaEntry{{name: "var/lib/dpkg/status", body: string(status)}, {name: "etc/os-release", body: string(osr)}}
	scalibrDir := t.TempDir()
	write := func(p string, b []byte) {
		os.MkdirAll(filepath.Dir(filepath.Join(scalibrDir, p)), 0o755)
		os.WriteFile(filepath.Join(scalibrDir, p), b, 0o644)
	}
	write("var/lib/dpkg/status", status)
	write("etc/os-release", osr)

	var pyFiles, npmFiles []string
	for _, glob := range []string{"/root/.pyenv/versions/*/lib/python*/site-packages/*.dist-info/METADATA", "/usr/lib/python3/dist-packages/*.dist-info/METADATA",
		"/usr/lib/python3/dist-packages/*.egg-info/PKG-INFO"} {
		m, _ := filepath.Glob(glob)
		pyFiles = append(pyFiles, m...)
	}
	for _, glob := range []string{"/usr/lib/node_modules/npm/node_modules/*/package.json", "/usr/lib/node_modules/npm/node_modules/@*/*/package.json"} {
		m, _ := filepath.Glob(glob)
		npmFiles = append(npmFiles, m...)
	}
	for _, f := range append(pyFiles, npmFiles...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		p := strings.TrimPrefix(f, "/")
		entries = append(entries, metaEntry{name: p, body: string(b)})
		write(p, b)
	}
	inv := readTree(t, metaLayer(t, entries...))
	if len(inv.Unread) > 0 {
		t.Errorf("real metadata unread: %+v", inv.Unread)
	}
	mine := map[string]bool{}
	for _, l := range linesOf(inv, "") {
		mine[l] = true
	}
	check := func(what string, want []Package) int {
		n := 0
		for _, p := range want {
			if !mine[pkgLine(p)] {
				t.Errorf("%s: osv-scalibr lists %s; the reader does not", what, pkgLine(p))
			}
			n++
		}
		return n
	}
	dx, _ := dpkg.New(&cpb.PluginConfig{})
	deb := check("dpkg", scalibrRead(t, dx, scalibrDir, "var/lib/dpkg/status"))
	if got := len(linesOf(inv, dpkgExtractor)); got != deb {
		t.Errorf("the reader lists %d Debian packages, osv-scalibr %d", got, deb)
	}
	wx, _ := wheelegg.New(&cpb.PluginConfig{})
	py := 0
	for _, f := range pyFiles {
		py += check("wheelegg", scalibrRead(t, wx, scalibrDir, strings.TrimPrefix(f, "/")))
	}
	nx, _ := packagejson.New(&cpb.PluginConfig{})
	js := 0
	for _, f := range npmFiles {
		p := strings.TrimPrefix(f, "/")
		id, _ := npmIdentity(p)
		var want []Package
		for _, pk := range scalibrRead(t, nx, scalibrDir, p) {
			if pk.Name == id { // osv-scalibr's name is the declared one; the reader's the directory's
				want = append(want, pk)
			}
		}
		js += check("packagejson", want)
	}
	if deb < 50 {
		t.Errorf("%d Debian packages compared, want this machine's (hundreds)", deb)
	}
	t.Logf("compared with osv-scalibr: %d Debian packages, %d Python distributions (of %d files), %d npm packages (of %d files)", deb, py, len(pyFiles), js, len(npmFiles))
}

// Past dpkgMaxPackages installed packages the database is unread and the rest not listed.
func TestMetadataDpkgBound(t *testing.T) {
	b, _ := io.ReadAll(&manyPackages{n: dpkgMaxPackages + 5})
	inv := readTree(t, metaLayer(t, metaEntry{name: "etc/os-release", body: debianRelease}, metaEntry{name: "var/lib/dpkg/status", body: string(b)}))
	if len(inv.Packages) != dpkgMaxPackages || len(inv.Unread) != 1 || !strings.Contains(inv.Unread[0].Reason, "installed packages") {
		t.Errorf("%d packages listed, unread %+v", len(inv.Packages), inv.Unread)
	}
}

// readTreeEnv flattens layers with opts and reads the metadata with the image config's Env.
func readTreeEnv(t testing.TB, env []string, opts layerfs.Options, layers ...layerfs.Layer) *Inventory {
	t.Helper()
	dir := t.TempDir()
	tree, err := layerfs.Flatten(context.Background(), dir, layers, layerfs.DefaultLimits, opts)
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	inv := &Inventory{}
	if err := readMetadata(context.Background(), root, tree, inv, env); err != nil {
		t.Fatal(err)
	}
	return inv
}

// The module directories Node finds by the image config's Env (NODE_PATH), and those reached
// through symlinks, read from every file and symlink and from the tree a scan makes (keep: the
// package.json files at their own paths, no symlink on disk).
func TestMetadataNpmModuleDirs(t *testing.T) {
	const lodash = `{"version":"4.17.15","main":"index.js"}`
	line := func(name, version, p string) string {
		return "npm " + name + " " + version + "  pkg:npm/" + strings.Replace(name, "@", "%40", 1) + "@" + version + "?source=UNKNOWN " + p
	}
	tests := []struct {
		name       string
		env        []string
		entries    []metaEntry
		want       []string
		wantUnread string
	}{
		{"NODE_PATH=/opt/deps", []string{"PATH=/usr/bin", "NODE_PATH=/opt/deps"},
			[]metaEntry{{name: "opt/deps/lodash/package.json", body: lodash}},
			[]string{line("lodash", "4.17.15", "opt/deps/lodash/package.json")}, ""},
		{"no NODE_PATH: opt/deps is no module directory", []string{"PATH=/usr/bin"},
			[]metaEntry{{name: "opt/deps/lodash/package.json", body: lodash}}, nil, ""},
		{"NODE_PATH of several directories, empty ones, a relative one and one through a symlink", []string{"NODE_PATH=/nowhere::srv/lib:/app/deps/"},
			[]metaEntry{{name: "srv/lib/@scope/pkg/package.json", body: `{"name":"@scope/pkg","version":"1.0.0","contributes":{}}`},
				{name: "srv/app/deps/lodash/package.json", body: `{"name":"lodash","version":"4.17.15","engines":{"vscode":"*"}}`},
				{name: "app", link: "/srv/app"}},
			[]string{line("@scope/pkg", "1.0.0", "srv/lib/@scope/pkg/package.json"), line("lodash", "4.17.15", "srv/app/deps/lodash/package.json")}, ""},
		{"NODE_PATH twice: both are read", []string{"NODE_PATH=/opt/a", "NODE_PATH=/opt/b"},
			[]metaEntry{{name: "opt/a/lodash/package.json", body: lodash}, {name: "opt/b/lodash/package.json", body: lodash}},
			[]string{line("lodash", "4.17.15", "opt/a/lodash/package.json"), line("lodash", "4.17.15", "opt/b/lodash/package.json")}, ""},
		{"NODE_PATH whose lodash is a symlink", []string{"NODE_PATH=/opt/deps"},
			[]metaEntry{{name: "opt/store/l/package.json", body: lodash}, {name: "opt/deps/lodash", link: "../store/l"}},
			[]string{line("lodash", "4.17.15", "opt/deps/lodash/package.json")}, ""},
		{"NODE_PATH and a version semver cannot read", []string{"NODE_PATH=/opt/deps"},
			[]metaEntry{{name: "opt/deps/lodash/package.json", body: `{"version":"4.17"}`}}, nil, "Node loads lodash"},
		{"node_modules a symlink to a directory whose lodash is a symlink", nil,
			[]metaEntry{{name: "opt/store/l/package.json", body: lodash}, {name: "opt/deps/lodash", link: "/opt/store/l"},
				{name: "app/node_modules", link: "../opt/deps"}},
			[]string{line("lodash", "4.17.15", "opt/deps/lodash/package.json")}, ""},
		{"a scope a symlink whose package is a symlink", nil,
			[]metaEntry{{name: "opt/store/pkg-1/package.json", body: `{"version":"1.0.0"}`}, {name: "opt/scope/pkg", link: "../store/pkg-1"},
				{name: "app/node_modules/@scope", link: "/opt/scope"}},
			[]string{line("@scope/pkg", "1.0.0", "app/node_modules/@scope/pkg/package.json")}, ""},
		{"$HOME/.node_modules a symlink", nil,
			[]metaEntry{{name: "opt/deps/lodash/package.json", body: lodash}, {name: "root/.node_modules", link: "/opt/deps"}},
			[]string{line("lodash", "4.17.15", "opt/deps/lodash/package.json")}, ""},
		{"/usr/share/nodejs a symlink (Debian)", nil,
			[]metaEntry{{name: "opt/js/lodash/package.json", body: lodash}, {name: "usr/share/nodejs", link: "../../opt/js"}},
			[]string{line("lodash", "4.17.15", "opt/js/lodash/package.json")}, ""},
	}
	for _, tt := range tests {
		for _, mode := range []struct {
			name string
			opts layerfs.Options
		}{{"every file", layerfs.Options{}}, {"as scanned", layerfs.Options{Keep: keep}}} {
			t.Run(tt.name+"/"+mode.name, func(t *testing.T) {
				inv := readTreeEnv(t, tt.env, mode.opts, metaLayer(t, tt.entries...))
				got := linesOf(inv, "")
				if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
					t.Errorf("packages:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
				}
				switch {
				case tt.wantUnread == "" && len(inv.Unread) > 0:
					t.Errorf("unread: %+v", inv.Unread)
				case tt.wantUnread != "" && (len(inv.Unread) != 1 || !strings.Contains(inv.Unread[0].Reason, tt.wantUnread)):
					t.Errorf("unread %+v, want one saying %q", inv.Unread, tt.wantUnread)
				}
			})
		}
	}
}
