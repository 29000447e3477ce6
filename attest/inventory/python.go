package inventory

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Python packages are read as importlib.metadata and pip read them, not as osv-scalibr's
// python/wheelegg reads them (a bufio.Scanner with a 64 KiB line limit, continuation lines
// dropped, the first blank-looking line taken as the end of the headers):
//
//   - the metadata of a distribution directory (name-version.dist-info, name.egg-info, an egg's
//     EGG-INFO) is its METADATA, or PKG-INFO when that is missing or empty; an .egg-info file is
//     its own metadata; eggs and wheels hold theirs inside the zip;
//   - the file is decoded as UTF-8 with universal newlines and parsed as email.message_from_string
//     does (compat32): headers up to the first line that is neither a header, nor a continuation
//     (a space or a tab first: a line of spaces continues a header, it does not end them), nor a
//     "From " line; folded values kept with their line breaks, then dedented as importlib's
//     _adapters.Message does; the first Name and the first Version count;
//   - the version is what pip's packaging reads (PEP 440, surrounding whitespace dropped);
//   - the directory's own name ("requests-2.19.1.dist-info": requests) is how
//     importlib.metadata.version('requests') finds the distribution, and pip keys on it; a Name
//     header that differs from it is reported too.
//
// Metadata that cannot be read so (not UTF-8, no Version, a version PEP 440 cannot read, larger
// than the bound) is an Unread.

const (
	pypiExtractor = "python/gatehouse-pypi"
	// pypiMaxMetadata bounds a METADATA or PKG-INFO file (and one inside an egg or wheel).
	pypiMaxMetadata = 16 << 20
	// pypiMaxZipDirectory and pypiMaxZipEntries bound the central directory of an egg or wheel
	// that is opened to find its metadata.
	pypiMaxZipDirectory = 8 << 20
	pypiMaxZipEntries   = 50000
	pypiMaxHeader       = 64 << 10 // a Name or Version value
)

// pyMeta is what Python reads from one metadata file: the first Name and Version headers.
type pyMeta struct {
	name, version       string
	hasName, hasVersion bool
}

// readPyMetadata parses a METADATA / PKG-INFO stream as email.message_from_string and
// importlib.metadata do (see above), reading at most max bytes.
func readPyMetadata(r io.Reader, max int64) (pyMeta, error) {
	lr := &pyLines{r: bufio.NewReaderSize(io.LimitReader(r, max+1), 64<<10), max: max}
	var (
		m      pyMeta
		cur    string // the header being read if it is Name or Version, lower case ("" otherwise)
		val    strings.Builder
		inHead = true
		lineNo = 0
	)
	flush := func() error {
		if cur == "" {
			return nil
		}
		v := pyValue(val.String())
		switch {
		case cur == "name" && !m.hasName:
			m.name, m.hasName = v, true
		case cur == "version" && !m.hasVersion:
			m.version, m.hasVersion = v, true
		}
		cur = ""
		val.Reset()
		return nil
	}
	lead := false // the first line's value is still in its leading spaces and tabs
	add := func(b []byte) error {
		if cur == "" {
			return nil
		}
		if lead {
			b = bytes.TrimLeft(b, " \t")
			lead = len(b) == 0
		}
		if val.Len()+len(b) > pypiMaxHeader {
			return fmt.Errorf("a %s header longer than %d KiB", cur, pypiMaxHeader>>10)
		}
		val.Write(b)
		return nil
	}
	for {
		line, err := lr.next() // the line's first bytes; lr.rest streams the remainder
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return pyMeta{}, err
		}
		if !inHead {
			if err := lr.skip(); err != nil {
				return pyMeta{}, err
			}
			continue
		}
		lineNo++
		switch {
		case len(line) == 0: // an empty line ends the headers
			flush()
			inHead = false
		case line[0] == ' ' || line[0] == '\t':
			// a continuation of the header before (of none, at the start: dropped)
			if err := add(line); err != nil {
				return pyMeta{}, err
			}
			if err := lr.rest(add); err != nil {
				return pyMeta{}, err
			}
			add([]byte("\n"))
		case strings.HasPrefix(string(line), "From "):
			// an envelope line (first) or a misplaced one: never a header, and it ends the one before
			flush()
			if err := lr.skip(); err != nil {
				return pyMeta{}, err
			}
		default:
			colon, header := -1, true
			for i, c := range line {
				if c == ':' {
					colon = i
					break
				}
				if c < 0x21 || c > 0x7e {
					header = false
					break
				}
			}
			if colon < 0 {
				if !header || !lr.full(line) {
					// a line neither header nor continuation: the headers end, it is the body's
					flush()
					inHead = false
					if err := lr.skip(); err != nil {
						return pyMeta{}, err
					}
					continue
				}
				return pyMeta{}, fmt.Errorf("line %d: a header name longer than %d KiB", lineNo, pyPeek>>10)
			}
			flush()
			if colon == 0 {
				// "Missing header name": a defect, the line is dropped, and so are its continuations
				if err := lr.skip(); err != nil {
					return pyMeta{}, err
				}
				continue
			}
			name := strings.ToLower(string(line[:colon]))
			if name == "name" || name == "version" {
				cur = name
			}
			// the value: the rest of the line, leading spaces and tabs dropped
			lead = true
			if err := add(line[colon+1:]); err != nil {
				return pyMeta{}, err
			}
			if err := lr.rest(add); err != nil {
				return pyMeta{}, err
			}
			lead = false
			add([]byte("\n"))
		}
	}
	flush()
	return m, nil
}

