package inventory

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// npm packages are read as Node loads them, not as osv-scalibr's javascript/packagejson reads
// them (Go's encoding/json, which matches keys case-insensitively, refuses a BOM, and takes the
// package's identity from its "name"):
//
//   - require('lodash') resolves the directory lodash (@scope/name for a scoped package) in a
//     module directory: a node_modules (of the requiring file's directory or any ancestor), a
//     global folder ($HOME/.node_modules, $HOME/.node_libraries, $PREFIX/lib/node, Debian's
//     $PREFIX/share/nodejs and $PREFIX/lib/<multiarch>/nodejs), or a directory NODE_PATH names
//     — each reached through the image's symlinks as the kernel resolves them (node_modules a
//     symlink to /opt/deps makes opt/deps one). The package's directory's name there is its
//     identity. A "name" that differs from it (an npm alias, or a label meant to hide the
//     package) is reported too.
//   - package.json is parsed as JSON.parse does: keys exact, one leading BOM skipped (Node's
//     require and npm strip it), anything JSON.parse refuses is refused.
//   - "version" is read as npm's semver reads it (loose: "=4.17.15", "v4.17.15", " 4.17.015 "
//     are 4.17.15; see npmVersion); a version it cannot read is reported as unread.
//
// A package.json in a module directory that Node would load but that cannot be read so is an
// Unread (fail closed). Other package.json files (an application's own, test fixtures inside
// packages) name no dependency Node resolves by name: they are read the same way, and reported
// when they carry a name and a version, as osv-scalibr does, but never make the scan incomplete.
//
// Lock files stay with osv-scalibr's javascript/packagelockjson (git sources, aliases, dependency
// groups); npmLockCheck refuses the ones Go's decoder would read differently from npm.

const (
	npmExtractor = "javascript/gatehouse-npm"
	// npmMaxPackageJSON bounds a package.json; npmMaxLock a lock file checked for npmLockCheck.
	npmMaxPackageJSON = 16 << 20
	npmMaxLock        = 256 << 20
)

// npmIdentity is the name Node resolves for the package whose package.json is at p, if p is a
// package's own in a directory of a module directory's name (node_modules/<name>/package.json or
// node_modules/@scope/<name>/package.json; .node_modules, .node_libraries). metaReader.npmIdentity
// knows the other module directories.
func npmIdentity(p string) (string, bool) {
	s := strings.Split(p, "/")
	n := len(s)
	if n < 3 || s[n-1] != "package.json" || !npmDirName(s[n-2]) {
		return "", false
	}
	if npmModuleDirName(s[n-3]) && !strings.HasPrefix(s[n-2], "@") {
		return s[n-2], true
	}
	if n >= 4 && npmModuleDirName(s[n-4]) && strings.HasPrefix(s[n-3], "@") && len(s[n-3]) > 1 && !strings.HasPrefix(s[n-2], "@") {
		return s[n-3] + "/" + s[n-2], true
	}
	return "", false
}

// npmModuleDirName is the name of a directory Node looks packages up in wherever it is:
// node_modules, and the global folders of a home directory, $HOME/.node_modules and
// $HOME/.node_libraries (HOME is the runtime's, or the Env's, to set: any directory so named
// can be one).
func npmModuleDirName(d string) bool {
	return d == "node_modules" || d == ".node_modules" || d == ".node_libraries"
}

// npmPrefixDirs are the global folders of a Node installation, relative to its prefix (the
// directory above the bin holding the node executable Node runs as, its real path): Node's
// lib/node; Debian's node_relative_path, which replaces it (share/nodejs and
// lib/<multiarch>/nodejs, which npmModuleDirs finds; lib/nodejs in older releases).
var npmPrefixDirs = []string{"lib/node", "lib/nodejs", "share/nodejs"}

// npmPrefixes are the Node prefixes assumed whether or not a node executable is in the image.
var npmPrefixes = []string{"usr", "usr/local"}

// npmIdentity is the name Node resolves for the package whose package.json is at p (a path of
// the image, through symlinks or not), if p is a package's own in a module directory (see the
// comment at the top): <module dir>/<name>/package.json, <module dir>/@scope/<name>/package.json.
func (m *metaReader) npmIdentity(p string) (string, bool) {
	if id, ok := npmIdentity(p); ok {
		return id, true
	}
	if path.Base(p) != "package.json" {
		return "", false
	}
	dir := path.Dir(p)
	name, parent := path.Base(dir), path.Dir(dir)
	if dir == "." || !npmDirName(name) || strings.HasPrefix(name, "@") {
		return "", false
	}
	if m.npmModuleDir(parent) {
		return name, true
	}
	if scope := path.Base(parent); parent != "." && strings.HasPrefix(scope, "@") && len(scope) > 1 && m.npmModuleDir(path.Dir(parent)) {
		return scope + "/" + name, true
	}
	return "", false
}

