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
	MaxFileSize int64         // larger regular files are recorded but not written or hashed
	MaxPathLen  int           // longer paths are skipped
	Timeout     time.Duration // the whole walk
}

// DefaultLimits suit ordinary images and stop bombs early.
var DefaultLimits = Limits{MaxBytes: 16 << 30, MaxEntries: 2_000_000, MaxFileSize: 1 << 30, MaxPathLen: 4096, Timeout: 10 * time.Minute}

// Options choose what of each file the caller needs beyond its record (path, layer, mode, size,
// SHA-256), which Flatten always keeps.
type Options struct {
	// Keep says whether a file (or symlink) goes into the tree (nil: all do). Files not kept are
	// still hashed and recorded; a scanner that reads only package databases and some binaries
	// saves writing the rest. A non-nil check defers the decision for a regular file to its
	// bytes (read into memory, up to MaxFileSize): it is kept if check says so.
	Keep func(path string, info fs.FileInfo) (keep bool, check func(data []byte) bool)
	// Wants says whether Inspect should see a file of this size (nil: none); InspectMax bounds it.
	Wants      func(path string, size int64) bool
	InspectMax int64
	// Inspect gets the bytes of each wanted file as its layer is read, from every layer (a
	// secret later deleted is still in the image's layers).
	Inspect func(path string, layer digest.Digest, data []byte)
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

// Issue is something in a layer that was refused or cut short.
type Issue struct {
	Layer  digest.Digest
	Path   string
	Kind   string // escape, limit, truncated, special, toolong, unreadable
	Detail string
}

// Result is a flattened tree.
type Result struct {
	Root       string          // the directory holding the tree
	Files      map[string]File // by path relative to the root ("etc/os-release")
	Issues     []Issue
	Compressed int64 // bytes read from the layers as stored
	Expanded   int64 // bytes of tar streams read
	Incomplete bool  // a limit or a broken layer ended the walk early
}

// Flatten writes the layers, in order, into dir (which must exist and be empty).
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
	w := &walker{ctx: ctx, root: root, lim: lim, opts: opts, dir: dir, dirs: map[string]bool{}, links: map[string]string{},
		res: &Result{Root: dir, Files: map[string]File{}}}
	for _, l := range layers {
		if err := w.layer(l); err != nil {
			var stop stopError
			if errors.As(err, &stop) {
				w.res.Incomplete = true
				break
			}
			return nil, err
		}
	}
	w.makeLinks()
	return w.res, nil
}

// resolve follows the symlinks among p's directories (as recorded by earlier entries) and
// returns the path the entry really names, or the kind of issue ("escape", "loop") and why.
func (w *walker) resolve(p string) (string, string, string) {
	parts := strings.Split(p, "/")
	cur := ""
	hops := 0
	for i := 0; i < len(parts)-1; i++ {
		next := path.Join(cur, parts[i])
		f, ok := w.res.Files[next]
		if !ok || f.Link == "" {
			cur = next
			continue
		}
		hops++
		if hops > 40 {
			return "", "loop", "a chain of more than 40 symlinks (a loop) among its directories"
		}
		var target string
		if path.IsAbs(f.Link) {
			target = strings.TrimPrefix(path.Clean(f.Link), "/")
		} else {
			t, inside := joinInside(cur, f.Link)
			if !inside {
				return "", "escape", fmt.Sprintf("its directory %s is a symlink to %q, which leaves the image root", next, f.Link)
			}
			target = t
		}
		// continue from the target: re-resolve its own components too
		rest := strings.Join(parts[i+1:], "/")
		parts = strings.Split(strings.Trim(target+"/"+rest, "/"), "/")
		cur, i = "", -1
	}
	return path.Join(cur, parts[len(parts)-1]), "", ""
}

// joinInside joins a root-relative directory and a relative path, and reports whether the
// result stays inside the root.
func joinInside(dir, rel string) (string, bool) {
	depth := 0
	var out []string
	if dir != "" {
		out = strings.Split(dir, "/")
		depth = len(out)
	}
	for _, c := range strings.Split(rel, "/") {
		switch c {
		case "", ".":
		case "..":
			if depth == 0 {
				return "", false
			}
			depth--
			out = out[:len(out)-1]
		default:
			depth++
			out = append(out, c)
		}
	}
	return strings.Join(out, "/"), true
}