// pyValue is a header's value as importlib.metadata returns it: the raw value (line breaks of
// folding kept, the trailing ones stripped), dedented when it spans lines (_repair_headers), then
// with the surrounding whitespace dropped, as pip's packaging does before it parses a version
// (and as a name is compared).
func pyValue(raw string) string {
	raw = strings.TrimRight(raw, "\r\n")
	if strings.Contains(raw, "\n") {
		raw = pyDedent(strings.Repeat(" ", 8) + raw)
	}
	return strings.TrimFunc(raw, pySpace)
}

// pyDedent is textwrap.dedent.
func pyDedent(text string) string {
	lines := strings.Split(text, "\n")
	margin, have := "", false
	for i, l := range lines {
		if strings.Trim(l, " \t") == "" {
			lines[i] = ""
			continue
		}
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		switch {
		case !have:
			margin, have = indent, true
		case strings.HasPrefix(indent, margin):
		case strings.HasPrefix(margin, indent):
			margin = indent
		default:
			n := 0
			for n < len(margin) && n < len(indent) && margin[n] == indent[n] {
				n++
			}
			margin = margin[:n]
		}
	}
	if margin != "" {
		for i, l := range lines {
			lines[i] = strings.TrimPrefix(l, margin)
		}
	}
	return strings.Join(lines, "\n")
}

// pySpace is Python's str.isspace (and \s in a str pattern): Unicode whitespace and the
// separators U+001C to U+001F.
func pySpace(r rune) bool {
	return unicode.IsSpace(r) || r >= 0x1c && r <= 0x1f
}

// pep440 is packaging's VERSION_PATTERN (case-insensitive), the versions pip can compare.
var pep440 = regexp.MustCompile(`(?i)^v?(?:(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*` +
	`(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?` +
	`(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?` +
	`(?:[-_.]?dev[-_.]?[0-9]*)?)` +
	`(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?$`)

// pyPackages turns what Python read from one distribution's metadata into its packages: the
// Name header's, and the distribution directory's name when it is another (dirName "" when the
// metadata has no directory of its own).
func pyPackages(m pyMeta, dirName string) ([]string, string, error) {
	if !m.hasVersion || m.version == "" {
		return nil, "", errors.New("no Version header as Python's email parser reads the file (importlib.metadata and pip see no version)")
	}
	if !pep440.MatchString(m.version) {
		return nil, "", fmt.Errorf("version %q, which is not a PEP 440 version pip can compare", m.version)
	}
	var names []string
	if m.hasName && m.name != "" {
		names = append(names, m.name)
	}
	if dirName != "" && (len(names) == 0 || pep503(dirName) != pep503(names[0])) {
		names = append(names, dirName)
	}
	if len(names) == 0 {
		return nil, "", errors.New("no Name header, and no directory name that names the distribution")
	}
	return names, m.version, nil
}

