package layerfs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
	"github.com/opencontainers/go-digest"
)

// Limits bound one flattening.
type Limits struct {
	MaxBytes    int64         // expanded bytes across all layers
	MaxEntries  int           // tar entries across all layers
	MaxFileSize int64         // larger regular files are recorded but not written or hashed (the result is incomplete)
	MaxPathLen  int           // longer paths, measured once cleaned, are skipped (the result is incomplete)
	Timeout     time.Duration // the whole walk
}

// DefaultLimits suit ordinary images and stop bombs early.
var DefaultLimits = Limits{MaxBytes: 16 << 30, MaxEntries: 150_000, MaxFileSize: 1 << 30, MaxPathLen: 4096, Timeout: 10 * time.Minute}

// Check decides from a regular file's bytes whether it stays in the tree. It reads what it needs
// through r (the file as written into the tree, size bytes long) and must bound what it reads:
// the file may be as large as Limits.MaxFileSize and was made by whoever pushed the image. An
// error says the file could not be judged within those bounds; the file is not kept and the
// result is incomplete. A check judges bytes, not names: bytes it judged once are not judged
// again when a link gives them another name.
type Check func(r io.ReaderAt, size int64) (keep bool, err error)

// Options choose what of each file the caller needs beyond its record (path, layer, mode, size,
// SHA-256), which Flatten always keeps.
type Options struct {
	// Keep says whether a file (or symlink) goes into the tree (nil: all do). Files not kept are
	// still hashed and recorded; a scanner that reads only package databases and some binaries
	// saves writing the rest. A non-nil check defers the decision for a regular file to its
	// bytes: the file is streamed into the tree as it is hashed, check reads it there, and it
	// is removed unless check keeps it. No file is ever held in memory whole for this. Keep is
	// also asked about the names links give a file (a hard link's path, the paths under a
	// symlink); see Flatten for what is made at them.
	Keep func(path string, info fs.FileInfo) (keep bool, check Check)
	// Sniff is asked about a regular file Keep neither keeps nor checks, with its first bytes
	// (up to SniffLen): a non-nil Check decides from the file's bytes, as if Keep had given it.
	// What a file is can be in its bytes whatever its name and mode (a program named app.json,
	// a library of mode 0644 that dlopen loads).
	Sniff func(head []byte) Check
	// Tail is shown the last bytes (up to TailLen) of each regular file that neither Keep nor
	// Sniff wanted, which is not written to the tree as it is read: a file it accepts is read
	// again from its layer once the layers are applied, if the image still holds it, and judged
	// there by TailCheck (a zip archive is read from its end, and may follow any other data).
	Tail      func(tail []byte) bool
	TailCheck Check
	// Wants says whether Inspect should see a file of this size (nil: none); InspectMax bounds it.
	Wants      func(path string, size int64) bool
	InspectMax int64
	// Inspect gets the bytes of each wanted file as its layer is read, from every layer (a
	// secret later deleted is still in the image's layers).
	Inspect func(path string, layer digest.Digest, data []byte)
}

// readOnly hides a reader's other methods (io.WriterTo) from io.CopyBuffer, so that it uses the
// walker's buffer.
type readOnly struct{ io.Reader }

// SniffLen is how many of a file's first bytes Options.Sniff is shown.
const SniffLen = 64

// maxTails bounds the files Options.Tail accepts in one image: each is read again at the end
// (real images hold a few zip archives that do not start as one: self-extracting or prefixed
// archives); past it the result is incomplete.
const maxTails = 1000

// TailLen is how many of a file's last bytes Options.Tail is shown: a zip archive's
// end-of-central-directory record and the comment of up to 64 KiB after it.
const TailLen = 1<<16 + 22

// tailBuf keeps the last TailLen bytes written to it.
type tailBuf struct {
	b    []byte // a ring
	pos  int
	full bool
	out  []byte // the ring's bytes in order, when it went round
}

func (t *tailBuf) reset() {
	if t.b == nil {
		t.b = make([]byte, TailLen)
	}
	t.pos, t.full = 0, false
}

func (t *tailBuf) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= len(t.b) {
		copy(t.b, p[len(p)-len(t.b):])
		t.pos, t.full = 0, true
		return n, nil
	}
	for len(p) > 0 {
		k := copy(t.b[t.pos:], p)
		p = p[k:]
		if t.pos += k; t.pos == len(t.b) {
			t.pos, t.full = 0, true
		}
	}
	return n, nil
}

// bytes returns the kept bytes in order (valid until the next reset).
func (t *tailBuf) bytes() []byte {
	if !t.full {
		return t.b[:t.pos]
	}
	t.out = append(append(t.out[:0], t.b[t.pos:]...), t.b[:t.pos]...)
	return t.out
}

