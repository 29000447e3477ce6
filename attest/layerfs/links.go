package layerfs

import (
	"archive/tar"
	"bufio"
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

	"github.com/opencontainers/go-digest"
)

// maxKernelLinks is how many symlinks Linux follows in one path lookup (MAXSYMLINKS) before it
// fails with ELOOP.
const maxKernelLinks = 40

// links makes, once every layer is applied, the files a runtime reads through links that the
// walk did not write, because the name their bytes came under was not one Options.Keep wanted:
//
//   - A hard link whose own name Keep wants (the link's path decides, whatever its target's
//     name) gets its bytes: linked to the target when that is on disk, else made from the
//     target's entry in its layer, read a second time (Result.Reread) and checked against the
//     SHA-256 recorded the first time. A Check is not run again on bytes a Check already judged.
//   - A symlink is resolved as the kernel resolves it inside the container (from its directory,
//     or from the root if absolute; ".." at the root stays there; at most 40 symlinks), and every
//     path the runtime reads through it — the link itself if it leads to a file, every path under
//     it if it leads to a directory, through further symlinks — is an alias of a file of the
//     tree. The extractors follow no symlink, so an alias Keep wants is made as a file
//     (Result.Aliases) unless the extractors already read those bytes where they are: their own
//     path is wanted under the same base name, or a Check already judged them and the alias is
//     wanted only for a Check.
//
// The walk under symlinks is bounded: a directory already being walked (a cycle such as
// usr/bin/X11 -> .) is not entered again, and at most 4 paths per tar entry (plus 65,536) are
// looked at. What cannot be resolved is an issue that makes the result incomplete: a symlink
// needing more than 40 links (Loop), a walk past its bound or the time limit (Limit), a path
// past MaxPathLen (TooLong), bytes that could not be made again (Unwritable, Truncated). An alias
// reached through a symlink that climbs above the root is read where the container reads it and
// reported as an Escape.
func (w *walker) links() error {
	if w.opts.Keep == nil {
		return nil // every file and every symlink is in the tree already
	}
	m := &materialiser{w: w, needs: map[source]*need{}}
	for _, p := range w.pending {
		n := w.lookup(p)
		d := dest{path: p, want: n.want, node: n}
		if n.tail && n.want == wantNone {
			d.want, d.check = wantCheck, w.opts.TailCheck // Options.Tail's: judged by its bytes
		}
		m.add(n, p, d)
	}
	w.aliases(m)
	return m.run()
}

// need is a file's bytes and the paths they are to be made at.
type need struct {
	src   source
	file  File
	layer digest.Digest // the layer to blame when they cannot be made
	from  string        // a root-relative path on disk that holds them already ("": read the layer again)
	dests []dest
}

// dest is one path a need's bytes are made at.
type dest struct {
	path  string
	want  want
	node  *node  // a hard link's node, on disk once made
	alias string // an alias's: the path it resolves to
	check Check  // the Check that judges it (nil: the one Options.Keep gives its path)
}

type materialiser struct {
	w     *walker
	needs map[source]*need
	order []source
}

// add asks for the bytes of r (at path rp of the tree) at d.
func (m *materialiser) add(r *node, rp string, d dest) {
	nd := m.needs[r.src]
	if nd == nil {
		nd = &need{src: r.src, file: r.file, layer: r.file.Layer}
		m.needs[r.src] = nd
		m.order = append(m.order, r.src)
	}
	if nd.from == "" && r.onDisk {
		nd.from = rp
	}
	nd.dests = append(nd.dests, d)
}

// run makes every need: from a copy on disk, or else from its layer, each layer read once.
func (m *materialiser) run() error {
	byLayer := map[int32]map[int32]*need{}
	for _, s := range m.order {
		nd := m.needs[s]
		if nd.from != "" {
			m.place(nd, nd.from)
			continue
		}
		if byLayer[s.layer] == nil {
			byLayer[s.layer] = map[int32]*need{}
		}
		byLayer[s.layer][s.entry] = nd
	}
	layers := make([]int32, 0, len(byLayer))
	for li := range byLayer {
		layers = append(layers, li)
	}
	sort.Slice(layers, func(a, b int) bool { return layers[a] < layers[b] })
	for _, li := range layers {
		if err := m.reread(li, byLayer[li]); err != nil {
			return err
		}
	}
	return nil
}

