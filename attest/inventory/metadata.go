package inventory

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/google/osv-scalibr/extractor"
	npmmeta "github.com/google/osv-scalibr/extractor/filesystem/language/javascript/packagejson/metadata"
	dpkgmeta "github.com/google/osv-scalibr/extractor/filesystem/os/dpkg/metadata"
	"github.com/google/osv-scalibr/plugin"
	"github.com/google/osv-scalibr/purl"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// Gatehouse reads npm, PyPI and dpkg package metadata itself (npm.go, python.go, dpkg.go): each
// is read as the tool that loads it reads it, because osv-scalibr's extractors for these files
// read them otherwise and so miss packages that Node, pip and dpkg see (issue 9). Those
// extractors are left out of the plugins; the packages are listed in the shape osv-scalibr gives
// them (ecosystem, name, PURL, source), computed by osv-scalibr's own code, so that advisories
// match them the same way.

// replacedExtractors are osv-scalibr's extractors whose files Gatehouse reads itself.
var replacedExtractors = map[string]bool{"javascript/packagejson": true, "python/wheelegg": true, "os/dpkg": true}

// withoutReplaced drops the replaced extractors from a plugin list.
func withoutReplaced(ps []plugin.Plugin) []plugin.Plugin {
	out := ps[:0:0]
	for _, p := range ps {
		if !replacedExtractors[p.Name()] {
			out = append(out, p)
		}
	}
	return out
}

// metadataFile says whether the tree must hold a file for the readers here: package databases
// and metadata files (at their own paths, or at the paths a symlink gives them: layerfs asks
// about those too).
func metadataFile(p string) bool {
	base := path.Base(p)
	dir := path.Dir(p)
	switch {
	case base == "package.json", npmLock(p):
		return true
	case p == "var/lib/dpkg/status", p == "usr/lib/opkg/status", dpkgJournal(p),
		dir == "var/lib/dpkg/status.d" && !strings.HasSuffix(base, ".md5sums"):
		return true
	case pyZip(p), strings.HasSuffix(strings.ToLower(base), ".egg-info"):
		return true
	case base == "METADATA" || base == "PKG-INFO":
		return pyInfoDir(path.Base(dir), path.Base(path.Dir(dir)))
	}
	return false
}

// dpkgAdminDirs are the dpkg databases of an image: var/lib/dpkg, and the one DPKG_ADMINDIR in
// the image config's Env names, which dpkg and dpkg-query read instead when it is set (both are
// read: what the image's own processes see depends on their environment).
func dpkgAdminDirs(env []string) []string {
	dirs := []string{"var/lib/dpkg"}
	if d := dpkgAdminDir(env); d != "" && d != dirs[0] {
		dirs = append(dirs, d)
	}
	return dirs
}

// dpkgAdminDir is DPKG_ADMINDIR of env as a path in the image ("" when unset or the root).
func dpkgAdminDir(env []string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == "DPKG_ADMINDIR" {
			v = val // the last one counts, as in a process's environment
		}
	}
	if v == "" {
		return ""
	}
	return strings.TrimPrefix(path.Clean("/"+v), "/")
}

// dpkgAdminFile says whether p is a file of the dpkg database in dir (dpkgAdminDir's).
func dpkgAdminFile(dir, p string) bool {
	rest, ok := strings.CutPrefix(p, dir+"/")
	return dir != "" && ok && metadataFile("var/lib/dpkg/"+rest)
}

// dpkgJournal is one of dpkg's journal files, var/lib/dpkg/updates/NNNN.
func dpkgJournal(p string) bool {
	dir, base := path.Split(p)
	return dir == "var/lib/dpkg/updates/" && base != "" && len(base) <= 50 && strings.Trim(base, "0123456789") == ""
}