// Layer is one layer, opened on demand as its stored (compressed) stream.
type Layer struct {
	Digest digest.Digest
	Open   func() (io.ReadCloser, error)
}

// File is what the tree knows of one path.
type File struct {
	Layer  digest.Digest // the layer that last wrote it
	Size   int64
	Mode   fs.FileMode // as recorded in the layer (setuid and all); the copy on disk is 0644, or 0755 if executable
	SHA256 digest.Digest
	Link   string // symlink target
}

// Written is one regular file as a layer wrote it, whatever a later layer did to it: the layer's
// blob holds these bytes, and serving the blob serves them.
type Written struct {
	Path   string
	Layer  digest.Digest
	Size   int64
	SHA256 digest.Digest
}

// Kind names what an Issue is about.
type Kind string

// Issue kinds. Those for which Incomplete is true mean the tree may not be what a runtime
// unpacks from these layers; Flatten then sets Result.Incomplete.
const (
	Escape      Kind = "escape"      // a name, symlink or hard link climbs above the root: placed inside it, as containerd places it
	Special     Kind = "special"     // a device or fifo: recorded where containerd makes it, not made
	Limit       Kind = "limit"       // a limit stopped the walk, or a file was too large to read
	Truncated   Kind = "truncated"   // the layer stream broke
	Unreadable  Kind = "unreadable"  // the layer is not gzip, zstd or tar
	TooLong     Kind = "toolong"     // a path longer than MaxPathLen once cleaned
	Sparse      Kind = "sparse"      // a GNU sparse entry (old 'S' type or PAX GNU.sparse.*)
	Unsupported Kind = "unsupported" // a tar type containerd does not extract
	Loop        Kind = "loop"        // more symlinks among an entry's directories than containerd follows
	Invalid     Kind = "invalid"     // an entry containerd refuses, failing the layer's unpacking
	Ambiguous   Kind = "ambiguous"   // a whiteout that removes what its own layer wrote, or an entry under a lower layer's symlink: readers disagree
	Unwritable  Kind = "unwritable"  // the tree could not be written
	Unchecked   Kind = "unchecked"   // a file Options.Keep's check could not judge
)

// Incomplete reports whether an issue of this kind leaves part of the image unread, or read in a
// way a runtime might not read it.
func (k Kind) Incomplete() bool { return k != Escape && k != Special }

// Issue is something in a layer that was refused, cut short or hostile.
type Issue struct {
	Layer  digest.Digest
	Path   string
	Kind   Kind
	Detail string
}

// Result is a flattened tree.
type Result struct {
	Root    string          // the directory holding the tree
	Files   map[string]File // by path relative to the root ("etc/os-release")
	Written []Written       // every regular file hashed, layer by layer, in the order read
	Issues  []Issue
	// Aliases are the paths the tree holds a file at because a symlink leads there (the
	// extractors follow no symlink): each maps to the path of the file it resolves to, whose
	// record is in Files. See Flatten for when a file is made at such a path.
	Aliases    map[string]string
	Compressed int64 // bytes read from the layers as stored
	Expanded   int64 // bytes of tar streams read
	Reread     int64 // bytes of tar streams read a second time, for files a link needed that were not kept
	Incomplete bool  // a limit or a broken layer ended the walk early, or an issue of an Incomplete kind
}

// File is the record of what the tree holds at a path on disk: for an alias, the record of the
// file it resolves to (Files has the symlink's own record).
func (r *Result) File(p string) (File, bool) {
	if to, ok := r.Aliases[p]; ok {
		f, ok := r.Files[to]
		return f, ok
	}
	f, ok := r.Files[p]
	return f, ok
}

