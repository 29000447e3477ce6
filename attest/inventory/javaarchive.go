package inventory

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/google/osv-scalibr/extractor"
	"github.com/google/osv-scalibr/extractor/filesystem"
	"github.com/google/osv-scalibr/extractor/filesystem/language/java/archive"
	scalibrinv "github.com/google/osv-scalibr/inventory"
	"github.com/google/osv-scalibr/inventory/location"
	"go.uber.org/multierr"

	cpb "github.com/google/osv-scalibr/binary/proto/config_go_proto"
)

const javaArchiveName = archive.Name

// What osv-scalibr's java/archive extractor does not bound itself. It reads every nested
// archive (a jar in a jar) whole into memory, bounded only by the sum of all it read (4 GiB by
// default): a 1 GiB jar of zeros inside a 1 MB jar took 2.7 GB. It parses each pom.properties
// and MANIFEST.MF line by line with no bound and no look at the context between lines: a
// pom.properties of 1 GiB of newlines took 96 s. And it holds an archive's central directory in
// memory, some 200 bytes an entry, however many it claims.
//
// So javaArchive runs the extractor one archive at a time, never letting it open a nested one
// (a zip depth of 1), and opens the nested archives itself: each is written to a file beside the
// scan's tree, read from there as the extractor reads a file on disk (at random, not into
// memory), and removed. Before the extractor sees an archive, its directory and the declared
// sizes of what the extractor parses are checked; archive/zip refuses to read an entry past its
// declared size, so declared sizes bound the reads.
const (
	maxArchiveDepth     = 8        // an EAR holding a WAR holding jars is 3
	maxArchiveMetadata  = 16 << 20 // one pom.properties or MANIFEST.MF (a signed jar's lists every entry)
	maxArchiveDirectory = 8 << 20  // one archive's central directory: some 80,000 entries, 40 MiB held
	archiveReadFactor   = 4        // all nested archives of one file, as a multiple of Limits.MaxNestedArchive
)

// javaArchive extracts one Java archive and the archives nested in it within the bounds. What
// a bound refuses is an error, so the file is Unread, never skipped in silence; the packages
// read before it are kept.
func (g *guard) javaArchive(ctx context.Context, in *filesystem.ScanInput) (scalibrinv.Inventory, error) {
	if _, ok := in.Reader.(io.ReaderAt); !ok || in.Info == nil {
		return scalibrinv.Inventory{}, fmt.Errorf("a Java archive that cannot be read at random: not read")
	}
	j := &jarWalk{ctx: ctx, dir: g.tempDir, prefix: g.tempPrefix, nested: g.lim.MaxNestedArchive, left: archiveReadFactor * g.lim.MaxNestedArchive}
	pkgs, err := j.archive(in, "", 1)
	return scalibrinv.Inventory{Packages: pkgs}, err
}

// jarWalk is one file's walk through its nested archives.
type jarWalk struct {
	ctx         context.Context
	dir, prefix string // where nested archives are written, and how their names begin
	nested      int64  // Limits.MaxNestedArchive
	left        int64  // bytes of nested archives that may still be read
}

var errDirectoryTooLarge = errors.New("the archive's central directory is too large")