// readMetadata lists into inv the packages of the tree's npm, PyPI and dpkg metadata, and the
// metadata files that could not be read as their tools read them.
// env is the image config's Env ("K=V"): the tools read some of their paths from it.
func readMetadata(ctx context.Context, root *os.Root, tree *layerfs.Result, inv *Inventory, env []string) error {
	m := &metaReader{ctx: ctx, root: root, tree: tree, inv: inv, seen: map[string]bool{}, env: env}
	if err := m.walk(); err != nil {
		return err
	}
	if err := m.links(); err != nil {
		return err
	}
	return m.dpkg()
}

type metaReader struct {
	ctx     context.Context
	root    *os.Root
	tree    *layerfs.Result
	inv     *Inventory
	seen    map[string]bool // metadata paths read (a symlink's path read once)
	env     []string        // the image config's Env ("K=V")
	unreads int
	npmDirs map[string]bool            // npmModuleDirs, once computed
	npmKids map[string]map[string]bool // npmEntries' index of the tree's names, once made
}

// metaMaxUnread bounds the Unread entries of the readers here; past it one says how many more.
const metaMaxUnread = 1000

func (m *metaReader) unread(p, extractor, format string, args ...any) {
	switch m.unreads++; {
	case m.unreads < metaMaxUnread:
		m.inv.Unread = append(m.inv.Unread, Unread{Path: p, Extractor: extractor, Reason: fmt.Sprintf(format, args...)})
	case m.unreads == metaMaxUnread:
		m.inv.Unread = append(m.inv.Unread, Unread{Extractor: "metadata", Reason: "and more package metadata files could not be read (only the first are listed)"})
	}
}

// layerOf is the layer that wrote the file at a path (reached through symlinks: the file they
// lead to).
func (m *metaReader) layerOf(p string) digest.Digest {
	if f, ok := m.tree.Files[p]; ok && f.Mode&fs.ModeSymlink == 0 {
		return f.Layer
	}
	return m.tree.Files[m.resolve(p)].Layer
}

// add lists a package read from file (the path the tool reads; its bytes from layer), its
// ecosystem and PURL computed as osv-scalibr computes them.
func (m *metaReader) add(p *extractor.Package, file string, layer digest.Digest, extractorName string) {
	pkg := Package{Ecosystem: p.Ecosystem().String(), Name: p.Name, Version: p.Version, Path: file,
		Layer: layer, Extractor: extractorName}
	if u := p.PURL(); u != nil {
		pkg.PURL = u.String()
	}
	if md, ok := p.Metadata.(*dpkgmeta.Metadata); ok && md.SourceName != "" && md.SourceName != p.Name {
		pkg.Source = md.SourceName
		if md.SourceVersion != "" && md.SourceVersion != p.Version {
			pkg.SourceVersion = md.SourceVersion // "Source: glibc (2.36-9+deb12u1)" of a binNMU or another epoch
		}
	}
	m.inv.Packages = append(m.inv.Packages, pkg)
}

// walk visits the tree as written (the files keep wanted, at their paths and at the paths
// symlinks give them) for npm and Python metadata.
func (m *metaReader) walk() error {
	return fs.WalkDir(m.root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == "." {
				return err
			}
			return nil // a directory of our own tree that cannot be listed holds nothing we wrote
		}
		if err := m.ctx.Err(); err != nil {
			return err
		}
		base, parent := path.Base(p), path.Base(path.Dir(p))
		switch {
		case d.IsDir() && pyInfoDir(base, parent):
			name := base
			if strings.EqualFold(base, "EGG-INFO") {
				name = parent
			}
			m.pyDir(p, p, pyDistName(name))
			return fs.SkipDir
		case !d.Type().IsRegular():
		case base == "package.json":
			m.npmFile(p, p)
		case npmLock(p):
			m.npmLock(p)
		case strings.HasSuffix(strings.ToLower(base), ".egg-info"):
			m.pyFile(p, p, p, pyDistName(base))
		default:
			// an egg or a wheel, or any zip archive (by its bytes) Python may import from
			m.pyZip(p)
		}
		return nil
	})
}