// Flatten writes the layers, in order, into dir (which must exist and be empty).
//
// Each layer is applied as containerd applies it (archive.Apply, in pkg/archive/tar.go): names
// cleaned and placed under the root, ".." stopping at the root; directories resolved through the
// symlinks the tree holds, bounded to the root; an entry replacing what is at its path unless
// both are directories; a hard link to the target's own entry (not through a final symlink);
// ".wh.x" removing x and an opaque directory removing what no entry of this layer unpacked there.
// Where containerd would refuse the layer, or other readers read it differently, the result is
// incomplete with an issue naming the entry: among them an entry whose name passes through a
// symlink a lower layer wrote, which the native snapshotter follows (and Flatten with it) but
// the overlay snapshotters, unpacking each layer into an empty directory, hide with a directory.
//
// Once the layers are applied, the files a runtime reads through links are made where Keep
// wants them although their bytes came under a name it did not want (see links): a hard link
// at its own path, and the paths under a symlink (Result.Aliases) as files, since the
// extractors follow no symlink. Bytes no longer on disk are read again from their layer.
func Flatten(ctx context.Context, dir string, layers []Layer, lim Limits, opts Options) (*Result, error) {
	if lim.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, lim.Timeout)
		defer cancel()
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	w := &walker{ctx: ctx, root: root, lim: lim, opts: opts, dir: dir, layers: layers, tree: newDir(File{Mode: fs.ModeDir | 0o755}, false),
		res: &Result{Root: dir, Files: map[string]File{}, Aliases: map[string]string{}}}
	w.tree.onDisk = true
	for i, l := range layers {
		w.li = i
		if err := w.layer(l); err != nil {
			var stop stopError
			if errors.As(err, &stop) {
				w.res.Incomplete = true
				break
			}
			return nil, err
		}
	}
	w.record("", w.tree)
	if err := w.links(); err != nil {
		return nil, err
	}
	w.makeLinks()
	return w.res, nil
}

// node is one path of the tree as containerd's unpacking would leave it on disk.
type node struct {
	file     File
	recorded bool             // an entry wrote it (it goes into Result.Files); not a directory made to hold others
	keepLink bool             // a symlink Options.Keep wants made in the tree
	onDisk   bool             // it (or, for a directory, it and some of what it holds) is in the tree on disk
	want     want             // what Options.Keep said of a regular file by this name
	judged   bool             // its bytes went through a Check (kept or not, they need not be judged again)
	pending  bool             // a hard link Options.Keep wants whose bytes are not on disk: made from its layer at the end
	tail     bool             // Options.Tail accepted its bytes, not on disk: read again from its layer at the end and judged by TailCheck
	src      source           // where a regular file's bytes are in the layers
	kids     map[string]*node // a directory's entries by name
}

// want is Options.Keep's answer for one name.
type want uint8

const (
	wantNone  want = iota
	wantCheck      // its bytes decide (a Check)
	wantKeep       // its name decides
)

func wantOf(keep bool, check Check) want {
	switch {
	case keep:
		return wantKeep
	case check != nil:
		return wantCheck
	}
	return wantNone
}

// source locates a regular file's bytes: the index of its layer in the list Flatten was given
// (a digest may come twice) and of its entry in that layer's tar stream.
type source struct{ layer, entry int32 }

func newDir(f File, recorded bool) *node {
	return &node{file: f, recorded: recorded, kids: map[string]*node{}}
}

func (n *node) isDir() bool     { return n.kids != nil }
func (n *node) isSymlink() bool { return n.file.Mode&fs.ModeSymlink != 0 }

// stopError ends the walk (a limit, a broken layer); the result so far stands.
type stopError struct{ error }

type walker struct {
	ctx     context.Context
	root    *os.Root
	lim     Limits
	opts    Options
	dir     string // the tree's directory on disk
	tree    *node  // the root directory
	res     *Result
	entries int
	layers  []Layer
	li, ei  int      // the layer being read (its index) and the entry (its index in the layer)
	pending []string // paths of hard links whose bytes are to be made at the end (record lists them)
	buf     []byte   // copies files (io.Copy would allocate 32 KiB for each)
	tailBuf tailBuf  // the end of the file being read, for Options.Tail
	tails   int      // files Options.Tail accepted
	// unpacked are the paths this layer's entries unpacked (containerd's unpackedPaths): an
	// opaque directory keeps them.
	unpacked map[string]bool
}

func (w *walker) issue(l digest.Digest, p string, kind Kind, format string, args ...any) {
	w.res.Issues = append(w.res.Issues, Issue{Layer: l, Path: p, Kind: kind, Detail: fmt.Sprintf(format, args...)})
	if kind.Incomplete() {
		w.res.Incomplete = true
	}
}

// countingReader counts bytes, checks the context, and stops at a byte budget.
type countingReader struct {
	r      io.Reader
	n      *int64
	budget int64
	ctx    context.Context
}

var errBudget = errors.New("expanded size limit reached")

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	if c.budget > 0 && *c.n >= c.budget {
		return 0, errBudget
	}
	if c.budget > 0 && int64(len(p)) > c.budget-*c.n {
		p = p[:c.budget-*c.n]
	}
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

// decompress sniffs the stream: gzip, zstd, or a plain tar.
func decompress(r *bufio.Reader) (io.Reader, func(), error) {
	magic, _ := r.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		// pgzip inflates on its own goroutine, ahead of the reader: the tar walk, hashing and
		// checks run beside it instead of after it
		zr, err := pgzip.NewReaderN(r, 1<<20, 4)
		if err != nil {
			return nil, nil, err
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256<<20))
		if err != nil {
			return nil, nil, err
		}
		return zr, zr.Close, nil
	}
	return r, func() {}, nil
}