// pep503 is a project name normalised as pip compares names.
func pep503(name string) string {
	return strings.ToLower(pep503Runs.ReplaceAllString(name, "-"))
}

var pep503Runs = regexp.MustCompile(`[-_.]+`)

// pyDistName is the distribution name a metadata directory's (or .egg-info file's, or egg's)
// own name gives, as pip reads it: "requests-2.19.1.dist-info" is requests.
func pyDistName(base string) string {
	stem := base
	if i := strings.LastIndexByte(stem, '.'); i > 0 {
		stem = stem[:i]
	}
	name, _, _ := strings.Cut(stem, "-")
	return name
}

// pyInfoDir reports whether a directory's name makes it a distribution's metadata directory,
// given the name of the directory holding it (an egg's EGG-INFO).
func pyInfoDir(base, parent string) bool {
	low := strings.ToLower(base)
	return strings.HasSuffix(low, ".dist-info") || strings.HasSuffix(low, ".egg-info") ||
		low == "egg-info" && strings.HasSuffix(strings.ToLower(parent), ".egg") // importlib compares lower-cased names
}

// pyZip reports whether a file is an egg or a wheel by its name, whose metadata is inside it.
// Any other zip archive is read too when its bytes make it one Python imports from (pyZipMetadata).
func pyZip(p string) bool {
	return strings.HasSuffix(p, ".egg") || strings.HasSuffix(p, ".whl")
}

// pyZipMember is a file inside an egg or wheel that osv-scalibr's wheelegg reads as metadata,
// and the directory name that names its distribution ("" when the archive's own name does).
func pyZipMember(name string) (bool, string) {
	switch {
	case strings.HasSuffix(name, ".dist-info/METADATA"), strings.HasSuffix(name, ".egg-info/PKG-INFO"):
		return true, path.Base(path.Dir(name))
	case strings.HasSuffix(name, "EGG-INFO/PKG-INFO"):
		return true, ""
	case strings.HasSuffix(name, ".egg-info"):
		return true, path.Base(name)
	}
	return false, ""
}

// A zip archive on sys.path (a .pth line, PYTHONPATH, a .pyz, named anything: Python looks at
// its bytes, not its name) is a distribution directory to importlib.metadata and pip: FastPath
// lists the top-level children of the archive's root (zipfile.Path's namelist, each name's
// first component), and Lookup takes those whose lower-cased name ends in .dist-info or
// .egg-info, and EGG-INFO in any case when the archive's own name ends in .egg; their metadata is
// METADATA, else PKG-INFO, as in a directory. pip (its pkg_resources fallback, for any archive
// not named .whl) lists a top-level name-version.dist-info with the version of its name too,
// whatever its METADATA says, and a name-version.egg-info without metadata so. Only the root
// counts: a zip's subdirectory on sys.path (deps.zip/lib) has no distributions for either.
//
// Python's zipfile finds the archive from its end, so data may precede it (a shell script before
// a .pyz): the last end-of-central-directory signature in the last 64 KiB, the directory the
// size it records before it (a zip64 one before the zip64 locator), whatever offset it records;
// names are cut at a NUL, and the last member of a name is the one opened.

// pyZipTop is a zip member name's top-level component, the name cut at a NUL as zipfile cuts it.
func pyZipTop(name string) string {
	if i := strings.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	top, _, _ := strings.Cut(name, "/")
	return top
}

// pyZipRootInfo reports whether a zip member (its top-level component) makes a distribution's
// metadata directory at the archive's root, for an archive of any name (EGG-INFO counts for an
// archive named .egg only; it is kept here whatever the name, as the name is not known).
func pyZipRootInfo(name string) bool {
	top := strings.ToLower(pyZipTop(name))
	return strings.HasSuffix(top, ".dist-info") || strings.HasSuffix(top, ".egg-info") || top == "egg-info"
}