func (m *materialiser) disk(p string) string { return filepath.Join(m.w.dir, filepath.FromSlash(p)) }

// fail records that a need's bytes could not be made at its paths.
func (m *materialiser) fail(nd *need, kind Kind, format string, args ...any) {
	why := fmt.Sprintf(format, args...)
	for _, d := range nd.dests {
		m.w.issue(nd.layer, shorten(d.path), kind, "a link the runtime reads at this path could not be made in the tree: %s", why)
	}
}

// place links the dests of nd to the copy at from (a root-relative path on disk), then judges
// once, with the Check of the first dest wanting one, the bytes any dest wants only for a Check.
func (m *materialiser) place(nd *need, from string) {
	var checked []dest
	for _, d := range nd.dests {
		if d.path != from {
			if err := os.MkdirAll(m.disk(parentOf(d.path)), 0o755); err != nil {
				m.w.issue(nd.layer, shorten(d.path), Unwritable, "the directory of a link the runtime reads cannot be made in the tree: %v", err)
				continue
			}
			if err := os.Link(m.disk(from), m.disk(d.path)); err != nil {
				m.w.issue(nd.layer, shorten(d.path), Unwritable, "a link the runtime reads at this path cannot be made in the tree: %v", err)
				continue
			}
		}
		if d.want == wantCheck {
			checked = append(checked, d)
			continue
		}
		m.made(d)
	}
	if len(checked) == 0 {
		return
	}
	check := checked[0].check
	if check == nil {
		_, check = m.w.opts.Keep(checked[0].path, statOf(path.Base(checked[0].path), nd.file))
	}
	ok, err := false, error(nil)
	if check != nil {
		var f *os.File
		if f, err = os.Open(m.disk(checked[0].path)); err == nil {
			ok, err = check(f, nd.file.Size)
			f.Close()
		}
	}
	if err != nil {
		m.w.issue(nd.layer, shorten(checked[0].path), Unchecked, "the file, which the runtime reads at this path through a link, could not be judged: %v", err)
	}
	for _, d := range checked {
		if ok && err == nil {
			m.made(d)
		} else {
			os.Remove(m.disk(d.path))
		}
	}
}

// made records a dest that is now in the tree.
func (m *materialiser) made(d dest) {
	if d.node != nil {
		d.node.onDisk = true
	}
	if d.alias != "" {
		m.w.res.Aliases[d.path] = d.alias
	}
}

// reread reads layer li again up to the last entry a need names, and makes each need from its
// entry: written once, hashed, compared with what the first read recorded, then linked.
func (m *materialiser) reread(li int32, needs map[int32]*need) error {
	w := m.w
	last := int32(-1)
	for e := range needs {
		last = max(last, e)
	}
	failAll := func(from int32, kind Kind, format string, args ...any) {
		for e := from; e <= last; e++ {
			if nd := needs[e]; nd != nil {
				m.fail(nd, kind, format, args...)
			}
		}
	}
	l := w.layers[li]
	rc, err := l.Open()
	if err != nil {
		failAll(0, Unwritable, "its layer %s could not be opened again: %v", l.Digest, err)
		return nil
	}
	defer rc.Close()
	var compressed int64
	plain, done, err := decompress(bufio.NewReaderSize(&countingReader{r: rc, n: &compressed, ctx: w.ctx}, 1<<20))
	if err != nil {
		failAll(0, Truncated, "its layer %s could not be read again: %v", l.Digest, err)
		return nil
	}
	defer done()
	tr := tar.NewReader(&countingReader{r: plain, n: &w.res.Reread, ctx: w.ctx})
	for e := int32(0); e <= last; e++ {
		h, err := tr.Next()
		if err != nil {
			return m.broken(err, func(kind Kind, why string) { failAll(e, kind, "%s", why) })
		}
		nd := needs[e]
		if nd == nil {
			continue
		}
		if h.Size != nd.file.Size || (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeGNUSparse) {
			m.fail(nd, Truncated, "entry %d of layer %s is not the file it was the first time", e, l.Digest)
			continue
		}
		first := nd.dests[0]
		for _, d := range nd.dests {
			if d.want == wantKeep {
				first = d
				break
			}
		}
		if err := os.MkdirAll(m.disk(parentOf(first.path)), 0o755); err != nil {
			m.fail(nd, Unwritable, "%v", err)
			continue
		}
		perm := os.FileMode(0o644)
		if nd.file.Mode&0o111 != 0 {
			perm = 0o755
		}
		f, err := os.OpenFile(m.disk(first.path), os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
		if err != nil {
			m.fail(nd, Unwritable, "%v", err)
			continue
		}
		if w.buf == nil {
			w.buf = make([]byte, 64<<10)
		}
		hs := sha256.New()
		_, err = io.CopyBuffer(io.MultiWriter(f, hs), tr, w.buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(m.disk(first.path))
			return m.broken(err, func(kind Kind, why string) { failAll(e, kind, "%s", why) })
		}
		if got := digest.NewDigest(digest.SHA256, hs); got != nd.file.SHA256 {
			os.Remove(m.disk(first.path))
			m.fail(nd, Truncated, "entry %d of layer %s read as %s the second time, %s the first", e, l.Digest, got, nd.file.SHA256)
			continue
		}
		m.place(nd, first.path)
	}
	return nil
}

// broken sorts an error of a second read: a cancelled scan ends Flatten, anything else is an
// issue of each need left.
func (m *materialiser) broken(err error, fail func(Kind, string)) error {
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, context.DeadlineExceeded):
		fail(Limit, fmt.Sprintf("the scan's time limit of %s ran out", m.w.lim.Timeout))
	default:
		fail(Truncated, fmt.Sprintf("the layer could not be read again: %v", err))
	}
	return nil
}

