package inventory

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"sync"

	scalibr "github.com/google/osv-scalibr"
	"github.com/google/osv-scalibr/extractor"
	"github.com/google/osv-scalibr/extractor/filesystem"
	scalibrfs "github.com/google/osv-scalibr/fs"
	scalibrinv "github.com/google/osv-scalibr/inventory"
	"github.com/google/osv-scalibr/plugin"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// Limits bound what the extractors read of one image. A file or package past a bound is not
// silently dropped: it is Unread, and the scan incomplete.
type Limits struct {
	// MaxPackages bounds the packages listed for one image (scalibr holds them all in memory,
	// and so do the report, the SBOMs and the matching); past it the rest are Unread.
	MaxPackages int
	// MaxMetadataFile bounds the files that extractors read whole: package databases, manifests
	// and lock files. Extractors that stream a file or read bounded parts of it (programs,
	// Java archives, Electron archives, RPM databases) are not bound by it.
	MaxMetadataFile int64
	// MaxNestedArchive bounds an archive inside a Java archive (a jar in a jar, at any depth),
	// which is written beside the scan's tree to be read; all of one file's nested archives may
	// total 4 times as many.
	MaxNestedArchive int64
}

// DefaultLimits suit real images and a process of 256 MiB: the largest list some thousands of
// packages (each costs some 5 KiB at the peak of a scan, its SBOMs most) and lock files of a few
// MiB; the largest library a fat jar nests (aws-java-sdk-bundle) is some 500 MB.
var DefaultLimits = Limits{MaxPackages: 20_000, MaxMetadataFile: 64 << 20, MaxNestedArchive: 1 << 30}

// noSizeLimit is given to osv-scalibr's extractors as their file size limit: left to
// themselves several skip larger files without a word (dpkg's status over 100 MiB, a
// package.json over 100 MiB, a deps.json over 10 MiB, ...); guarded bounds them instead.
const noSizeLimit = 1 << 62

// maxUnread bounds the Unread entries of one image; past it one entry says how many more.
const maxUnread = 1000

// streams are the extractors that read a file in bounded parts, whatever its size, so that
// Limits.MaxMetadataFile does not apply to them: programs (go/binary, rust/cargoauditable),
// Java archives (bounded by javaArchive), Electron archives (a bounded header and package.json
// files), RPM databases (read page by page), Python wheels and eggs (zip archives whose
// METADATA alone is read; owned by the metadata readers).
var streams = map[string]bool{
	"go/binary": true, "rust/cargoauditable": true, "java/archive": true, "javascript/electronasar": true,
	"os/rpm": true, "python/wheelegg": true,
}

// PanicError is a panic recovered in an extractor, a secret detector or the scanner itself:
// no image can take the process down. The scan fails with it (fail closed), naming where.
type PanicError struct {
	Extractor string // the osv-scalibr extractor; empty when the panic was elsewhere (Step)
	Step      string // what was running when it was not an extractor: "the secret detectors", ...
	Path      string // the file being read, if known
	Value     any    // what was passed to panic
	Stack     []byte // the panicking goroutine's stack, for the log; never shown to clients
}

func (e *PanicError) Error() string {
	who := e.Step
	if e.Extractor != "" {
		who = "the extractor " + e.Extractor
	}
	if e.Path != "" {
		return fmt.Sprintf("%s panicked on %s: %v", who, e.Path, e.Value)
	}
	return fmt.Sprintf("%s panicked: %v", who, e.Value)
}

// PanicStack returns the stack of the goroutine that panicked.
func (e *PanicError) PanicStack() string { return string(e.Stack) }

// Recovered turns what recover returned into a *PanicError, keeping one a guarded extractor
// already made; step says what was running.
func Recovered(v any, step string) *PanicError {
	if pe, ok := v.(*PanicError); ok {
		return pe
	}
	return &PanicError{Step: step, Value: v, Stack: debug.Stack()}
}

func extractorPanic(v any, name, path string) *PanicError {
	if pe, ok := v.(*PanicError); ok {
		return pe
	}
	return &PanicError{Extractor: name, Path: path, Value: v, Stack: debug.Stack()}
}

// guard watches one extraction's extractors: the first panic (which stops the walk), the files
// and packages past the Limits.
type guard struct {
	lim    Limits
	cancel context.CancelFunc
	// tempDir and tempPrefix place the files java/archive's nested archives are written to
	// (beside the scan's tree, named after it, so a restart removes what a killed scan left)
	tempDir, tempPrefix string
	root                string // the tree's directory on disk ("": not on disk)

	mu           sync.Mutex
	panicked     *PanicError
	packages     int
	dropped      int    // packages past lim.MaxPackages
	firstDropped Unread // the file they began in
}

func (g *guard) fail(pe *PanicError) {
	g.mu.Lock()
	if g.panicked == nil {
		g.panicked = pe
	}
	g.mu.Unlock()
	g.cancel()
}