// npmModuleDir says whether Node looks packages up by name in the directory at d (a path of the
// image, through symlinks or not).
func (m *metaReader) npmModuleDir(d string) bool {
	if npmModuleDirName(path.Base(d)) {
		return true
	}
	r, ok := m.npmReal(d)
	return ok && (m.npmModuleDirs()[r] || npmModuleDirName(path.Base(r)))
}

// npmReal is the real path of p in the image ("" for the root), false when it needs more
// symlinks than the kernel follows.
func (m *metaReader) npmReal(p string) (string, bool) {
	r := m.resolve(p)
	return r, r != "" || path.Clean("/"+p) == "/"
}

// npmModuleDirs are the real paths of the image's module directories that are not found by their
// names: the targets of symlinks of a module directory's name, the global folders of each Node
// prefix (npmPrefixes, and that of every bin/node and bin/nodejs of the image), and the
// directories NODE_PATH names in the image config's Env (every NODE_PATH there: which one a
// process sees is its environment's; WithEnv made a relative one absolute from the image's
// WorkingDir, where its processes start).
func (m *metaReader) npmModuleDirs() map[string]bool {
	if m.npmDirs != nil {
		return m.npmDirs
	}
	m.npmDirs = map[string]bool{}
	add := func(p string) {
		if r, ok := m.npmReal(p); ok {
			m.npmDirs[r] = true
		}
	}
	prefixes := map[string]bool{}
	for _, p := range npmPrefixes {
		if r, ok := m.npmReal(p); ok {
			prefixes[r] = true
		}
	}
	multiarch := map[string][]string{} // by prefix: its lib/<multiarch>/nodejs directories
	for p, f := range m.tree.Files {
		base := path.Base(p)
		switch {
		case f.Mode&fs.ModeSymlink != 0 && npmModuleDirName(base):
			add(p)
		case (base == "node" || base == "nodejs") && path.Base(path.Dir(p)) == "bin" && !f.Mode.IsDir():
			if r, ok := m.npmReal(p); ok && r != "" {
				prefixes[npmRootRel(path.Dir(path.Dir(r)))] = true
			}
		}
		if strings.Contains(p, "/nodejs") {
			s := strings.Split(p, "/")
			for i := 2; i < len(s); i++ {
				if s[i] == "nodejs" && s[i-2] == "lib" {
					pre := strings.Join(s[:i-2], "/")
					multiarch[pre] = append(multiarch[pre], strings.Join(s[:i+1], "/"))
				}
			}
		}
	}
	for pre := range prefixes {
		for _, d := range npmPrefixDirs {
			add(path.Join(pre, d))
		}
		for _, d := range multiarch[pre] {
			add(d)
		}
	}
	for _, kv := range m.env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == "NODE_PATH" {
			for _, d := range strings.Split(v, ":") {
				if d != "" {
					add(strings.TrimPrefix(path.Clean("/"+d), "/"))
				}
			}
		}
	}
	return m.npmDirs
}

// npmRootRel is a root-relative path with the root as "".
func npmRootRel(p string) string {
	if p == "." || p == "/" {
		return ""
	}
	return p
}