// makeLinks creates the symlinks kept, after the walk: while layers are written the tree holds
// no symlink, so no write can be led outside it; these are made through the os.Root, and
// absolute targets are rewritten relative to the image root, as inside the container.
func (w *walker) makeLinks() {
	paths := make([]string, 0, len(w.links))
	for p := range w.links {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		f, ok := w.res.Files[p]
		if !ok || f.Link != w.links[p] {
			continue // removed or replaced by a later layer
		}
		target := f.Link
		if path.IsAbs(target) {
			rel, err := filepathRel(path.Dir(p), strings.TrimPrefix(path.Clean(target), "/"))
			if err != nil {
				w.issue(f.Layer, p, "escape", "the symlink target %q cannot be kept inside the root", f.Link)
				continue
			}
			target = rel
		}
		if err := w.root.MkdirAll(path.Dir(p), 0o755); err != nil {
			w.issue(f.Layer, p, "escape", "the symlink's directory cannot be made inside the root: %v", err)
			continue
		}
		if err := w.root.Symlink(target, p); err != nil {
			w.issue(f.Layer, p, "escape", "the symlink cannot be made: %v", err)
		}
	}
}

// stopError ends the walk (a limit, a broken layer); the result so far stands.
type stopError struct{ error }

type walker struct {
	ctx     context.Context
	root    *os.Root
	lim     Limits
	opts    Options
	dirs    map[string]bool   // directories known to exist on disk
	dir     string            // the tree's directory on disk
	links   map[string]string // symlinks to make once the walk is done: path -> target
	res     *Result
	entries int
}

func (w *walker) issue(l digest.Digest, p, kind, format string, args ...any) {
	w.res.Issues = append(w.res.Issues, Issue{Layer: l, Path: p, Kind: kind, Detail: fmt.Sprintf(format, args...)})
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
	compressed := &countingReader{r: rc, n: &w.res.Compressed, ctx: w.ctx}
	plain, done, err := decompress(bufio.NewReaderSize(compressed, 1<<20))
	if err != nil {
		w.issue(l.Digest, "", "unreadable", "the layer is not a readable gzip, zstd or tar stream: %v", err)
		return stopError{err}
	}
	defer done()
	budget := int64(0)
	if w.lim.MaxBytes > 0 {
		budget = w.lim.MaxBytes
	}
	tr := tar.NewReader(&countingReader{r: plain, n: &w.res.Expanded, budget: budget, ctx: w.ctx})
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return w.broken(l.Digest, "", err)
		}
		w.entries++
		if w.lim.MaxEntries > 0 && w.entries > w.lim.MaxEntries {
			w.issue(l.Digest, h.Name, "limit", "more than %d entries", w.lim.MaxEntries)
			return stopError{errors.New("entry limit")}
		}
		if err := w.entry(l.Digest, h, tr); err != nil {
			return w.broken(l.Digest, h.Name, err)
		}
	}
}

// broken records why a layer could not be read to its end.
func (w *walker) broken(l digest.Digest, p string, err error) error {
	switch {
	case errors.Is(err, errBudget):
		w.issue(l, p, "limit", "more than %d expanded bytes (a decompression bomb, or an image larger than the limit)", w.lim.MaxBytes)
	case errors.Is(err, context.DeadlineExceeded):
		w.issue(l, p, "limit", "the scan's time limit of %s ran out", w.lim.Timeout)
	case errors.Is(err, context.Canceled):
		return err
	default:
		w.issue(l, p, "truncated", "the layer stream is broken: %v", err)
	}
	return stopError{err}
}

// clean turns a tar name into a root-relative path, or "" when it leaves the root.
func clean(name string) string {
	p := path.Clean("/" + name) // "/../x" cleans to "/x": a leading .. cannot climb above the root
	if strings.Contains(name, "..") {
		// A name that needed .. to stay inside is still suspicious; refuse any that climbs.
		depth := 0
		for _, c := range strings.Split(strings.Trim(path.Clean(name), "/"), "/") {
			switch c {
			case "..":
				depth--
			case ".", "":
			default:
				depth++
			}
			if depth < 0 {
				return ""
			}
		}
	}
	return strings.TrimPrefix(p, "/")
}