func (w *walker) layer(l Layer) error {
	rc, err := l.Open()
	if err != nil {
		return fmt.Errorf("opening layer %s: %w", l.Digest, err)
	}
	defer rc.Close()
	w.unpacked = map[string]bool{}
	compressed := &countingReader{r: rc, n: &w.res.Compressed, ctx: w.ctx}
	plain, done, err := decompress(bufio.NewReaderSize(compressed, 1<<20))
	if err != nil {
		w.issue(l.Digest, "", Unreadable, "the layer is not a readable gzip, zstd or tar stream: %v", err)
		return stopError{err}
	}
	defer done()
	budget := int64(0)
	if w.lim.MaxBytes > 0 {
		budget = w.lim.MaxBytes
	}
	tr := tar.NewReader(&countingReader{r: plain, n: &w.res.Expanded, budget: budget, ctx: w.ctx})
	for w.ei = 0; ; w.ei++ {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return w.broken(l.Digest, "", err)
		}
		w.entries++
		if w.lim.MaxEntries > 0 && w.entries > w.lim.MaxEntries {
			w.issue(l.Digest, shorten(h.Name), Limit, "more than %d entries", w.lim.MaxEntries)
			return stopError{errors.New("entry limit")}
		}
		if err := w.entry(l.Digest, h, tr); err != nil {
			return w.broken(l.Digest, shorten(h.Name), err)
		}
	}
}

// broken records why a layer could not be read to its end.
func (w *walker) broken(l digest.Digest, p string, err error) error {
	switch {
	case errors.Is(err, errBudget):
		w.issue(l, p, Limit, "more than %d expanded bytes (a decompression bomb, or an image larger than the limit)", w.lim.MaxBytes)
	case errors.Is(err, context.DeadlineExceeded):
		w.issue(l, p, Limit, "the scan's time limit of %s ran out", w.lim.Timeout)
	case errors.Is(err, context.Canceled):
		return err
	default:
		w.issue(l, p, Truncated, "the layer stream is broken: %v", err)
	}
	return stopError{err}
}

// shorten keeps an issue's path readable.
func shorten(p string) string {
	if len(p) > 200 {
		return p[:64] + "…" + p[len(p)-64:]
	}
	return p
}

// cleanName turns a tar entry's name into the root-relative path containerd unpacks it at, before
// any symlink among its directories is followed: the name cleaned (filepath.Clean), a leading
// "/" dropped, and ".." stopped at the root. climbs says whether the name tried to climb above
// the root ("../../etc/x" is placed at "etc/x"). The root itself is "".
func cleanName(name string) (p string, climbs bool) {
	c := path.Clean(name)
	climbs = c == ".." || strings.HasPrefix(c, "../")
	return strings.TrimPrefix(path.Clean("/"+c), "/"), climbs
}

// split is a root-relative path's components ("" has none).
func split(p string) []string {
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// lookup finds the node at a root-relative path, following no symlink (lstat).
func (w *walker) lookup(p string) *node {
	n := w.tree
	for _, c := range split(p) {
		if n.kids == nil {
			return nil
		}
		if n = n.kids[c]; n == nil {
			return nil
		}
	}
	return n
}

// maxLinks is how many symlinks containerd's fs.RootPath follows in one path before failing.
const maxLinks = 255

// rootPath resolves a directory path through the symlinks the tree holds, as containerd's
// fs.RootPath (continuity) does: a relative target is joined to its link's directory and the
// result cleaned lexically, an absolute one starts again at the root, ".." stops at the root, and
// a path needing more than 255 symlinks fails. climbed says whether some ".." tried to go above
// the root. A component that exists and is neither a directory nor a symlink fails the entry
// (containerd's lstat or mkdir gets ENOTDIR and the layer is refused).
//
// lower is the first symlink followed that a lower layer wrote (not an entry of the layer being
// read): the overlay snapshotters unpack each layer into an empty directory, where that symlink
// is not, so they do not follow it (see entry).
func (w *walker) rootPath(p string) (resolved string, climbed bool, kind Kind, why, lower string) {
	queue := split(p)
	var cur []string
	stack := []*node{w.tree} // the node at each prefix of cur (nil past what exists)
	hops := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				climbed = true
				continue
			}
			cur, stack = cur[:len(cur)-1], stack[:len(stack)-1]
			continue
		}
		var kid *node
		if parent := stack[len(stack)-1]; parent != nil {
			kid = parent.kids[c]
		}
		switch {
		case kid != nil && kid.isSymlink():
			hops++
			if hops > maxLinks {
				return "", climbed, Loop, fmt.Sprintf("more than %d symlinks (a loop) among its directories", maxLinks), lower
			}
			if sp := path.Join(append(cur, c)...); lower == "" && !w.unpacked[sp] {
				lower = sp
			}
			target := kid.file.Link
			if !path.IsAbs(target) {
				joined := path.Clean(path.Join(strings.Join(cur, "/"), target))
				if joined == ".." || strings.HasPrefix(joined, "../") {
					climbed = true
				}
				target = joined
			}
			queue = append(split(strings.TrimPrefix(path.Clean("/"+target), "/")), queue...)
			cur, stack = nil, stack[:1]
		case kid != nil && !kid.isDir():
			return "", climbed, Invalid, fmt.Sprintf("%s is not a directory (containerd refuses the layer)", path.Join(append(cur, c)...)), lower
		default:
			cur, stack = append(cur, c), append(stack, kid)
		}
	}
	return strings.Join(cur, "/"), climbed, "", "", lower
}