// pyImportableZip is a layerfs check: it keeps a file that is a zip archive Python's zipfile
// opens (data may precede it) whose root holds a distribution's metadata directory, whatever the
// file's name. It reads the last 64 KiB and streams the central directory (one name at a time).
func pyImportableZip(r io.ReaderAt, size int64) (bool, error) {
	found := false
	_, err := zipNames(r, size, func(name string) bool {
		found = pyZipRootInfo(name)
		return !found
	})
	return found, err
}

// zipEndLen and zipTail: an end-of-central-directory record, and how much of a file's end
// Python's zipfile searches for one (a comment of up to 64 KiB follows it).
const (
	zipEndLen = 22
	zipTail   = 1<<16 + zipEndLen
)

// zipDirectory finds a zip archive's central directory as Python's zipfile finds it (see above):
// where it starts in the file, its size, and whether the file has one at all. err is an I/O error.
func zipDirectory(r io.ReaderAt, size int64) (start, dirSize int64, ok bool, err error) {
	buf, err := zipTailOf(r, size)
	if buf == nil || err != nil {
		return 0, 0, false, err
	}
	i := len(buf) - zipEndLen
	if string(buf[i:i+4]) != "PK\x05\x06" || buf[len(buf)-2] != 0 || buf[len(buf)-1] != 0 {
		// not a record without a comment at the very end: the last signature (rfind)
		if i = bytes.LastIndex(buf, []byte("PK\x05\x06")); i < 0 || i+zipEndLen > len(buf) {
			return 0, 0, false, nil
		}
	}
	return zipRecordAt(r, size, buf, i)
}

// zipTailOf reads the part of a file's end where a zip end record is looked for (nil when the
// file is too short to hold one).
func zipTailOf(r io.ReaderAt, size int64) ([]byte, error) {
	if size < zipEndLen {
		return nil, nil
	}
	buf := make([]byte, min(size, zipTail))
	if _, err := r.ReadAt(buf, size-int64(len(buf))); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf, nil
}

// zipRecordAt reads the end-of-central-directory record at index i of buf (the file's last
// len(buf) bytes): where the directory it names starts and its size, the zip64 record before a
// zip64 locator counting instead (_EndRecData64); ok is false when the directory cannot be there.
func zipRecordAt(r io.ReaderAt, size int64, buf []byte, i int) (start, dirSize int64, ok bool, err error) {
	end := size - int64(len(buf)) + int64(i) // the record's position in the file
	dirSize = int64(binary.LittleEndian.Uint32(buf[i+12:]))
	var loc [20]byte
	if end >= 20 {
		if _, err := r.ReadAt(loc[:], end-20); err != nil && !errors.Is(err, io.EOF) {
			return 0, 0, false, err
		}
	}
	if end >= 20 && string(loc[:4]) == "PK\x06\x07" {
		if binary.LittleEndian.Uint32(loc[4:]) != 0 || binary.LittleEndian.Uint32(loc[16:]) > 1 {
			return 0, 0, false, nil // "zipfiles that span multiple disks are not supported"
		}
		var rec [56]byte
		if end >= 76 {
			if _, err := r.ReadAt(rec[:], end-76); err != nil && !errors.Is(err, io.EOF) {
				return 0, 0, false, err
			}
		}
		if end >= 76 && string(rec[:4]) == "PK\x06\x06" {
			ds := binary.LittleEndian.Uint64(rec[40:])
			if ds > uint64(size) {
				return 0, 0, false, nil
			}
			dirSize = int64(ds)
			end -= 76
		}
	}
	if start = end - dirSize; start < 0 {
		return 0, 0, false, nil // "Bad offset for central directory"
	}
	return start, dirSize, true, nil
}

// zipNames passes each member name of the zip archive in r to f, as Python's zipfile lists them
// (the central directory found as zipDirectory finds it), until f returns false. It holds one
// name at a time, so a directory of any size is read in bounded memory. ok is false when r is no
// zip archive; a directory that goes wrong part-way (which zipfile refuses whole) ends the list.
func zipNames(r io.ReaderAt, size int64, f func(name string) bool) (ok bool, err error) {
	start, dirSize, ok, err := zipDirectory(r, size)
	if !ok || err != nil {
		return false, err
	}
	zipNamesAt(r, start, dirSize, f)
	return true, nil
}