// archive extracts one archive: in.Path names it on disk (a nested one by its path inside the
// file, as the extractor names it), name inside the file ("" for the file itself).
func (j *jarWalk) archive(in *filesystem.ScanInput, name string, depth int) ([]*extractor.Package, error) {
	if depth > maxArchiveDepth {
		return nil, fmt.Errorf("%s: archives nested more than %d deep: not read", name, maxArchiveDepth)
	}
	nested, err := j.check(in.Reader.(io.ReaderAt), in.Info.Size(), name)
	if err != nil {
		return nil, err
	}
	x, err := archive.New(&cpb.PluginConfig{MaxFileSizeBytes: noSizeLimit, PluginSpecific: []*cpb.PluginSpecificConfig{{
		Config: &cpb.PluginSpecificConfig_JavaArchive{JavaArchive: &cpb.JavaArchiveConfig{MaxZipDepth: 1, MaxOpenedBytes: noSizeLimit}},
	}}})
	if err != nil {
		return nil, err
	}
	inv, err := x.Extract(j.ctx, in)
	pkgs := inv.Packages
	var errs []error
	if err := withoutDepthErrors(err); err != nil {
		errs = append(errs, fmt.Errorf("%s%w", within(name), err))
	}
	own := pkgs
	found := false
	for _, i := range nested {
		if err := j.ctx.Err(); err != nil {
			return pkgs, err
		}
		sub, err := j.nestedArchive(in, i, name, depth)
		found = found || len(sub) > 0
		for _, p := range sub { // named as the extractor names what it finds in a nested archive
			loc := &p.Location
			if loc.Descriptor != nil {
				loc.Related = append([]location.Location{*loc.Descriptor}, loc.Related...)
			}
			d := location.FromPath(in.Path)
			loc.Descriptor = &d
		}
		pkgs = append(pkgs, sub...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if found && len(own) == 1 && own[0].Name == "unknown" && own[0].Version == "unknown" {
		pkgs = pkgs[1:] // the extractor names an archive by its hash only when nothing in it, nested ones included, named a package
	}
	return pkgs, joinErrors(errs)
}

// joinErrors says the first few errors in one line, and how many more there were.
func joinErrors(errs []error) error {
	const shown = 3
	if len(errs) == 0 {
		return nil
	}
	// what a bound refused first: it is why the archive was not read, the rest may follow from it
	sort.SliceStable(errs, func(a, b int) bool {
		return strings.HasSuffix(errs[a].Error(), ": not read") && !strings.HasSuffix(errs[b].Error(), ": not read")
	})
	var msgs []string
	for _, e := range errs[:min(len(errs), shown)] {
		msgs = append(msgs, e.Error())
	}
	if len(errs) > shown {
		msgs = append(msgs, fmt.Sprintf("and %d more", len(errs)-shown))
	}
	return errors.New(strings.Join(msgs, "; "))
}

// check bounds what the extractor will read of one archive and lists its nested archives (by
// their index in the directory). An archive archive/zip cannot read passes: the extractor says
// so itself.
func (j *jarWalk) check(r io.ReaderAt, size int64, name string) ([]int, error) {
	zr, err := openZip(r, size)
	if errors.Is(err, errDirectoryTooLarge) {
		return nil, fmt.Errorf("%sa central directory of more than %d bytes: not read", within(name), maxArchiveDirectory)
	}
	if err != nil {
		return nil, nil
	}
	var nested []int
	for i, f := range zr.File {
		base := path.Base(f.Name)
		switch {
		case base == "pom.properties" || strings.EqualFold(base, "MANIFEST.MF"):
			if f.UncompressedSize64 > maxArchiveMetadata {
				return nil, fmt.Errorf("%s%s of %d bytes, over the %d-byte limit: not read", within(name), f.Name, f.UncompressedSize64, maxArchiveMetadata)
			}
			if base == "pom.properties" {
				if err := checkPomProperties(f); err != nil {
					return nil, fmt.Errorf("%s%s: %v: not read", within(name), f.Name, err)
				}
			}
		case archive.IsArchive(f.Name):
			nested = append(nested, i)
		}
	}
	return nested, nil // zr is dropped: the extractor holds its own copy of the directory next
}

// nestedArchive writes the nested archive (entry i of the archive in) to a file and extracts it.
func (j *jarWalk) nestedArchive(in *filesystem.ScanInput, i int, name string, depth int) ([]*extractor.Package, error) {
	tf, entry, err := j.write(in, i, name)
	if tf == nil || err != nil {
		return nil, err
	}
	defer func() { tf.Close(); os.Remove(tf.Name()) }()
	info, err := tf.Stat()
	if err != nil {
		return nil, err
	}
	where := entry
	if name != "" {
		where = name + "!/" + entry
	}
	sub := &filesystem.ScanInput{FS: in.FS, Root: in.Root, Path: filepath.Join(in.Path, entry), Info: info, Reader: tf}
	return j.archive(sub, where, depth+1)
}

// write copies entry i of the archive in to a new file, within the bounds, and returns it
// (rewound) and the entry's name; the archive's directory is not held past it.
func (j *jarWalk) write(in *filesystem.ScanInput, i int, name string) (*os.File, string, error) {
	zr, err := openZip(in.Reader.(io.ReaderAt), in.Info.Size())
	if err != nil || i >= len(zr.File) {
		return nil, "", nil // checked already; the extractor has said what it could not read
	}
	f := zr.File[i]
	where := f.Name
	if name != "" {
		where = name + "!/" + f.Name
	}
	n := f.UncompressedSize64
	if n > uint64(j.nested) {
		return nil, "", fmt.Errorf("%s: a nested archive of %d bytes, over the %d-byte limit (scan.max_nested_archive): not read", where, n, j.nested)
	}
	if n > uint64(j.left) {
		return nil, "", fmt.Errorf("%s: nested archives of more than %d bytes in all (%d × scan.max_nested_archive): not read", where, archiveReadFactor*j.nested, archiveReadFactor)
	}
	j.left -= int64(n)
	rc, err := f.Open()
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", where, err)
	}
	defer rc.Close()
	tf, err := os.CreateTemp(j.dir, j.prefix)
	if err != nil {
		return nil, "", err
	}
	if _, err = io.Copy(tf, &ctxReader{ctx: j.ctx, r: rc}); err == nil {
		_, err = tf.Seek(0, io.SeekStart)
	}
	if err != nil {
		tf.Close()
		os.Remove(tf.Name())
		return nil, "", fmt.Errorf("%s: %w", where, err)
	}
	return tf, f.Name, nil
}

// openZip opens an archive's directory, reading no more than maxArchiveDirectory of it (and its
// end record, within 64 KiB of the end).
func openZip(r io.ReaderAt, size int64) (*zip.Reader, error) {
	br := &budgetReaderAt{r: r, left: maxArchiveDirectory + 128<<10}
	zr, err := zip.NewReader(br, size)
	if err != nil {
		return nil, err
	}
	br.left = math.MaxInt64 // the entries' data is read through it too
	return zr, nil
}

// withoutDepthErrors drops from the extractor's error the nested archives it did not open
// because its zip depth is 1 (jarWalk opens them); anything else stays.
func withoutDepthErrors(err error) error {
	if err == nil {
		return nil
	}
	inner := errors.Unwrap(err)
	if inner == nil {
		inner = err
	}
	var kept []error
	for _, e := range multierr.Errors(inner) {
		if !strings.HasSuffix(e.Error(), " reached max zip depth 2") {
			kept = append(kept, e)
		}
	}
	if len(kept) == 0 {
		return nil
	}
	return multierr.Combine(kept...)
}

func within(name string) string {
	if name == "" {
		return ""
	}
	return "in " + name + ": "
}

// budgetReaderAt fails reads once left bytes have been read through it.
type budgetReaderAt struct {
	r    io.ReaderAt
	left int64
}

func (b *budgetReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if int64(len(p)) > b.left {
		return 0, errDirectoryTooLarge
	}
	n, err := b.r.ReadAt(p, off)
	b.left -= int64(n)
	return n, err
}

// ctxReader stops a copy when the context ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// checkPomProperties refuses a pom.properties that java.util.Properties (and so Maven) reads
// otherwise than osv-scalibr's java/archive, which takes each "\n"-ended line, trimmed, as
// key=value (the last one of a key counts). A properties file also separates keys with ':' or
// blanks, ends lines with "\r" alone, continues a line after a trailing backslash and decodes
// escapes (\uXXXX) in keys and values: "version:2.14.1", "ver\\\n sion=2.14.1" or a continuation
// swallowing a second "version=" give Maven one version and the extractor another, or none.
func checkPomProperties(f *zip.File) error {
	rc, err := f.Open()
	if err != nil {
		return nil // the extractor says what it cannot read
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxArchiveMetadata))
	if err != nil {
		return nil
	}
	maven, scalibr := javaProperties(b), scalibrProperties(b)
	for _, k := range []string{"groupId", "artifactId", "version"} {
		if maven[k] != scalibr[k] {
			return fmt.Errorf("Maven reads %s %q, the Java extractor %q (the file's separators, line ends, continuations or escapes)", k, maven[k], scalibr[k])
		}
	}
	return nil
}