// mkparent makes the directories of a resolved directory path that do not exist yet, as
// containerd's mkparent does (rootPath has checked that what exists are directories).
func (w *walker) mkparent(d string) *node {
	n := w.tree
	for _, c := range split(d) {
		kid := n.kids[c]
		if kid == nil {
			kid = newDir(File{Mode: fs.ModeDir | 0o755}, false)
			n.kids[c] = kid
		}
		n = kid
	}
	return n
}

// ensureDisk makes a directory of the tree on disk (and its parents), once.
func (w *walker) ensureDisk(d string) error {
	onDisk := true
	n := w.tree
	for _, c := range split(d) {
		if n = n.kids[c]; n == nil || !n.isDir() {
			return fmt.Errorf("%s is not a directory of the tree", d)
		}
		onDisk = onDisk && n.onDisk
	}
	if onDisk {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(w.dir, filepath.FromSlash(d)), 0o755); err != nil {
		return err
	}
	n = w.tree
	for _, c := range split(d) {
		n = n.kids[c]
		n.onDisk = true
	}
	return nil
}

// parentOf is the directory holding a root-relative path ("" for the root).
func parentOf(p string) string {
	d, _ := path.Split(p)
	return strings.TrimSuffix(d, "/")
}

// detach removes a path and all it holds from the tree (containerd's os.RemoveAll).
func (w *walker) detach(parent *node, name, p string) {
	n := parent.kids[name]
	if n == nil {
		return
	}
	delete(parent.kids, name)
	if n.onDisk {
		os.RemoveAll(filepath.Join(w.dir, filepath.FromSlash(p)))
	}
}

// wroteHere reports whether an entry of the layer being read unpacked p or something under it.
func (w *walker) wroteHere(p string, n *node) bool {
	if w.unpacked[p] {
		return true
	}
	for name, kid := range n.kids {
		if w.wroteHere(p+"/"+name, kid) {
			return true
		}
	}
	return false
}

// opaque applies an opaque directory marker as containerd does: everything under d that no
// entry of this layer unpacked goes, with all it holds. It reports whether that took something
// this same layer wrote (a file unpacked into a directory only made to hold it).
func (w *walker) opaque(d string, dn *node) (tookOwn bool) {
	for name, kid := range dn.kids {
		p := path.Join(d, name)
		if w.unpacked[p] {
			if kid.isDir() && w.opaque(p, kid) {
				tookOwn = true
			}
			continue
		}
		if w.wroteHere(p, kid) {
			tookOwn = true
		}
		w.detach(dn, name, p)
	}
	return tookOwn
}

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
)