// aliases walks every symlink of the tree (Keep's kept ones aside: they are made as symlinks)
// and adds to m the aliases to make.
func (w *walker) aliases(m *materialiser) {
	var symlinks []string
	for p, f := range w.res.Files {
		if f.Mode&fs.ModeSymlink != 0 {
			symlinks = append(symlinks, p)
		}
	}
	sort.Strings(symlinks)
	a := &aliasWalk{w: w, m: m, budget: 4*w.entries + 1<<16}
	for _, p := range symlinks {
		n := w.lookup(p)
		if n == nil || !n.isSymlink() || n.keepLink {
			continue
		}
		t, tp, climbed, loop := w.follow(parentOf(p), n.file.Link)
		if loop {
			w.issue(n.file.Layer, shorten(p), Loop, "a symlink to %q that needs more than %d symlinks to resolve (a loop): what a runtime reads through it is unknown", shorten(n.file.Link), maxKernelLinks)
			continue
		}
		if t == nil {
			continue // dangling: the runtime reads nothing there
		}
		a.layer = n.file.Layer
		if !a.visit(p, t, tp, climbed, []string{tp}) {
			return
		}
	}
}

// aliasWalk is one walk of the paths under the tree's symlinks.
type aliasWalk struct {
	w      *walker
	m      *materialiser
	layer  digest.Digest // the layer of the symlink being walked
	visits int
	budget int
}

// visit looks at the alias ap of node t (at path tp of the tree), and at everything under it;
// chain holds the directories being walked. It returns false when the walk must stop.
func (a *aliasWalk) visit(ap string, t *node, tp string, climbed bool, chain []string) bool {
	if !t.isDir() {
		a.consider(ap, t, tp, climbed)
		return true
	}
	names := make([]string, 0, len(t.kids))
	for name := range t.kids {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		kid, kp, ktp := t.kids[name], ap+"/"+name, path.Join(tp, name)
		if !a.spend() {
			return false
		}
		if a.w.lim.MaxPathLen > 0 && len(kp) > a.w.lim.MaxPathLen {
			a.w.issue(a.layer, shorten(kp), TooLong, "a path of %d characters through a symlink, over the limit of %d: what is under it is not looked at", len(kp), a.w.lim.MaxPathLen)
			continue
		}
		switch {
		case kid.isSymlink():
			t2, tp2, climbed2, loop := a.w.follow(tp, kid.file.Link)
			if loop || t2 == nil || t2.isDir() && onChain(chain, tp2) {
				continue // a loop is reported at the link's own path; a cycle is walked once
			}
			if !a.visit(kp, t2, tp2, climbed || climbed2, append(chain, tp2)) {
				return false
			}
		case kid.isDir():
			if onChain(chain, ktp) {
				continue
			}
			if !a.visit(kp, kid, ktp, climbed, append(chain, ktp)) {
				return false
			}
		default:
			a.consider(kp, kid, ktp, climbed)
		}
	}
	return true
}