// scalibrProperties reads groupId, artifactId and version as osv-scalibr's parsePomProps does.
func scalibrProperties(b []byte) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if k = strings.TrimSpace(k); k == "groupId" || k == "artifactId" || k == "version" {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// javaProperties reads groupId, artifactId and version as java.util.Properties.load does:
// logical lines (ended by \n, \r or \r\n; continued after an odd number of trailing
// backslashes, the next line's leading blanks dropped), comments (# or ! first), the key up to
// the first unescaped '=', ':' or blank, escapes decoded.
func javaProperties(b []byte) map[string]string {
	out := map[string]string{}
	lines := strings.FieldsFunc(strings.ReplaceAll(string(b), "\r\n", "\n"), func(r rune) bool { return r == '\n' || r == '\r' })
	blank := func(c byte) bool { return c == ' ' || c == '\t' || c == '\f' }
	for i := 0; i < len(lines); i++ {
		line := strings.TrimLeft(lines[i], " \t\f")
		if line == "" || line[0] == '#' || line[0] == '!' {
			continue
		}
		for trailingBackslashes(line)%2 == 1 && i+1 < len(lines) {
			i++
			line = line[:len(line)-1] + strings.TrimLeft(lines[i], " \t\f")
		}
		// the key ends at the first unescaped separator
		end, esc := len(line), false
		for j := 0; j < len(line); j++ {
			c := line[j]
			if esc {
				esc = false
				continue
			}
			if c == '\\' {
				esc = true
				continue
			}
			if c == '=' || c == ':' || blank(c) {
				end = j
				break
			}
		}
		key, rest := unescapeProperty(line[:end]), line[end:]
		rest = strings.TrimLeft(rest, " \t\f")
		if rest != "" && (rest[0] == '=' || rest[0] == ':') {
			rest = strings.TrimLeft(rest[1:], " \t\f")
		}
		if key == "groupId" || key == "artifactId" || key == "version" {
			out[key] = unescapeProperty(rest)
		}
	}
	return out
}

func trailingBackslashes(s string) int {
	n := 0
	for n < len(s) && s[len(s)-1-n] == '\\' {
		n++
	}
	return n
}

// unescapeProperty decodes a properties file's escapes: \uXXXX, \t \n \r \f, and \x as x.
func unescapeProperty(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			out.WriteByte(c)
			continue
		}
		i++
		switch c = s[i]; c {
		case 't':
			out.WriteByte('\t')
		case 'n':
			out.WriteByte('\n')
		case 'r':
			out.WriteByte('\r')
		case 'f':
			out.WriteByte('\f')
		case 'u':
			if i+4 < len(s) {
				if r, err := strconv.ParseUint(s[i+1:i+5], 16, 16); err == nil {
					out.WriteRune(rune(r))
					i += 4
					continue
				}
			}
			out.WriteByte('u') // Java refuses a malformed \u: no version that the extractor would read either
		default:
			out.WriteByte(c)
		}
	}
	return out.String()
}

