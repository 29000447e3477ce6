package inventory

import (
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// npm packages are read as Node loads them, not as osv-scalibr's javascript/packagejson reads
// them (Go's encoding/json, which matches keys case-insensitively, refuses a BOM, and takes the
// package's identity from its "name"):
//
//   - require('lodash') resolves the directory node_modules/lodash (node_modules/@scope/name for a
//     scoped package); that directory's name is the package's identity. A "name" that differs
//     from it (an npm alias, or a label meant to hide the package) is reported too.
//   - package.json is parsed as JSON.parse does: keys exact, one leading BOM skipped (Node's
//     require and npm strip it), anything JSON.parse refuses is refused.
//   - "version" is read as npm's semver reads it (loose: "=4.17.15", "v4.17.15", " 4.17.015 "
//     are 4.17.15; see npmVersion); a version it cannot read is reported as unread.
//
// A package.json under node_modules that Node would load but that cannot be read so is an
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
// package's own (node_modules/<name>/package.json or node_modules/@scope/<name>/package.json).
func npmIdentity(p string) (string, bool) {
	s := strings.Split(p, "/")
	n := len(s)
	if n < 3 || s[n-1] != "package.json" || !npmDirName(s[n-2]) {
		return "", false
	}
	if s[n-3] == "node_modules" && !strings.HasPrefix(s[n-2], "@") {
		return s[n-2], true
	}
	if n >= 4 && s[n-4] == "node_modules" && strings.HasPrefix(s[n-3], "@") && len(s[n-3]) > 1 && !strings.HasPrefix(s[n-2], "@") {
		return s[n-3] + "/" + s[n-2], true
	}
	return "", false
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