func (w *walker) entry(l digest.Digest, h *tar.Header, body io.Reader) error {
	if w.lim.MaxPathLen > 0 && len(h.Name) > w.lim.MaxPathLen {
		w.issue(l, h.Name[:64]+"…", "toolong", "a path of %d characters", len(h.Name))
		return nil
	}
	p := clean(h.Name)
	if p == "" && h.Name != "." && h.Name != "./" && h.Name != "/" {
		w.issue(l, h.Name, "escape", "the path climbs out of the image root")
		return nil
	}
	if p == "" {
		return nil
	}
	// Inside the container a path whose directories are symlinks leads wherever they point:
	// resolve them, lexically, against what the layers recorded (nothing on disk is followed).
	if rp, kind, why := w.resolve(p); kind != "" {
		w.issue(l, h.Name, kind, "%s", why)
		return nil
	} else {
		p = rp
	}
	dir, base := path.Split(p)
	// whiteouts
	if base == ".wh..wh..opq" {
		w.removeUnder(strings.TrimSuffix(dir, "/"), false)
		return nil
	}
	if strings.HasPrefix(base, ".wh.") {
		w.remove(dir + strings.TrimPrefix(base, ".wh."))
		return nil
	}
	if dir != "" {
		if err := w.mkdirAll(strings.TrimSuffix(dir, "/")); err != nil {
			w.issue(l, p, "escape", "its directory cannot be made inside the root: %v", err)
			return nil
		}
	}
	mode := h.FileInfo().Mode()
	switch h.Typeflag {
	case tar.TypeDir:
		if fi, err := w.root.Lstat(p); err == nil && !fi.IsDir() {
			w.remove(p)
		}
		if err := w.mkdirAll(p); err != nil {
			w.issue(l, p, "escape", "the directory cannot be made inside the root: %v", err)
			return nil
		}
		w.res.Files[p] = File{Layer: l, Mode: mode}
	case tar.TypeReg, tar.TypeRegA:
		w.replace(p)
		f := File{Layer: l, Size: h.Size, Mode: mode}
		if w.lim.MaxFileSize > 0 && h.Size > w.lim.MaxFileSize {
			w.issue(l, p, "limit", "a %d-byte file, over the %d-byte limit for files examined", h.Size, w.lim.MaxFileSize)
			w.res.Files[p] = f
			return nil // the tar reader skips its body
		}
		perm := os.FileMode(0o644)
		if mode&0o111 != 0 {
			perm = 0o755 // executables stay executable (extractors look for them); setuid bits never
		}
		keep, check := true, (func([]byte) bool)(nil)
		if w.opts.Keep != nil {
			keep, check = w.opts.Keep(p, h.FileInfo())
		}
		inspect := w.opts.Inspect != nil && w.opts.Wants != nil && h.Size <= w.opts.InspectMax && w.opts.Wants(p, h.Size)
		hs := sha256.New()
		var data []byte
		if inspect || check != nil {
			b, err := io.ReadAll(io.TeeReader(body, hs))
			if err != nil {
				return err
			}
			data = b
		}
		if check != nil {
			keep = check(data)
		}
		if keep {
			// A plain path is safe here: it is clean and below the root, and the tree holds no
			// symlink while layers are written (see makeLinks).
			out, err := os.OpenFile(filepath.Join(w.dir, filepath.FromSlash(p)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
			if err != nil {
				w.issue(l, p, "unwritable", "the file cannot be written into the tree: %v", err)
				return nil
			}
			if data != nil {
				_, err = out.Write(data)
			} else {
				_, err = io.Copy(io.MultiWriter(out, hs), body)
			}
			out.Close()
			if err != nil {
				w.root.Remove(p)
				return err
			}
		} else if data == nil {
			if _, err := io.Copy(hs, body); err != nil {
				return err
			}
		}
		f.SHA256 = digest.NewDigest(digest.SHA256, hs)
		w.res.Files[p] = f
		if inspect {
			w.opts.Inspect(p, l, data)
		}
	case tar.TypeSymlink:
		w.replace(p)
		w.res.Files[p] = File{Layer: l, Mode: mode, Link: h.Linkname}
		if keep, _ := w.keep(p, h.FileInfo()); keep {
			w.links[p] = h.Linkname
		}
	case tar.TypeLink:
		target := clean(h.Linkname)
		src, ok := w.res.Files[target]
		if target == "" || !ok {
			w.issue(l, p, "escape", "a hard link to %q, which is not in the image", h.Linkname)
			return nil
		}
		w.replace(p)
		if src.Link == "" && !src.Mode.IsDir() {
			// a target not kept on disk is recorded only
			if err := os.Link(filepath.Join(w.dir, filepath.FromSlash(target)), filepath.Join(w.dir, filepath.FromSlash(p))); err != nil && !errors.Is(err, fs.ErrNotExist) {
				w.issue(l, p, "unwritable", "the hard link to %q cannot be made: %v", h.Linkname, err)
				return nil
			}
		}
		src.Layer = l
		w.res.Files[p] = src
	default:
		w.issue(l, p, "special", "a %s entry (devices, fifos and the like are not extracted)", typeName(h.Typeflag))
	}
	return nil
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

func (w *walker) keep(p string, info fs.FileInfo) (bool, func([]byte) bool) {
	if w.opts.Keep == nil {
		return true, nil
	}
	return w.opts.Keep(p, info)
}

// removeAll deletes a path of the tree (RemoveAll does not follow symlinks).
func (w *walker) removeAll(p string) {
	if p == "" || p == "." {
		entries, _ := os.ReadDir(w.dir)
		for _, e := range entries {
			os.RemoveAll(filepath.Join(w.dir, e.Name()))
		}
		return
	}
	os.RemoveAll(filepath.Join(w.dir, filepath.FromSlash(p)))
}

// mkdirAll makes a directory (and its parents) inside the root, once.
func (w *walker) mkdirAll(d string) error {
	if w.dirs[d] {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(w.dir, filepath.FromSlash(d)), 0o755); err != nil {
		return err
	}
	for ; d != "." && d != "" && !w.dirs[d]; d = path.Dir(d) {
		w.dirs[d] = true
	}
	return nil
}

// replace clears whatever a later entry at p overwrites (a file over a directory and so on).
func (w *walker) replace(p string) {
	if old, ok := w.res.Files[p]; ok || w.dirs[p] {
		if old.Mode.IsDir() || w.dirs[p] {
			w.forgetDirs(p)
			w.removeUnder(p, true)
		} else {
			os.Remove(filepath.Join(w.dir, filepath.FromSlash(p)))
		}
	}
	delete(w.links, p)
	delete(w.res.Files, p)
}

// forgetDirs drops the cached directories at and under p (they were removed).
func (w *walker) forgetDirs(p string) {
	for d := range w.dirs {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(w.dirs, d)
		}
	}
}

// remove deletes a path and everything under it (a whiteout).
func (w *walker) remove(p string) {
	w.forgetDirs(p)
	w.removeAll(p)
	delete(w.res.Files, p)
	w.removeUnder(p, true)
}

// removeUnder deletes what is under dir; self says whether dir itself goes too.
func (w *walker) removeUnder(dir string, self bool) {
	prefix := dir + "/"
	if dir == "" {
		prefix = ""
	}
	var gone []string
	for p := range w.res.Files {
		if strings.HasPrefix(p, prefix) && p != dir {
			gone = append(gone, p)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(gone)))
	for _, p := range gone {
		delete(w.res.Files, p)
		if !self {
			w.forgetDirs(p)
			w.removeAll(p)
		}
	}
	if self {
		w.removeAll(dir)
	}
}

// filepathRel is path-based filepath.Rel for slash-separated root-relative paths.
func filepathRel(fromDir, to string) (string, error) {
	if fromDir == "." {
		fromDir = ""
	}
	from := strings.Split(fromDir, "/")
	if fromDir == "" {
		from = nil
	}
	if to == "." {
		to = ""
	}
	parts := []string{}
	for range from {
		parts = append(parts, "..")
	}
	if to != "" {
		parts = append(parts, to)
	}
	if len(parts) == 0 {
		return ".", nil
	}
	return strings.Join(parts, "/"), nil
}