func (g *guard) failure() *PanicError {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.panicked
}

// count keeps the packages within the image's bound, noting the first file past it.
func (g *guard) count(pkgs []*extractor.Package, name, path string) []*extractor.Package {
	return pkgs[:g.within(len(pkgs), func(int) Unread { return Unread{Path: path, Extractor: name} })]
}

// within keeps n more packages within the image's bound and says how many fit; past it, the
// first of those that do not (first(at), at its index) is noted as where the drop began.
func (g *guard) within(n int, first func(at int) Unread) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	room := max(g.lim.MaxPackages-g.packages, 0)
	if n <= room {
		g.packages += n
		return n
	}
	if g.dropped == 0 {
		g.firstDropped = first(room)
	}
	g.dropped += n - room
	g.packages += room
	return room
}

// pathOf is where a file of the tree is on disk ("" when the tree is not on disk). Files the
// walk gives extractors are regular files under directories, never through a symlink.
func (g *guard) pathOf(p string) string {
	if g.root == "" {
		return ""
	}
	return filepath.Join(g.root, filepath.FromSlash(p))
}

// full says whether the image's bound on packages has been passed.
func (g *guard) full() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dropped > 0
}

// unreadOf lists what g kept from the extraction: the packages past the bound.
func (g *guard) unreadOf() []Unread {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dropped == 0 {
		return nil
	}
	u := g.firstDropped
	u.Reason = fmt.Sprintf("the image lists more than the %d packages a scan keeps (scan.max_packages): from this file on, at least %d are not listed, and later files are not read",
		g.lim.MaxPackages, g.dropped)
	return []Unread{u}
}

// guarded is an osv-scalibr extractor that cannot take the process down: a panic in it is
// recovered and fails the scan, naming the extractor and the file; a file it would read whole
// beyond Limits.MaxMetadataFile is not given to it (it is Unread). osv-scalibr runs extractors on
// the goroutine that called Scan (extractor/filesystem runExtractor), so the recover sees them.
type guarded struct {
	filesystem.Extractor
	g *guard // nil in the process-wide list that keep asks: a panic there is raised again as a *PanicError
}

var _ filesystem.Extractor = guarded{}

// FileRequired asks the extractor; FileRequired has no context, so a panic in keep's copy is
// raised again (scan.Scanner.Scan recovers it) and one in the walk's copy fails the scan.
func (x guarded) FileRequired(api filesystem.FileAPI) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			pe := extractorPanic(v, x.Name(), api.Path())
			if x.g == nil {
				panic(pe)
			}
			x.g.fail(pe)
			ok = false
		}
	}()
	if x.Extractor.FileRequired(api) {
		return true
	}
	// the ELF files sniff had judged by their bytes, whatever their names: in the tree only if
	// they carry Go build info or cargo-auditable data, or hold a zip (go/binary and
	// cargoauditable list nothing, and report no error, for a file without theirs)
	if x.g == nil {
		return false
	}
	switch x.Name() {
	case "go/binary", "rust/cargoauditable":
		return x.g.isELF(api.Path())
	case javaArchiveName:
		// a Java archive of any name, in the tree because zipKept kept it by its bytes
		return x.g.isJar(api.Path())
	}
	return false
}

// isELF says whether the file at p in the tree begins as an ELF file does.
func (g *guard) isELF(p string) bool {
	return g.judge(p, func(f *os.File, _ int64) bool {
		var head [4]byte
		_, err := io.ReadFull(f, head[:])
		return err == nil && bytes.Equal(head[:], elfMagic)
	})
}

// judge opens the file at p in the tree and gives it to is (false when it cannot be opened).
func (g *guard) judge(p string, is func(f *os.File, size int64) bool) bool {
	disk := g.pathOf(p)
	if disk == "" {
		return false
	}
	f, err := os.Open(disk)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	return err == nil && is(f, fi.Size())
}

// Extract runs the extractor on one file within the bounds.
func (x guarded) Extract(ctx context.Context, in *filesystem.ScanInput) (inv scalibrinv.Inventory, err error) {
	defer func() {
		if v := recover(); v != nil {
			pe := extractorPanic(v, x.Name(), in.Path)
			x.g.fail(pe)
			inv, err = scalibrinv.Inventory{}, pe
		}
	}()
	if err := ctx.Err(); err != nil {
		return scalibrinv.Inventory{}, err
	}
	name := x.Name()
	if lim := x.g.lim.MaxMetadataFile; !streams[name] && lim > 0 && in.Info != nil && in.Info.Size() > lim {
		return scalibrinv.Inventory{}, fmt.Errorf("a %d-byte file, over the %d-byte limit for files read whole (scan.max_metadata_file): not read", in.Info.Size(), lim)
	}
	if ra, ok := in.Reader.(io.ReaderAt); ok && name == "os/rpm" && in.Info != nil {
		if err := checkRPMDB(ctx, ra, in.Info.Size(), x.g.pathOf(in.Path)); err != nil {
			return scalibrinv.Inventory{}, err // go-rpmdb would read it on a goroutine no recover reaches
		}
	}
	if x.g.full() {
		return scalibrinv.Inventory{}, nil // past the image's bound nothing more is listed: reading on would only cost time
	}
	if name == javaArchiveName {
		inv, err = x.g.javaArchive(ctx, in)
	} else {
		inv, err = x.Extractor.Extract(ctx, in)
	}
	inv.Packages = x.g.count(inv.Packages, name, in.Path)
	return inv, err
}