func (w *walker) entry(l digest.Digest, h *tar.Header, body io.Reader) error {
	p, climbs := cleanName(h.Name)
	if w.lim.MaxPathLen > 0 && len(p) > w.lim.MaxPathLen {
		w.issue(l, shorten(p), TooLong, "a path of %d characters once cleaned (%d as named), over the limit of %d: not read", len(p), len(h.Name), w.lim.MaxPathLen)
		return nil
	}
	if p == "" {
		return nil // the root itself (".", "/", ".."): containerd skips it
	}
	base := path.Base(p)
	rd, climbed, kind, why, lower := w.rootPath(parentOf(p))
	if kind != "" {
		w.issue(l, shorten(p), kind, "%s", why)
		return nil
	}
	full := path.Join(rd, base)
	if lower != "" {
		// containerd's native snapshotter unpacks into the tree so far and follows the symlink;
		// the overlay snapshotters (containerd's default, podman and CRI-O's, Docker's overlay2)
		// unpack the layer into an empty directory, where the directories of the entry's name
		// are made as directories that hide the symlink, and what it leads to stays as it was.
		// The entry is placed as the native snapshotter places it.
		w.issue(l, shorten(p), Ambiguous, "the entry %s passes through %s, a symlink of a lower layer: containerd's native snapshotter follows it (to %s), overlay snapshotters (the default) hide it with a directory; what a runtime reads here depends on the snapshotter", shorten(p), shorten(lower), shorten(full))
	}
	if climbs || climbed {
		w.issue(l, shorten(full), Escape, "the entry %q climbs above the image root (through its name or a symlink among its directories); placed at %s, as containerd places it", shorten(h.Name), shorten(full))
	}
	parent := w.mkparent(rd)

	if strings.HasPrefix(base, whiteoutPrefix) {
		if base == opaqueMarker {
			if w.opaque(rd, parent) {
				w.issue(l, shorten(full), Ambiguous, "an opaque directory marker removes files this same layer put in %s: the OCI image spec hides only lower layers with it, containerd removes them", orRoot(rd))
			}
			return nil
		}
		target := base[len(whiteoutPrefix):]
		if target == "" || target == "." || target == ".." {
			w.issue(l, shorten(full), Invalid, "the whiteout %q names no file (containerd refuses the layer)", base)
			return nil
		}
		tp := path.Join(rd, target)
		if n := parent.kids[target]; n != nil {
			if w.wroteHere(tp, n) {
				w.issue(l, shorten(tp), Ambiguous, "the whiteout %s removes what this same layer wrote at %s: the OCI image spec hides only lower layers with it, containerd removes it", base, tp)
			}
			w.detach(parent, target, tp)
		}
		return nil
	}

	info := h.FileInfo()
	mode := info.Mode()
	sparse := h.Typeflag == tar.TypeGNUSparse
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			sparse = true
		}
	}
	switch h.Typeflag {
	case tar.TypeDir, tar.TypeReg, tar.TypeGNUSparse, tar.TypeSymlink, tar.TypeLink, tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeXGlobalHeader:
	default:
		w.issue(l, shorten(full), Unsupported, "a tar entry of type %q, which containerd does not extract (it refuses the layer)", h.Typeflag)
		return nil
	}
	if h.Typeflag == tar.TypeXGlobalHeader && parent.kids[base] != nil && !w.unpacked[full] {
		// containerd removes what is at the header's name, then ignores the header: on the
		// native snapshotter that is a lower layer's entry; overlay snapshotters unpack into an
		// empty directory, where there is nothing to remove, and the lower entry stays visible.
		// Placed as the native snapshotter places it.
		w.issue(l, shorten(full), Ambiguous, "a PAX global header named %s, where a lower layer wrote an entry: containerd's native snapshotter removes the entry, overlay snapshotters (the default) leave it; what a runtime reads here depends on the snapshotter", shorten(full))
	}
	// What is at the path goes, unless both are directories (merged).
	if old := parent.kids[base]; old != nil && !(old.isDir() && h.Typeflag == tar.TypeDir) {
		w.detach(parent, base, full)
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if old := parent.kids[base]; old != nil {
			old.file, old.recorded = File{Layer: l, Mode: mode}, true
		} else {
			parent.kids[base] = newDir(File{Layer: l, Mode: mode}, true)
		}
	case tar.TypeReg, tar.TypeGNUSparse:
		if sparse {
			w.issue(l, shorten(full), Sparse, "a GNU sparse entry (%s): readers disagree on its name and bytes, and containerd refuses the old sparse type", sparseKind(h))
		}
		if err := w.regular(l, parent, base, full, h, info, body); err != nil {
			return err
		}
	case tar.TypeSymlink:
		keep := true
		if w.opts.Keep != nil {
			keep, _ = w.opts.Keep(full, info)
		}
		parent.kids[base] = &node{file: File{Layer: l, Mode: mode, Link: h.Linkname}, recorded: true, keepLink: keep}
	case tar.TypeLink:
		if !w.hardLink(l, parent, base, full, h) {
			return nil
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		parent.kids[base] = &node{file: File{Layer: l, Mode: mode}, recorded: true}
		w.issue(l, shorten(full), Special, "a %s (recorded where containerd makes it; not made in the tree)", typeName(h.Typeflag))
	case tar.TypeXGlobalHeader:
		return nil // nothing is made at its name (nor is it one this layer unpacked)
	}
	w.unpacked[full] = true
	return nil
}

func sparseKind(h *tar.Header) string {
	if h.Typeflag == tar.TypeGNUSparse {
		return "old GNU type 'S'"
	}
	return "PAX GNU.sparse records"
}

func orRoot(d string) string {
	if d == "" {
		return "the root"
	}
	return d
}