// links reads the metadata that the runtime finds through a symlink under a name that is the
// package's identity (node_modules/lodash -> .pnpm/.../lodash, a symlinked name.dist-info)
// when the tree does not hold it at that path: layerfs makes a file at a link's path only when
// the file's own path is not wanted under the same name, and Node and Python take the identity
// from the link's path. The links are the image's, resolved in its own namespace.
func (m *metaReader) links() error {
	var ps []string
	for p, f := range m.tree.Files {
		if f.Mode&fs.ModeSymlink != 0 {
			ps = append(ps, p)
		}
	}
	sort.Strings(ps)
	for _, p := range ps {
		if err := m.ctx.Err(); err != nil {
			return err
		}
		base, parent := path.Base(p), path.Base(path.Dir(p))
		switch {
		case strings.HasPrefix(base, "@") && m.npmModuleDir(path.Dir(p)):
			// a scope of a module directory (npmIdentity: node_modules, a global folder, ...)
			if t, ok := m.npmReal(p); ok {
				for _, e := range m.npmEntries(t) {
					if npmDirName(e) {
						m.npmFile(p+"/"+e+"/package.json", "")
					}
				}
			}
		case npmDirName(base) && m.npmModuleDir(path.Dir(p)),
			strings.HasPrefix(parent, "@") && path.Dir(p) != "." && m.npmModuleDir(path.Dir(path.Dir(p))):
			m.npmFile(p+"/package.json", "")
		case pyInfoDir(base, parent):
			name := base
			if strings.EqualFold(base, "EGG-INFO") {
				name = parent
			}
			m.pyDir(p, "", pyDistName(name))
		case metadataFile(p) && !strings.HasPrefix(p, "var/lib/dpkg/") && p != "usr/lib/opkg/status":
			// a metadata file that is itself a link (the dpkg files are opened by their paths)
			switch dir := path.Dir(p); {
			case base == "package.json":
				m.npmFile(p, "")
			case base == "METADATA" || base == "PKG-INFO":
				m.pyFile(p, "", dir, pyDistName(path.Base(dir)))
			case strings.HasSuffix(strings.ToLower(base), ".egg-info"):
				m.pyFile(p, "", p, pyDistName(base))
			}
		}
	}
	return nil
}