// run runs osv-scalibr's extractors xs over fsys, each guarded by g. A panic outside the
// extractors (in the walk itself) is recovered too.
func (g *guard) run(ctx context.Context, fsys scalibrfs.FS, xs []filesystem.Extractor) (res *scalibr.ScanResult, err error) {
	defer func() {
		if v := recover(); v != nil {
			res, err = nil, Recovered(v, "osv-scalibr")
		}
	}()
	ps := make([]plugin.Plugin, 0, len(xs))
	for _, x := range xs {
		if gx, ok := x.(guarded); ok {
			x = gx.Extractor
		}
		ps = append(ps, guarded{Extractor: x, g: g})
	}
	res = scalibr.New().Scan(ctx, &scalibr.ScanConfig{
		Plugins:      ps,
		Capabilities: capabs,
		ScanRoots:    []*scalibrfs.ScanRoot{{FS: fsys}},
		// No MaxFileSize: layerfs's scan.max_file_size governs what is in the tree, and guarded
		// what each extractor reads; a file scalibr skipped for its size would be skipped silently.
		ErrorOnFSErrors: true, // a tree we wrote that cannot be walked is a failed scan, not a quiet one
	})
	if pe := g.failure(); pe != nil {
		return nil, pe
	}
	if res.Status != nil && res.Status.Status == plugin.ScanStatusFailed {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("scan failed: %s", res.Status.FailureReason)
	}
	return res, nil
}

// unreadOf lists what the plugins' statuses say they could not read: every file error, and a
// plugin that failed without naming a file. osv-scalibr calls a scan with such statuses
// succeeded (or partially), yet what it did not read may hold a vulnerable package.
func unreadOf(statuses []*plugin.Status) []Unread {
	var out []Unread
	for _, st := range statuses {
		if st == nil || st.Status == nil {
			continue
		}
		for _, fe := range st.Status.FileErrors {
			out = append(out, Unread{Path: fe.FilePath, Extractor: st.Name, Reason: fe.ErrorMessage})
		}
		if len(st.Status.FileErrors) == 0 && st.Status.Status != plugin.ScanStatusSucceeded {
			reason := st.Status.FailureReason
			if reason == "" {
				reason = "the extractor did not succeed"
			}
			out = append(out, Unread{Extractor: st.Name, Reason: reason})
		}
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Path != out[b].Path {
			return out[a].Path < out[b].Path
		}
		return out[a].Extractor < out[b].Extractor
	})
	return out
}

// capUnread keeps at most maxUnread entries, the last saying how many more there were.
func capUnread(u []Unread) []Unread {
	if len(u) <= maxUnread {
		return u
	}
	more := len(u) - (maxUnread - 1)
	u = u[:maxUnread-1]
	return append(u, Unread{Reason: fmt.Sprintf("and %d more files could not be read (only the first %d are listed)", more, maxUnread-1)})
}

// detectGuarded searches one file for secrets on a detector worker, where a panic would end
// the process: it is recovered into a *PanicError naming the file.
func detectGuarded(ctx context.Context, fp *Fingerprinter, j secretJob) (found []Secret, err error) {
	defer func() {
		if v := recover(); v != nil {
			pe := Recovered(v, "the secret detectors")
			pe.Path = j.path
			found, err = nil, pe
		}
	}()
	return detectFile(ctx, fp, j.path, j.layer, j.data)
}

// readMetadata runs Gatehouse's own npm, PyPI and dpkg readers (metadata.go) over the tree
// under a recover, like the extractors, and keeps what they list within the image's bound on
// packages.
func (g *guard) readMetadata(ctx context.Context, root *os.Root, tree *layerfs.Result, inv *Inventory, env []string) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = Recovered(v, "the package metadata readers")
		}
	}()
	from := len(inv.Packages)
	if err := readMetadata(ctx, root, tree, inv, env); err != nil {
		return err
	}
	added := inv.Packages[from:]
	kept := g.within(len(added), func(at int) Unread { return Unread{Path: added[at].Path, Extractor: added[at].Extractor} })
	inv.Packages = inv.Packages[:from+kept]
	return nil
}