// regular reads one regular file: hashed always, streamed into the tree when kept or when
// Options.Keep's check must look at it, shown to Inspect when wanted (bounded by InspectMax).
func (w *walker) regular(l digest.Digest, parent *node, base, p string, h *tar.Header, info fs.FileInfo, body io.Reader) error {
	mode := info.Mode()
	n := &node{file: File{Layer: l, Size: h.Size, Mode: mode}, recorded: true, src: source{int32(w.li), int32(w.ei)}}
	parent.kids[base] = n
	if w.lim.MaxFileSize > 0 && h.Size > w.lim.MaxFileSize {
		w.issue(l, shorten(p), Limit, "a %d-byte file, over the %d-byte limit for files examined: not read", h.Size, w.lim.MaxFileSize)
		return nil // the tar reader skips its body
	}
	keep, check := true, Check(nil)
	if w.opts.Keep != nil {
		keep, check = w.opts.Keep(p, info)
	}
	n.want = wantOf(keep, check)
	if !keep && check == nil && w.opts.Sniff != nil && h.Size > 0 {
		head := make([]byte, min(h.Size, SniffLen))
		k, err := io.ReadFull(body, head)
		if err != nil {
			delete(parent.kids, base)
			return err // the layer ends inside the file: the caller reports it as truncated
		}
		// only Read: io.MultiReader's WriteTo would copy through a 32 KiB buffer of its own a file
		body = readOnly{io.MultiReader(bytes.NewReader(head[:k]), body)}
		check = w.opts.Sniff(head[:k])
	}
	inspect := w.opts.Inspect != nil && w.opts.Wants != nil && h.Size <= w.opts.InspectMax && w.opts.Wants(p, h.Size)
	hs := sha256.New()
	sinks := []io.Writer{hs}
	tail := !keep && check == nil && w.opts.Tail != nil && h.Size > 0
	if tail {
		w.tailBuf.reset()
		sinks = append(sinks, &w.tailBuf)
	}
	var data *bytes.Buffer
	if inspect {
		data = bytes.NewBuffer(make([]byte, 0, h.Size))
		sinks = append(sinks, data)
	}
	var out *os.File
	disk := filepath.Join(w.dir, filepath.FromSlash(p))
	if keep || check != nil {
		if err := w.ensureDisk(parentOf(p)); err != nil {
			w.issue(l, shorten(p), Unwritable, "its directory cannot be made in the tree: %v", err)
		} else {
			perm := os.FileMode(0o644)
			if mode&0o111 != 0 {
				perm = 0o755 // executables stay executable (extractors look for them); setuid bits never
			}
			// A plain path is safe here: it is clean and below the root, and the tree holds no
			// symlink while layers are written (see makeLinks).
			f, err := os.OpenFile(disk, os.O_CREATE|os.O_RDWR|os.O_TRUNC, perm)
			if err != nil {
				w.issue(l, shorten(p), Unwritable, "the file cannot be written into the tree: %v", err)
			} else {
				out = f
				sinks = append(sinks, out)
			}
		}
	}
	if w.buf == nil {
		w.buf = make([]byte, 64<<10)
	}
	size, err := io.CopyBuffer(io.MultiWriter(sinks...), body, w.buf)
	if err != nil {
		if out != nil {
			out.Close()
			os.Remove(disk)
		}
		delete(parent.kids, base)
		return err
	}
	n.file.SHA256 = digest.NewDigest(digest.SHA256, hs)
	w.res.Written = append(w.res.Written, Written{Path: p, Layer: l, Size: size, SHA256: n.file.SHA256})
	if tail && w.opts.Tail(w.tailBuf.bytes()) {
		// each is read again at the end and holds a record till then: bounded
		if w.tails++; w.tails <= maxTails {
			n.tail = true
		} else if w.tails == maxTails+1 {
			w.issue(l, shorten(p), Limit, "more than %d files whose ends Options.Tail wants judged (zip archives after other data): from this one on they are not judged", maxTails)
		}
	}
	if out != nil {
		if check != nil {
			n.judged = true
			ok, err := check(out, size)
			if err != nil {
				w.issue(l, shorten(p), Unchecked, "the file could not be judged: %v", err)
			}
			keep = ok && err == nil
		}
		if err := out.Close(); err != nil {
			keep = false
		}
		if keep {
			n.onDisk = true
		} else {
			os.Remove(disk)
		}
	}
	if inspect {
		w.opts.Inspect(p, l, data.Bytes())
	}
	return nil
}