// jarEntry says whether a zip member makes the archive one whose identity the Java extractor
// reads: a manifest (the JVM and the extractor find META-INF/MANIFEST.MF in any case) or a
// pom.properties at any path. The JVM loads a jar of any name (java -jar /app/app, -cp lib.zip).
func jarEntry(name string) bool {
	return strings.EqualFold(name, "META-INF/MANIFEST.MF") || path.Base(name) == "pom.properties"
}

// zipKept is a layerfs check: it keeps a zip archive (data may precede it; it is found from its
// end) that Python imports distributions from (pyZipRootInfo) or that is a Java archive
// (jarEntry), whatever its name. Python takes the last end record of the file's last 64 KiB; the
// JVM searches back from the end for one whose directory is where it says, so a false record
// after the real one hides nothing from it: every such candidate is looked at.
func zipKept(r io.ReaderAt, size int64) (bool, error) {
	return zipLists(r, size, func(name string) bool { return pyZipRootInfo(name) || jarEntry(name) }, jarEntry)
}

// zipLists says whether the zip archive in r lists a member want accepts in the directory
// Python's zipfile finds, or one jvmWant accepts in any directory the JVM could take.
func zipLists(r io.ReaderAt, size int64, want, jvmWant func(name string) bool) (bool, error) {
	found := false
	if _, err := zipNames(r, size, func(name string) bool {
		found = want(name)
		return !found
	}); err != nil || found {
		return found, err
	}
	return jvmZip(r, size, jvmWant)
}

// jvmMaxDirectories bounds the end-record candidates whose directories jvmZip reads.
const jvmMaxDirectories = 8

// jvmZip says whether the central directory of any end-of-central-directory record in the
// file's last 64 KiB that the JVM could take (its directory in the file, starting with a
// directory header) lists a member want accepts. Past jvmMaxDirectories candidates it cannot
// judge the file (an error: the scan is incomplete).
func jvmZip(r io.ReaderAt, size int64, want func(name string) bool) (bool, error) {
	buf, err := zipTailOf(r, size)
	if buf == nil || err != nil {
		return false, err
	}
	read := 0
	for i := bytes.LastIndex(buf, []byte("PK\x05\x06")); i >= 0; i = bytes.LastIndex(buf[:i], []byte("PK\x05\x06")) {
		if i+zipEndLen > len(buf) {
			continue
		}
		start, dirSize, ok, err := zipRecordAt(r, size, buf, i)
		if err != nil {
			return false, err
		}
		var sig [4]byte
		if !ok || dirSize == 0 {
			continue
		}
		if _, err := r.ReadAt(sig[:], start); err != nil || string(sig[:]) != "PK\x01\x02" {
			continue
		}
		if read++; read > jvmMaxDirectories {
			return false, fmt.Errorf("more than %d zip end records whose directories a Java runtime could read", jvmMaxDirectories)
		}
		found := false
		zipNamesAt(r, start, dirSize, func(name string) bool {
			found = want(name)
			return !found
		})
		if found {
			return true, nil
		}
	}
	return false, nil
}

// isJar says whether the file at p in the tree is a Java archive by its bytes.
func (g *guard) isJar(p string) bool {
	return g.judge(p, func(f *os.File, size int64) bool {
		found, _ := zipLists(f, size, jarEntry, jarEntry)
		return found
	})
}