// zipNamesAt passes each member name of the central directory at start (dirSize bytes) to f,
// until f returns false or the directory goes wrong.
func zipNamesAt(r io.ReaderAt, start, dirSize int64, f func(name string) bool) {
	br := bufio.NewReaderSize(io.NewSectionReader(r, start, dirSize), 64<<10)
	var hdr [46]byte
	name := make([]byte, 0, 256)
	for total := int64(0); total < dirSize; {
		if _, err := io.ReadFull(br, hdr[:]); err != nil || string(hdr[:4]) != "PK\x01\x02" {
			return
		}
		n := int(binary.LittleEndian.Uint16(hdr[28:]))
		m := int64(binary.LittleEndian.Uint16(hdr[30:])) + int64(binary.LittleEndian.Uint16(hdr[32:]))
		name = name[:n]
		if _, err := io.ReadFull(br, name); err != nil {
			return
		}
		if _, err := br.Discard(int(m)); err != nil {
			return
		}
		if !f(string(name)) {
			return
		}
		total += 46 + int64(n) + m
	}
}

// pyZipMaxInfo bounds the metadata directories at an archive's root that are read.
const pyZipMaxInfo = 10000

// pyEggName is pkg_resources' EGG_NAME: a name, then a version, each up to the next '-'.
func pyEggName(stem string) (name, version string) {
	name, rest, _ := strings.Cut(stem, "-")
	version, _, _ = strings.Cut(rest, "-")
	return name, version
}

// pyZipMetadata reads the metadata inside a zip archive (archive is its base name): for any
// archive, the distributions Python finds at its root on sys.path (see above); for an egg or a
// wheel by name, also each member wheelegg reads as metadata. each gets a member's names and
// version, or the reason it cannot be read. An archive of another name that lists no metadata at
// its root is nothing to Python's metadata readers and no error. The central directory is
// streamed to find the metadata, and bounded before it is read whole.
func pyZipMetadata(r io.ReaderAt, size int64, archive string, each func(member string, names []string, version string, err error)) error {
	named := pyZip(archive)
	var (
		infos   []string            // the metadata directories at the root, in the order zipfile lists them
		listed  = map[string]bool{} // their METADATA and PKG-INFO members that zipfile lists
		tooMany bool
	)
	isZip, err := zipNames(r, size, func(name string) bool {
		if i := strings.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		top := pyZipTop(name)
		if !pyInfoDir(top, archive) {
			return true
		}
		if !listed[top] {
			if len(infos) == pyZipMaxInfo {
				tooMany = true
				return false
			}
			listed[top] = true
			infos = append(infos, top)
		}
		if name == top+"/METADATA" || name == top+"/PKG-INFO" {
			listed[name] = true
		}
		return true
	})
	switch {
	case err != nil:
		return err
	case tooMany:
		return fmt.Errorf("more than %d distribution metadata directories at the archive's root", pyZipMaxInfo)
	case !named && (!isZip || len(infos) == 0):
		return nil
	}
	if err := zipBounded(r, size); err != nil {
		return err
	}
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return fmt.Errorf("not a zip archive Python can import: %w", err)
	}
	files := map[string]*zip.File{} // by the name zipfile opens: cut at a NUL, the last of a name
	for _, f := range zr.File {
		name := f.Name
		if i := strings.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		files[name] = f
	}
	read := func(f *zip.File) (pyMeta, error) {
		if f.UncompressedSize64 > pypiMaxMetadata {
			return pyMeta{}, fmt.Errorf("%s larger than %d MiB", f.Name, pypiMaxMetadata>>20)
		}
		rc, err := f.Open()
		if err != nil {
			return pyMeta{}, err
		}
		defer rc.Close()
		m, err := readPyMetadata(rc, pypiMaxMetadata)
		if err == nil {
			_, err = io.Copy(io.Discard, io.LimitReader(rc, pypiMaxMetadata)) // the checksum is checked at the end
		}
		return m, err
	}
	done := map[*zip.File]bool{}
	for _, info := range infos {
		dir := info
		if strings.EqualFold(info, "EGG-INFO") {
			dir = archive
		}
		found, version := false, ""
		for _, base := range []string{"METADATA", "PKG-INFO"} {
			member := info + "/" + base
			f := files[member]
			if f == nil {
				if listed[member] {
					// the directory Python finds lists it; the one this reader finds does not
					return fmt.Errorf("Python's zipfile lists %s, which this reader does not find in the archive", member)
				}
				continue
			}
			done[f] = true
			if f.UncompressedSize64 == 0 {
				continue // empty: importlib reads the next one
			}
			found = true
			m, err := read(f)
			if err != nil {
				each(member, nil, "", err)
				break
			}
			var names []string
			names, version, err = pyPackages(m, pyDistName(dir))
			each(member, names, version, err)
			break
		}
		if strings.HasSuffix(archive, ".whl") {
			continue // pkg_resources reads no wheel
		}
		// pip's pkg_resources: the version in a dist-info's name, an egg-info's without metadata,
		// an egg's own name when it has EGG-INFO/PKG-INFO
		stem, low := "", strings.ToLower(info)
		switch {
		case strings.HasSuffix(low, ".dist-info"), strings.HasSuffix(low, ".egg-info") && !found:
			stem = info[:strings.LastIndexByte(info, '.')]
		case info == "EGG-INFO" && files["EGG-INFO/PKG-INFO"] != nil:
			stem = archive[:strings.LastIndexByte(archive, '.')]
		}
		if name, v := pyEggName(stem); name != "" && v != "" && v != version && pep440.MatchString(v) {
			each(info+"/", []string{name}, v, nil)
		}
	}
	if !named {
		return nil
	}
	for _, f := range zr.File {
		ok, dir := pyZipMember(f.Name)
		if !ok || done[f] {
			continue
		}
		if dir == "" {
			dir = archive
		}
		m, err := read(f)
		if err != nil {
			each(f.Name, nil, "", err)
			continue
		}
		names, version, err := pyPackages(m, pyDistName(dir))
		each(f.Name, names, version, err)
	}
	return nil
}