// spend counts one path looked at; past the budget or the time limit the walk stops, once.
func (a *aliasWalk) spend() bool {
	a.visits++
	if a.visits > a.budget {
		a.w.issue(a.layer, "", Limit, "more than %d paths through symlinks (links that multiply paths): the rest are not looked at", a.budget)
		return false
	}
	if a.visits%4096 == 0 && a.w.ctx.Err() != nil {
		a.w.issue(a.layer, "", Limit, "the scan's time limit of %s ran out while following symlinks", a.w.lim.Timeout)
		return false
	}
	return true
}

func onChain(chain []string, p string) bool {
	for _, c := range chain {
		if c == p {
			return true
		}
	}
	return false
}

// consider decides whether the alias ap of the file r (at path rp) is made.
func (a *aliasWalk) consider(ap string, r *node, rp string, climbed bool) {
	if !r.file.Mode.IsRegular() || r.file.SHA256 == "" {
		return // a device, or a file too large to read (an issue already)
	}
	want := wantOf(a.w.opts.Keep(ap, statOf(path.Base(ap), r.file)))
	switch {
	case want == wantNone:
		return
	case want == wantCheck && (r.judged || r.want == wantCheck):
		return // its bytes are judged already (or will be, at its own path)
	case want == wantKeep && r.want == wantKeep && path.Base(ap) == path.Base(rp):
		return // the extractors read it where it is, under the same name
	}
	if climbed {
		a.w.issue(a.layer, shorten(ap), Escape, "the path %s resolves through a symlink that climbs above the image root; read at %s, where the container reads it", shorten(ap), shorten(rp))
	}
	a.m.add(r, rp, dest{path: ap, want: want, alias: rp})
}

// follow resolves a symlink's target as the kernel resolves it inside the container: a relative
// target from the link's directory dir, an absolute one from the root; every component, the last
// one too, through the symlinks of the tree; ".." to the parent of the directory reached, staying
// at the root (climbed says it tried to go above). It returns the node reached and its path, nil
// if nothing is there (or a file stands where a directory is needed), and loop when more than
// 40 symlinks were needed (ELOOP).
func (w *walker) follow(dir, target string) (n *node, p string, climbed, loop bool) {
	if target == "" {
		return nil, "", false, false // ENOENT
	}
	var cur []string
	stack := []*node{w.tree}
	if !path.IsAbs(target) {
		for _, c := range split(dir) {
			kid := stack[len(stack)-1].kids[c]
			if kid == nil {
				return nil, "", false, false
			}
			cur, stack = append(cur, c), append(stack, kid)
		}
	}
	queue := strings.Split(target, "/")
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
		parent := stack[len(stack)-1]
		if !parent.isDir() {
			return nil, "", climbed, false // ENOTDIR
		}
		kid := parent.kids[c]
		switch {
		case kid == nil:
			return nil, "", climbed, false
		case kid.isSymlink():
			if hops++; hops > maxKernelLinks {
				return nil, "", climbed, true
			}
			if path.IsAbs(kid.file.Link) {
				cur, stack = nil, stack[:1]
			}
			if kid.file.Link == "" {
				return nil, "", climbed, false
			}
			queue = append(strings.Split(kid.file.Link, "/"), queue...)
		case !kid.isDir() && len(queue) > 0:
			return nil, "", climbed, false // "file/..." or "file/": ENOTDIR
		default:
			cur, stack = append(cur, c), append(stack, kid)
		}
	}
	return stack[len(stack)-1], strings.Join(cur, "/"), climbed, false
}

// stat is the fs.FileInfo Options.Keep sees for a name that holds a file of the tree.
type stat struct {
	name string
	f    File
}

func statOf(name string, f File) fs.FileInfo { return stat{name, f} }

func (s stat) Name() string       { return s.name }
func (s stat) Size() int64        { return s.f.Size }
func (s stat) Mode() fs.FileMode  { return s.f.Mode }
func (s stat) ModTime() time.Time { return time.Time{} }
func (s stat) IsDir() bool        { return false }
func (s stat) Sys() any           { return nil }