// resolve is the path p leads to in the image, its symlinks followed as the kernel follows them
// inside the container (relative to their directory, absolute from the root, ".." stopping at
// the root, at most 40), or "" when there are more.
func (m *metaReader) resolve(p string) string {
	parts := strings.Split(p, "/")
	var cur []string
	for hops := 0; len(parts) > 0; {
		c := parts[0]
		parts = parts[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		cur = append(cur, c)
		f, ok := m.tree.Files[strings.Join(cur, "/")]
		if !ok || f.Mode&fs.ModeSymlink == 0 {
			continue
		}
		if hops++; hops > 40 {
			return ""
		}
		cur = cur[:len(cur)-1]
		if path.IsAbs(f.Link) {
			cur = nil
		}
		parts = append(strings.Split(f.Link, "/"), parts...)
	}
	return strings.Join(cur, "/")
}

// open opens the file a tool reads at p: at onDisk, where the tree holds it, or (onDisk "")
// where p's symlinks lead in the image. It returns nil when there is no such file (the tool finds
// none either) or p was read already, and records an Unread when the image has the file but the
// tree does not (the tool would read it; this scan could not).
func (m *metaReader) open(p, onDisk, extractor string) (*os.File, fs.FileInfo, digest.Digest) {
	if m.seen[p] {
		return nil, nil, ""
	}
	m.seen[p] = true
	if onDisk == "" {
		if onDisk = m.resolve(p); onDisk == "" {
			m.unread(p, extractor, "more than 40 symlinks on the way to it")
			return nil, nil, ""
		}
	}
	f, err := m.root.Open(onDisk)
	if err != nil {
		if rec, ok := m.tree.Files[onDisk]; ok && rec.Mode.IsRegular() {
			m.unread(p, extractor, "the runtime reads %s here, which the scan's tree does not hold", onDisk)
		} else if !errors.Is(err, fs.ErrNotExist) {
			m.unread(p, extractor, "cannot be opened: %v", err)
		}
		return nil, nil, ""
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err != nil {
			m.unread(p, extractor, "cannot be read: %v", err)
		}
		return nil, nil, ""
	}
	return f, fi, m.layerOf(onDisk)
}

// openAny opens the file at p wherever the tree holds it: at p, or where p's symlinks lead.
func (m *metaReader) openAny(p, extractor string) (*os.File, fs.FileInfo, digest.Digest) {
	if fi, err := m.root.Lstat(p); err == nil && fi.Mode().IsRegular() {
		return m.open(p, p, extractor)
	}
	return m.open(p, "", extractor)
}

// npmFile reads the package.json at p (onDisk: see open).
func (m *metaReader) npmFile(p, onDisk string) {
	f, _, layer := m.open(p, onDisk, npmExtractor)
	if f == nil {
		return
	}
	defer f.Close()
	identity, root := m.npmIdentity(p)
	pkgs, err := readNpm(f, identity)
	if err != nil {
		if root {
			m.unread(p, npmExtractor, "Node loads %s from here, but: %v", identity, err)
		}
		return
	}
	for _, pk := range pkgs {
		// the metadata osv-scalibr's packagejson gives, for the same PURL
		md := &npmmeta.JavascriptPackageJSONMetadata{}
		m.add(&extractor.Package{Name: pk.name, Version: pk.version, PURLType: purl.TypeNPM, Metadata: md}, p, layer, npmExtractor)
	}
}

// npmLock checks a lock file that osv-scalibr's packagelockjson reads.
func (m *metaReader) npmLock(p string) {
	f, _, _ := m.open(p, p, "javascript/packagelockjson")
	if f == nil {
		return
	}
	defer f.Close()
	if err := npmLockCheck(f); err != nil {
		m.unread(p, "javascript/packagelockjson", "npm reads this lock otherwise than the lock reader: %v", err)
	}
}

// pyDir reads a distribution directory's metadata as importlib.metadata does: METADATA, or
// PKG-INFO when that is missing or empty (onDisk: the directory in the tree, or "").
func (m *metaReader) pyDir(dir, onDisk, name string) {
	for _, f := range []string{"METADATA", "PKG-INFO"} {
		at := ""
		if onDisk != "" {
			at = onDisk + "/" + f
		}
		if m.pyFile(dir+"/"+f, at, dir, name) {
			return
		}
	}
}

// pyFile reads one metadata file; false when there is none or it is empty (importlib reads the
// next one then).
func (m *metaReader) pyFile(p, onDisk, dir, name string) bool {
	f, fi, layer := m.open(p, onDisk, pypiExtractor)
	if f == nil {
		return false
	}
	defer f.Close()
	if fi.Size() == 0 {
		return false
	}
	meta, err := readPyMetadata(f, pypiMaxMetadata)
	if err == nil {
		var names []string
		var version string
		if names, version, err = pyPackages(meta, name); err == nil {
			for _, n := range names {
				m.add(&extractor.Package{Name: n, Version: version, PURLType: purl.TypePyPi}, p, layer, pypiExtractor)
			}
			return true
		}
	}
	m.unread(p, pypiExtractor, "Python reads the distribution %s from %s, but: %v", orUnnamed(name), path.Base(dir), err)
	return true
}

func orUnnamed(n string) string {
	if n == "" {
		return "(unnamed)"
	}
	return n
}

// pyZip reads the metadata inside an egg or a wheel, or inside a zip archive of any name whose
// root holds distributions (a file that is no such archive is nothing here).
func (m *metaReader) pyZip(p string) {
	if !pyZip(p) && !m.pyZipRoot(p) {
		return
	}
	f, fi, layer := m.open(p, p, pypiExtractor)
	if f == nil {
		return
	}
	defer f.Close()
	err := pyZipMetadata(f, fi.Size(), path.Base(p), func(member string, names []string, version string, err error) {
		if err != nil {
			m.unread(p, pypiExtractor, "%s: %v", member, err)
			return
		}
		for _, n := range names {
			m.add(&extractor.Package{Name: n, Version: version, PURLType: purl.TypePyPi}, p, layer, pypiExtractor)
		}
	})
	if err != nil {
		m.unread(p, pypiExtractor, "an archive Python can import, not read: %v", err)
	}
}

// dpkgEntry is a stanza and the file it came from.
type dpkgEntry struct {
	s     dpkgStanza
	path  string
	kind  dpkgKind
	layer digest.Digest
}

// dpkg reads the dpkg and opkg databases: the status file with its journal applied over it,
// distroless status.d files, and opkg's status.
func (m *metaReader) dpkg() error {
	budget, installed := dpkgMaxStanzas, 0
	var entries []*dpkgEntry
	byPackage := map[string]int{} // package:arch of the status file's and journal's stanzas
	stopped := false
	read := func(p string, kind dpkgKind) error {
		if stopped {
			return nil
		}
		f, fi, layer := m.openAny(p, dpkgExtractor)
		if f == nil {
			return nil
		}
		defer f.Close()
		if fi.Size() > dpkgMaxFile {
			m.unread(p, dpkgExtractor, "a package database larger than %d MiB", dpkgMaxFile>>20)
			return nil
		}
		err := readDpkg(m.ctx, f, kind, &budget, func(s dpkgStanza) error {
			e := &dpkgEntry{s, p, kind, layer}
			if kind == dpkgStatus {
				key := s.Package + ":" + s.Architecture
				if i, ok := byPackage[key]; ok {
					entries[i] = e // the journal's record replaces the status file's
					return nil
				}
				if !s.Installed {
					return nil // nothing to list, nor to replace
				}
				byPackage[key] = len(entries)
			}
			if s.Installed {
				if installed++; installed > dpkgMaxPackages {
					return &errDpkgBound{fmt.Sprintf("more than %d installed packages in the image's package databases", dpkgMaxPackages)}
				}
			}
			entries = append(entries, e)
			return nil
		})
		var bound *errDpkgBound
		switch {
		case errors.As(err, &bound):
			m.unread(p, dpkgExtractor, "%v: the rest is not read", err)
			stopped = true
		case m.ctx.Err() != nil:
			return m.ctx.Err()
		case err != nil:
			m.unread(p, dpkgExtractor, "%v", err)
		}
		return nil
	}
	for _, admin := range dpkgAdminDirs(m.env) {
		byPackage = map[string]int{} // a journal applies to its own database
		if err := read(admin+"/status", dpkgStatus); err != nil {
			return err
		}
		journal, _ := fs.ReadDir(m.root.FS(), admin+"/updates")
		var names []string
		for _, e := range journal {
			if dpkgJournal("var/lib/dpkg/updates/" + e.Name()) {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names) // dpkg's scandir with alphasort
		for _, n := range names {
			if err := read(admin+"/updates/"+n, dpkgStatus); err != nil {
				return err
			}
		}
		statusD, _ := fs.ReadDir(m.root.FS(), admin+"/status.d")
		for _, e := range statusD {
			if !strings.HasSuffix(e.Name(), ".md5sums") {
				if err := read(admin+"/status.d/"+e.Name(), dpkgStatusD); err != nil {
					return err
				}
			}
		}
	}
	if err := read("usr/lib/opkg/status", opkgStatus); err != nil {
		return err
	}

	osr, known := m.osRelease()
	id, versionID := strings.ToLower(osr["ID"]), osr["VERSION_ID"]
	if id == "debian" {
		versionID, _, _ = strings.Cut(versionID, ".") // advisories name Debian releases by their major version ("12", not "12.4")
	}
	unnamed := false
	for _, e := range entries {
		if !e.s.Installed {
			continue
		}
		md := &dpkgmeta.Metadata{PackageName: e.s.Package, PackageVersion: e.s.Version, Status: e.s.Status,
			SourceName: e.s.Source, SourceVersion: e.s.SourceVersion, OSID: id,
			OSVersionCodename: osr["VERSION_CODENAME"], OSVersionID: versionID,
			Maintainer: e.s.Maintainer, Architecture: e.s.Architecture}
		t := purl.TypeDebian
		if e.kind == opkgStatus {
			t = purl.TypeOpkg
		}
		m.add(&extractor.Package{Name: e.s.Package, Version: e.s.Version, PURLType: t, Metadata: md}, e.path, e.layer, dpkgExtractor)
		switch eco := m.inv.Packages[len(m.inv.Packages)-1].Ecosystem; {
		case e.kind == opkgStatus || unnamed:
		case !known:
			unnamed = true
			m.unread(e.path, dpkgExtractor, "no etc/os-release, usr/lib/os-release or etc/debian_version says which release these packages are from, so their advisories cannot be matched")
		case !dpkgEcosystem(eco):
			unnamed = true
			m.unread(e.path, dpkgExtractor, "the image's os-release names ID=%q VERSION_ID=%q, a release advisories are not published for (they name Debian and Ubuntu releases: %q matches none), so these packages' advisories cannot be matched", osr["ID"], osr["VERSION_ID"], eco)
		}
	}
	return nil
}

// dpkgEcosystem says whether an OSV ecosystem is a release of a distribution whose advisories
// name dpkg packages: Debian:12, Ubuntu:22.04, Ubuntu:Pro:22.04, ...
func dpkgEcosystem(eco string) bool {
	distro, release, _ := strings.Cut(eco, ":")
	return (distro == "Debian" || distro == "Ubuntu") && release != ""
}

// osRelease identifies the distribution as os-release(5) says to: etc/os-release, else
// usr/lib/os-release; without either, etc/debian_version names a Debian release. known is false
// when nothing does.
func (m *metaReader) osRelease() (map[string]string, bool) {
	open := func(p string) (*os.File, error) {
		f, err := m.root.Open(p)
		if err != nil {
			f, err = m.root.Open(m.resolve(p))
		}
		return f, err
	}
	for _, p := range []string{"etc/os-release", "usr/lib/os-release"} {
		f, err := open(p)
		if err != nil {
			continue
		}
		kv := parseOSRelease(io.LimitReader(f, 64<<10))
		f.Close()
		return kv, true
	}
	f, err := open("etc/debian_version")
	if err != nil {
		return map[string]string{}, false
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 4<<10))
	return debianVersion(string(b)), true
}

// debianVersion reads etc/debian_version: "12.5" is Debian 12, "trixie/sid" a testing release.
func debianVersion(s string) map[string]string {
	s = strings.TrimSpace(s)
	kv := map[string]string{"ID": "debian"}
	major, _, _ := strings.Cut(s, ".")
	if major != "" && strings.Trim(major, "0123456789") == "" {
		kv["VERSION_ID"] = major
	} else if codename, _, ok := strings.Cut(s, "/"); ok {
		kv["VERSION_CODENAME"] = codename
	}
	return kv
}

// parseOSRelease reads os-release(5): shell-style assignments, values unquoted, or in double
// quotes (with \" \\ \$ \` escapes), or in single quotes; comments and blank lines skipped.
func parseOSRelease(r io.Reader) map[string]string {
	kv := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			continue
		}
		kv[k] = shellWord(v)
	}
	return kv
}

// shellWord is one shell word with its quoting removed.
func shellWord(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\'':
			j := strings.IndexByte(v[i+1:], '\'')
			if j < 0 {
				b.WriteString(v[i+1:])
				return b.String()
			}
			b.WriteString(v[i+1 : i+1+j])
			i += j + 1
		case '"':
			for i++; i < len(v) && v[i] != '"'; i++ {
				if v[i] == '\\' && i+1 < len(v) && strings.IndexByte("\"\\$`", v[i+1]) >= 0 {
					i++
				}
				b.WriteByte(v[i])
			}
		case '\\':
			if i+1 < len(v) {
				i++
				b.WriteByte(v[i])
			}
		case ' ', '\t':
			return b.String() // a comment or another word follows
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