// zipBounded checks, from the end-of-central-directory record, that an archive's directory is
// small enough to read (archive/zip holds it whole in memory).
func zipBounded(r io.ReaderAt, size int64) error {
	tail := min(size, 65535+22)
	buf := make([]byte, tail)
	if _, err := r.ReadAt(buf, size-tail); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	i := -1
	for j := len(buf) - 22; j >= 0; j-- {
		if string(buf[j:j+4]) == "PK\x05\x06" && j+22+int(binary.LittleEndian.Uint16(buf[j+20:])) <= len(buf) {
			i = j
			break
		}
	}
	if i < 0 {
		return errors.New("no end of central directory: not a zip archive")
	}
	entries := uint64(binary.LittleEndian.Uint16(buf[i+10:]))
	dirSize := uint64(binary.LittleEndian.Uint32(buf[i+12:]))
	if entries == 0xffff || dirSize == 0xffffffff || binary.LittleEndian.Uint32(buf[i+16:]) == 0xffffffff {
		// zip64: the locator just before points at the zip64 record
		if i < 20 || string(buf[i-20:i-16]) != "PK\x06\x07" {
			return errors.New("a zip64 archive without its locator")
		}
		off := int64(binary.LittleEndian.Uint64(buf[i-12:]))
		rec := make([]byte, 56)
		if off < 0 || off > size-56 {
			return errors.New("a zip64 record out of the archive")
		}
		if _, err := r.ReadAt(rec, off); err != nil {
			return err
		}
		if string(rec[:4]) != "PK\x06\x06" {
			return errors.New("a zip64 locator that points at no record")
		}
		entries = binary.LittleEndian.Uint64(rec[32:])
		dirSize = binary.LittleEndian.Uint64(rec[40:])
	}
	if entries > pypiMaxZipEntries || dirSize > pypiMaxZipDirectory {
		return fmt.Errorf("a zip archive of %d entries (%d bytes of directory); the bound is %d entries, %d MiB", entries, dirSize, pypiMaxZipEntries, pypiMaxZipDirectory>>20)
	}
	return nil
}