// hardLink records a hard link as containerd makes it (hardlinkRootPath then link(2)): the
// target's directory resolved through symlinks, its last component not, so a link to a symlink
// is a second symlink. A missing target or a directory fails the link, and containerd the layer.
func (w *walker) hardLink(l digest.Digest, parent *node, base, p string, h *tar.Header) bool {
	tdir, tbase := path.Split(h.Linkname)
	rd, climbed, kind, why, lower := w.rootPath(tdir)
	if kind != "" {
		w.issue(l, shorten(p), kind, "its target %q: %s", shorten(h.Linkname), why)
		return false
	}
	if lower != "" {
		// an overlay snapshotter resolves the target in the layer's own directory, without the
		// lower layer's symlink (see entry)
		w.issue(l, shorten(p), Ambiguous, "the hard link %s names its target %s through %s, a symlink of a lower layer: containerd's native snapshotter follows it, overlay snapshotters (the default) do not; what a runtime reads here depends on the snapshotter", shorten(p), shorten(h.Linkname), shorten(lower))
	}
	target, up := cleanName(path.Join(rd, tbase))
	if climbed || up {
		w.issue(l, shorten(p), Escape, "a hard link to %q, which climbs above the image root; containerd links %s", shorten(h.Linkname), orRoot(target))
	}
	src := w.lookup(target)
	if src == nil || src.isDir() || target == "" {
		what := "does not exist"
		if src != nil {
			what = "is a directory"
		}
		w.issue(l, shorten(p), Invalid, "a hard link to %q, which %s in the image (containerd refuses the layer)", shorten(h.Linkname), what)
		return false
	}
	n := &node{file: src.file, recorded: true, keepLink: src.keepLink, src: src.src, judged: src.judged, tail: src.tail}
	n.file.Layer = l
	parent.kids[base] = n
	if src.isSymlink() || !src.file.Mode.IsRegular() {
		return true // a second symlink (resolved at the end like any other) or a device
	}
	n.want = wantKeep
	if w.opts.Keep != nil {
		// The link's own name decides too: a package database linked to a file at a path
		// nobody wants is read at the link's path by the runtime.
		n.want = wantOf(w.opts.Keep(p, statOf(base, src.file)))
	}
	if src.onDisk {
		if err := w.ensureDisk(parentOf(p)); err == nil {
			if err := os.Link(filepath.Join(w.dir, filepath.FromSlash(target)), filepath.Join(w.dir, filepath.FromSlash(p))); err != nil {
				w.issue(l, shorten(p), Unwritable, "the hard link to %q cannot be made in the tree: %v", h.Linkname, err)
			} else {
				n.onDisk = true
			}
		}
		return true
	}
	// Not on disk: the target was not wanted by its name, or its check refused its bytes (a
	// check judges bytes, whatever their name), or it was too large to read.
	n.pending = src.file.SHA256 != "" && (n.want == wantKeep || n.want == wantCheck && !src.judged)
	return true
}

func typeName(t byte) string {
	switch t {
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type %q", t)
}

// record lists the tree's paths into Result.Files.
func (w *walker) record(p string, n *node) {
	if n.recorded && p != "" {
		w.res.Files[p] = n.file
	}
	if (n.pending || n.tail) && !n.onDisk {
		w.pending = append(w.pending, p)
	}
	for name, kid := range n.kids {
		w.record(path.Join(p, name), kid)
	}
}

// makeLinks creates the symlinks kept, after the walk: while layers are written the tree holds
// no symlink, so no write can be led outside it; these are made through the os.Root, and
// absolute targets are rewritten relative to the image root, as inside the container.
func (w *walker) makeLinks() {
	var paths []string
	for p, f := range w.res.Files {
		if f.Mode&fs.ModeSymlink != 0 {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		n := w.lookup(p)
		if n == nil || !n.keepLink {
			continue
		}
		target := n.file.Link
		if path.IsAbs(target) {
			target = relTo(path.Dir(p), strings.TrimPrefix(path.Clean(target), "/"))
		}
		if err := w.root.MkdirAll(path.Dir(p), 0o755); err != nil {
			w.issue(n.file.Layer, p, Unwritable, "the symlink's directory cannot be made in the tree: %v", err)
			continue
		}
		if err := w.root.Symlink(target, p); err != nil {
			w.issue(n.file.Layer, p, Unwritable, "the symlink cannot be made in the tree: %v", err)
		}
	}
}

// relTo is the relative path from a root-relative directory to a root-relative path.
func relTo(fromDir, to string) string {
	var parts []string
	if fromDir != "." && fromDir != "" {
		for range strings.Split(fromDir, "/") {
			parts = append(parts, "..")
		}
	}
	if to != "" && to != "." {
		parts = append(parts, to)
	}
	if len(parts) == 0 {
		return "."
	}
	return strings.Join(parts, "/")
}