// npmEntries are the names in the directory at the real path dir, as the image has them:
// directories and symlinks the tree does not make on disk included.
func (m *metaReader) npmEntries(dir string) []string {
	if m.npmKids == nil {
		m.npmKids = map[string]map[string]bool{}
		for p := range m.tree.Files {
			for p != "." && p != "" {
				d, b := npmRootRel(path.Dir(p)), path.Base(p)
				if m.npmKids[d][b] {
					break // and its ancestors too
				}
				if m.npmKids[d] == nil {
					m.npmKids[d] = map[string]bool{}
				}
				m.npmKids[d][b] = true
				p = d
			}
		}
	}
	names := map[string]bool{}
	for n := range m.npmKids[dir] {
		names[n] = true
	}
	onDisk := dir
	if onDisk == "" {
		onDisk = "."
	}
	entries, _ := fs.ReadDir(m.root.FS(), onDisk)
	for _, e := range entries {
		names[e.Name()] = true
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// npmDirName is a directory name under node_modules that can hold a package: not .bin, .pnpm,
// .package-lock.json and the like.
func npmDirName(d string) bool { return d != "" && !strings.HasPrefix(d, ".") }

// npmName is a name npm could have published (old names may hold capitals).
var npmName = regexp.MustCompile(`^(?:@[A-Za-z0-9~-][A-Za-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*$`)

// readNpm reads one package.json. identity is the name Node resolves for it ("" when it is not a
// package's own); the packages it names are returned, or an error saying why a package Node would
// load cannot be read as Node and npm read it.
func readNpm(r io.Reader, identity string) ([]npmPackage, error) {
	doc, err := readJSON(r, npmMaxPackageJSON, []string{"name", "version", "engines", "contributes", "unity"}, nil)
	if err != nil {
		if errors.Is(err, errJSONTooLarge) {
			return nil, fmt.Errorf("package.json larger than %d MiB", npmMaxPackageJSON>>20)
		}
		return nil, err
	}
	if !doc.object {
		return nil, errors.New("package.json is not a JSON object")
	}
	for _, k := range []string{"name", "version"} {
		if vs := doc.members[k]; len(vs) > 1 && identity != "" {
			return nil, fmt.Errorf("%d %q keys in package.json (JSON.parse keeps the last, other readers the first)", len(vs), k)
		}
	}
	last := func(k string) (jsonValue, bool) {
		vs := doc.members[k]
		if len(vs) == 0 {
			return jsonValue{}, false
		}
		return vs[len(vs)-1], true
	}
	name, hasName := last("name")
	version, hasVersion := last("version")
	if identity == "" {
		// not a package Node resolves by name: what osv-scalibr reports (a name and a version,
		// neither a VS Code extension's manifest nor a Unity package's)
		if !hasName || !hasVersion || name.kind != '"' || version.kind != '"' || name.str == "" || version.str == "" {
			return nil, nil
		}
		if e, ok := last("engines"); ok && e.kind == '{' && doc.keys["engines"]["vscode"] {
			return nil, nil
		}
		if _, ok := last("contributes"); ok {
			return nil, nil
		}
		if u, ok := last("unity"); ok && u.kind == '"' && u.str != "" {
			return nil, nil
		}
		v, err := npmVersion(version.str)
		if err != nil {
			v = version.str
		}
		return []npmPackage{{name.str, v}}, nil
	}
	switch {
	case !hasVersion:
		return nil, errors.New(`package.json has no "version" (Node loads the package all the same)`)
	case version.kind != '"':
		return nil, errors.New(`"version" in package.json is not a string`)
	}
	v, err := npmVersion(version.str)
	if err != nil {
		return nil, err
	}
	pkgs := []npmPackage{{identity, v}}
	if hasName && name.kind == '"' && name.str != identity && len(name.str) <= 214 && npmName.MatchString(name.str) {
		pkgs = append(pkgs, npmPackage{name.str, v}) // an alias installs this package under identity
	}
	return pkgs, nil
}

type npmPackage struct{ name, version string }

// npmVersion reads a version as npm's semver (v7, loose, as npm compares installed versions)
// does: new SemVer(v, {loose: true}).version. Leading "v", "=" and whitespace are dropped,
// numbers lose leading zeros, build metadata is dropped.
func npmVersion(v string) (string, error) {
	bad := fmt.Errorf("version %q is not one npm's semver can read", v)
	if jsLength(v) > 256 {
		return "", bad
	}
	m := npmLoose.FindStringSubmatch(strings.TrimFunc(v, jsSpace))
	if m == nil {
		return "", bad
	}
	var parts []string
	for _, n := range m[1:4] {
		x, ok := jsSafeInt(n, 1<<53-1)
		if !ok {
			return "", bad
		}
		parts = append(parts, x)
	}
	out := strings.Join(parts, ".")
	if m[4] != "" {
		ids := strings.Split(m[4], ".")
		for i, id := range ids {
			if x, ok := jsSafeInt(id, 1<<53-2); ok {
				ids[i] = x
			}
		}
		out += "-" + strings.Join(ids, ".")
	}
	return out, nil
}

// jsLength is a string's length in UTF-16 code units, as JavaScript counts it.
func jsLength(s string) int {
	n := 0
	for _, r := range s {
		n++
		if r >= 0x10000 {
			n++
		}
	}
	return n
}

// jsSafeInt is +s for a string of digits whose value is at most limit (semver's bounds on
// Number.MAX_SAFE_INTEGER), and false for anything else.
func jsSafeInt(s string, limit uint64) (string, bool) {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return "", false
	}
	t := strings.TrimLeft(s, "0")
	if t == "" {
		return "0", true
	}
	if len(t) > 16 {
		return "", false
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n > limit {
		return "", false
	}
	return strconv.FormatUint(n, 10), true
}

// jsSpace is JavaScript's whitespace (String.prototype.trim and \s): Unicode White_Space,
// the line terminators and U+FEFF.
func jsSpace(r rune) bool {
	switch r {
	case '\t', '\n', '\v', '\f', '\r', ' ', 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff:
		return true
	}
	return r >= 0x2000 && r <= 0x200a
}

// npmLoose is semver's LOOSE expression (internal/re.js, with its "safe" bounds on repeats).
var npmLoose = func() *regexp.Regexp {
	const (
		space      = `[\t\n\v\f\r \x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}]`
		num        = `[0-9]{1,256}`
		nonNum     = `[0-9]{0,256}[a-zA-Z-][a-zA-Z0-9-]{0,250}`
		preID      = `(?:` + nonNum + `|` + num + `)`
		prerelease = `(?:-?(` + preID + `(?:\.` + preID + `)*))`
		build      = `(?:\+([a-zA-Z0-9-]{1,250}(?:\.[a-zA-Z0-9-]{1,250})*))`
	)
	return regexp.MustCompile(`^(?:[v=]|` + space + `)*(` + num + `)\.(` + num + `)\.(` + num + `)` + prerelease + `?` + build + `?$`)
}()

// npmLockFields are the keys osv-scalibr's lock decoder has fields for
// (internal/dependencyfile/packagelockjson). Go's encoding/json gives a field any key equal to
// its name under Unicode case folding ("Version", "VERSION", "verſion"); npm reads exact keys.
var npmLockFields = []string{
	"lockfileVersion", "dependencies", "packages", "version", "resolved", "dev", "optional", "requires",
	"name", "link", "devOptional", "inBundle", "devDependencies", "optionalDependencies",
	"peerDependencies", "peerDependenciesMeta",
}

// npmLockCheck reads a package-lock.json or npm-shrinkwrap.json as npm does and says why the
// lock decoder of osv-scalibr would read it differently: a key that only case folding makes one
// of its fields (so a "Version" next to "version" overrides it there, not in npm), or a byte
// order mark (npm strips it; encoding/json refuses the file). A text JSON.parse refuses is not
// this check's concern: npm cannot install from it either.
func npmLockCheck(r io.Reader) error {
	var bom bool
	br := &peekReader{r: r}
	if b := br.peek(3); string(b) == "\xef\xbb\xbf" {
		bom = true
	}
	_, err := readJSON(br, npmMaxLock, nil, func(k string) error {
		for _, f := range npmLockFields {
			if k != f && strings.EqualFold(k, f) {
				return fmt.Errorf("key %q, which Go's encoding/json reads as %q and npm does not", k, f)
			}
		}
		return nil
	})
	var syntax *jsonSyntaxError
	switch {
	case errors.Is(err, errJSONTooLarge):
		return fmt.Errorf("lock file larger than %d MiB", npmMaxLock>>20)
	case errors.As(err, &syntax):
		return nil
	case err != nil:
		return err
	case bom:
		return errors.New("a UTF-8 byte order mark, which npm strips and the lock decoder refuses")
	}
	return nil
}

// peekReader lets the first bytes of a stream be looked at and still read.
type peekReader struct {
	r    io.Reader
	head []byte
}

func (p *peekReader) peek(n int) []byte {
	b := make([]byte, n)
	m, _ := io.ReadFull(p.r, b)
	p.head = b[:m]
	return p.head
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// npmLock is a lock file osv-scalibr's packagelockjson reads (it skips those inside node_modules).
func npmLock(p string) bool {
	base := path.Base(p)
	if base != "package-lock.json" && base != "npm-shrinkwrap.json" {
		return false
	}
	for _, s := range strings.Split(path.Dir(p), "/") {
		if s == "node_modules" {
			return false
		}
	}
	return true
}