// pyPeek is how much of a line pyLines gives at once: enough for any header name.
const pyPeek = 4 << 10

// pyLines reads lines as Python's universal newlines do (CR LF, CR and LF each end one), and
// checks that the whole stream is UTF-8 (Python's read_text(encoding='utf-8') raises otherwise)
// and within its bound. next gives a line's first bytes (up to pyPeek, without the line end);
// rest or skip consume what follows of it.
type pyLines struct {
	r       *bufio.Reader
	max, n  int64
	buf     []byte
	more    bool // the line goes on past buf
	utf8    []byte
	afterCR bool // the last byte read was a CR (a following LF belongs to it)
}

// read gives the next byte, checking the bound and the encoding.
func (l *pyLines) read() (byte, error) {
	c, err := l.r.ReadByte()
	if err != nil {
		if errors.Is(err, io.EOF) && len(l.utf8) > 0 {
			return 0, errors.New("not UTF-8 at its end (Python's metadata readers fail on it)")
		}
		return 0, err
	}
	l.n++
	if l.n > l.max {
		return 0, fmt.Errorf("larger than %d MiB", l.max>>20)
	}
	if c >= utf8.RuneSelf || len(l.utf8) > 0 {
		l.utf8 = append(l.utf8, c)
		if utf8.FullRune(l.utf8) {
			r, size := utf8.DecodeRune(l.utf8)
			if r == utf8.RuneError && size <= 1 {
				return 0, fmt.Errorf("not UTF-8 at byte %d (Python's metadata readers fail on it)", l.n)
			}
			l.utf8 = l.utf8[:0]
		}
	}
	return c, nil
}

// lineByte gives the next byte of the current line, or done at its end.
func (l *pyLines) lineByte() (c byte, done bool, err error) {
	c, err = l.read()
	if err != nil {
		return 0, true, err
	}
	if l.afterCR {
		l.afterCR = false
		if c == '\n' {
			// the LF of a CR LF whose CR ended the line before: read on
			if c, err = l.read(); err != nil {
				return 0, true, err
			}
		}
	}
	switch c {
	case '\n':
		return 0, true, nil
	case '\r':
		l.afterCR = true
		return 0, true, nil
	}
	return c, false, nil
}

func (l *pyLines) next() ([]byte, error) {
	l.buf = l.buf[:0]
	l.more = false
	for len(l.buf) < pyPeek {
		c, done, err := l.lineByte()
		if err != nil {
			if errors.Is(err, io.EOF) && len(l.buf) > 0 {
				return l.buf, nil
			}
			return nil, err
		}
		if done {
			return l.buf, nil
		}
		l.buf = append(l.buf, c)
	}
	l.more = true
	return l.buf, nil
}

// full reports whether line (from next) is only the start of a longer one.
func (l *pyLines) full(line []byte) bool { return l.more && len(line) == pyPeek }

// rest passes the remainder of the current line to f, in pieces.
func (l *pyLines) rest(f func([]byte) error) error {
	if !l.more {
		return nil
	}
	l.more = false
	var piece []byte
	for {
		c, done, err := l.lineByte()
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if done || err != nil {
			return f(piece)
		}
		piece = append(piece, c)
		if len(piece) == pyPeek {
			if err := f(piece); err != nil {
				return err
			}
			piece = piece[:0]
		}
	}
}

func (l *pyLines) skip() error { return l.rest(func([]byte) error { return nil }) }

// pyZipRoot reports whether the tree's file at p is a zip archive whose root holds a
// distribution's metadata directory (pyImportableZip), without reading it as metadata: most files
// the walk meets are not, and are read by the other readers.
func (m *metaReader) pyZipRoot(p string) bool {
	f, err := m.root.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	ok, err := pyImportableZip(f, fi.Size())
	return ok || err != nil // an error reading it: read it as metadata, which says what it is
}
