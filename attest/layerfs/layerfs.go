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
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
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
func Flatten(ctx context.Context, dir string, layers []Layer, lim Limits) (*Result, error) {
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
	w := &walker{ctx: ctx, root: root, lim: lim, res: &Result{Root: dir, Files: map[string]File{}}}
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
	return w.res, nil
}

// stopError ends the walk (a limit, a broken layer); the result so far stands.
type stopError struct{ error }

type walker struct {
	ctx     context.Context
	root    *os.Root
	lim     Limits
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
		zr, err := gzip.NewReader(r)
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
		if err := w.root.MkdirAll(strings.TrimSuffix(dir, "/"), 0o755); err != nil {
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
		if err := w.root.MkdirAll(p, 0o755); err != nil {
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
		out, err := w.root.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
		if err != nil {
			w.issue(l, p, "escape", "the file cannot be written inside the root: %v", err)
			return nil
		}
		hs := sha256.New()
		_, err = io.Copy(io.MultiWriter(out, hs), body)
		out.Close()
		if err != nil {
			w.root.Remove(p)
			return err
		}
		f.SHA256 = digest.NewDigest(digest.SHA256, hs)
		w.res.Files[p] = f
	case tar.TypeSymlink:
		w.replace(p)
		target := h.Linkname
		if path.IsAbs(target) {
			// As inside the container: an absolute target is relative to the image root.
			rel, err := filepathRel(path.Dir(p), strings.TrimPrefix(path.Clean(target), "/"))
			if err != nil {
				w.issue(l, p, "escape", "the symlink target %q cannot be kept inside the root", h.Linkname)
				return nil
			}
			target = rel
		}
		if err := w.root.Symlink(target, p); err != nil {
			w.issue(l, p, "escape", "the symlink cannot be made: %v", err)
			return nil
		}
		w.res.Files[p] = File{Layer: l, Mode: mode, Link: h.Linkname}
	case tar.TypeLink:
		target := clean(h.Linkname)
		src, ok := w.res.Files[target]
		if target == "" || !ok {
			w.issue(l, p, "escape", "a hard link to %q, which is not in the image", h.Linkname)
			return nil
		}
		w.replace(p)
		if err := w.root.Link(target, p); err != nil {
			w.issue(l, p, "escape", "the hard link to %q cannot be made inside the root: %v", h.Linkname, err)
			return nil
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

// replace clears whatever a later entry at p overwrites (a file over a directory and so on).
func (w *walker) replace(p string) {
	if fi, err := w.root.Lstat(p); err == nil {
		if fi.IsDir() {
			w.removeUnder(p, true)
		} else {
			w.root.Remove(p)
		}
	}
	delete(w.res.Files, p)
}

// remove deletes a path and everything under it (a whiteout).
func (w *walker) remove(p string) {
	w.root.RemoveAll(p)
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
			w.root.RemoveAll(p)
		}
	}
	if self {
		w.root.RemoveAll(dir)
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
