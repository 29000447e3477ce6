//go:build integration

package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs/tartest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// diffEntry is one entry of a hand-made layer; raw, when set, is written into the tar stream as
// it is (headers archive/tar will not write: sparse entries).
type diffEntry struct {
	name, body, link string
	typ              byte
	raw              []byte
}

// diffCase is an image of layers, each a list of entries.
type diffCase struct {
	name   string
	layers [][]diffEntry
}

func lfFile(name, body string) diffEntry { return diffEntry{name: name, body: body} }
func lfDir(name string) diffEntry        { return diffEntry{name: name, typ: tar.TypeDir} }
func lfSymlink(name, to string) diffEntry {
	return diffEntry{name: name, typ: tar.TypeSymlink, link: to}
}
func lfHardlink(name, to string) diffEntry    { return diffEntry{name: name, typ: tar.TypeLink, link: to} }
func lfWhiteout(dir, name string) diffEntry   { return diffEntry{name: filepath.Join(dir, ".wh."+name)} }
func lfOpaque(dir string) diffEntry           { return diffEntry{name: filepath.Join(dir, ".wh..wh..opq")} }
func lfSpecial(name string, t byte) diffEntry { return diffEntry{name: name, typ: t} }

// diffTar writes entries, in order, as a tar stream.
func diffTar(t *testing.T, entries []diffEntry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		if e.raw != nil {
			tw.Flush()
			b.Write(e.raw)
			continue
		}
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Linkname: e.link, Format: tar.FormatPAX}
		switch e.typ {
		case 0:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.body))
		case tar.TypeDir:
			h.Mode = 0o755
		case tar.TypeXGlobalHeader:
			h = &tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: map[string]string{"comment": "global"}, Format: tar.FormatPAX}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("%.60s: %v", e.name, err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return b.Bytes()
}

func diffGzip(b []byte) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

// diffCorpus is the hostile images: whiteouts of the same and lower layers, opaque directories
// first and last in their layer, unclean and over-long names, links over files, duplicates,
// replacements, sparse entries, and entries containerd refuses.
func diffCorpus() []diffCase {
	eicar := `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`
	lower := []diffEntry{lfFile("old.txt", "old"), lfDir("app/"), lfFile("app/lower.txt", "lower"), lfDir("app/sub/"), lfFile("app/sub/deep.txt", "deep"), lfFile("x", "lower x")}
	return []diffCase{
		{"same-layer whiteout after the file", [][]diffEntry{lower, {lfFile("x", "upper x"), lfWhiteout("", "x")}}},
		{"same-layer whiteout before the file", [][]diffEntry{lower, {lfWhiteout("", "x"), lfFile("x", "upper x")}}},
		{"lower-layer whiteouts", [][]diffEntry{lower, {lfWhiteout("app", "lower.txt"), lfWhiteout("", "app")}}},
		{"whiteout through a symlinked directory", [][]diffEntry{lower, {lfSymlink("link", "app"), lfWhiteout("link", "lower.txt")}}},
		// through a lower layer's symlink: native follows it, overlayfs does not (TestScanOverlaySymlink)
		{"whiteout through a lower layer's symlink", [][]diffEntry{append(lower[:len(lower):len(lower)], lfSymlink("link", "app")), {lfWhiteout("link/sub", "deep.txt")}}},
		{"opaque directory through a lower layer's symlink", [][]diffEntry{append(lower[:len(lower):len(lower)], lfSymlink("link", "app")), {lfOpaque("link/sub"), lfFile("link/new.txt", "new")}}},
		{"opaque directory first in its layer", [][]diffEntry{lower, {lfDir("app/"), lfOpaque("app"), lfFile("app/new.txt", "new")}}},
		{"opaque directory last in its layer", [][]diffEntry{lower, {lfDir("app/"), lfFile("app/new.txt", "new"), lfOpaque("app")}}},
		{"opaque root last, directories listed", [][]diffEntry{lower, {lfDir("app/"), lfFile("app/eicar.com", eicar), lfOpaque("")}}},
		{"opaque root last, directories implied", [][]diffEntry{lower, {lfFile("new/eicar.com", eicar), lfOpaque("")}}},
		{"opaque directory keeps a relisted subdirectory", [][]diffEntry{lower, {lfDir("app/sub/"), lfFile("app/sub/new.txt", "new"), lfOpaque("app")}}},
		{"opaque directory twice", [][]diffEntry{lower, {lfOpaque("app"), lfFile("app/a/one", "1"), lfOpaque("app")}}},
		{"unclean names", [][]diffEntry{{
			lfFile(strings.Repeat("./", 2100)+"app/padded", "padded"),
			lfFile(strings.Repeat("a/../", 1000)+"app/climbed", "climbed"),
			lfFile("/abs/x", "absolute"),
			lfFile("a/../b/x", "dotdot"),
			lfFile("../../etc/escaped", "escaped"),
			lfFile("/./app/./../app/dots", "dots"),
			lfFile("app//double//slash", "slashes"),
		}}},
		{"a name too long once cleaned", [][]diffEntry{{lfFile(strings.Repeat("d/", 2100)+"f", "deep"), lfFile("ok", "ok")}}},
		{"symlinks and hard links over files", [][]diffEntry{
			{lfFile("a", "A"), lfFile("b", "B"), lfFile("c", "C")},
			{lfSymlink("a", "b"), lfHardlink("c", "b"), lfHardlink("d", "a")},
		}},
		{"a symlink that climbs", [][]diffEntry{{lfSymlink("up", "../../.."), lfFile("up/etc/x", "through up")}}},
		{"an absolute symlink to a directory", [][]diffEntry{{lfDir("real/"), lfSymlink("s", "/real")}, {lfFile("s/x", "through s")}}},
		{"a relative symlink with dot-dot", [][]diffEntry{{lfDir("real/"), lfDir("other/"), lfSymlink("s", "other/../real")}, {lfFile("s/y", "through s")}}},
		{"a hard link that climbs", [][]diffEntry{{lfFile("etc/passwd", "root:x:0:0"), lfHardlink("copy", "../../etc/passwd")}}},
		{"a hard link through a symlinked directory", [][]diffEntry{{lfFile("etc/passwd", "p"), lfSymlink("e", "/etc"), lfHardlink("copy", "e/passwd")}}},
		{"duplicate entries", [][]diffEntry{{lfFile("f", "one"), lfFile("f", "two"), lfDir("d/"), lfFile("d/x", "x"), lfDir("d/"), lfFile("g", "g"), lfSymlink("g", "f")}}},
		{"a symlink replaced by a file", [][]diffEntry{{lfFile("t", "target"), lfSymlink("s", "t")}, {lfFile("s", "file now")}}},
		{"a directory replaced by a file", [][]diffEntry{{lfDir("d/"), lfFile("d/x", "x"), lfDir("d/e/"), lfFile("d/e/y", "y")}, {lfFile("d", "file now")}}},
		{"a file replaced by a directory", [][]diffEntry{{lfFile("d", "file")}, {lfDir("d/"), lfFile("d/x", "x")}}},
		{"a directory replaced by a file in the same layer", [][]diffEntry{{lfDir("d/"), lfFile("d/x", eicar), lfFile("d", "file now")}}},
		{"a fifo over a file", [][]diffEntry{{lfFile("p", "file")}, {lfSpecial("p", tar.TypeFifo)}}},
		{"a PAX global header", [][]diffEntry{{lfFile("pax_global_header", "a file"), lfFile("kept", "k")}, {lfSpecial("pax_global_header", tar.TypeXGlobalHeader)}}},
		{"a PAX sparse file", [][]diffEntry{{diffEntry{raw: tartest.PaxSparse("app/sparse", "hello", 4096)}, lfFile("ok", "ok")}}},
		{"an old GNU sparse file", [][]diffEntry{{diffEntry{raw: tartest.OldGNUSparse("app/sparse", "hello", 4096)}}}},
		{"a file under a file", [][]diffEntry{{lfFile("f", "f"), lfFile("f/x", "x")}}},
		{"a dangling hard link", [][]diffEntry{{lfHardlink("h", "missing")}}},
		{"a symlink loop", [][]diffEntry{{lfSymlink("l1", "l2"), lfSymlink("l2", "l1"), lfFile("l1/x", "x")}}},
	}
}

// strict are the issue kinds with which layerfs still claims containerd's tree: a result
// incomplete only for these is compared as strictly as a complete one.
var strict = map[layerfs.Kind]bool{layerfs.Escape: true, layerfs.Special: true, layerfs.Ambiguous: true, layerfs.Sparse: true}

// TestLayerDiffContainerd: for a corpus of hostile images pushed to Gatehouse (audit mode, so they
// are served), the regular files and their SHA-256 that containerd unpacks (native snapshotter)
// are those layerfs records, for every image layerfs claims to read as containerd does; an image
// containerd refuses is one layerfs calls incomplete.
func TestLayerDiffContainerd(t *testing.T) {
	ctr := tool(t, "ctr")
	gh := startGatehouse(t, "")
	work := t.TempDir()
	sock := startContainerd(t, work)
	ctrRun := func(args ...string) (string, error) {
		cmd := exec.Command(ctr, append([]string{"--address", sock}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	compared := 0
	for i, c := range diffCorpus() {
		t.Run(c.name, func(t *testing.T) {
			var blobs, diffIDs []string
			var layers []layerfs.Layer
			repo := fmt.Sprintf("diff/case%d", i)
			for _, es := range c.layers {
				plain := diffTar(t, es)
				gz := diffGzip(plain)
				diffIDs = append(diffIDs, sha(plain))
				blobs = append(blobs, pushBlob(t, gh, repo, gz))
				layers = append(layers, layerfs.Layer{Digest: digest.Digest(sha(gz)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(gz)), nil }})
			}
			cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"User":"app","Labels":{"case":%q}},"rootfs":{"type":"layers","diff_ids":["%s"]}}`,
				c.name, strings.Join(diffIDs, `","`)))
			var ls []string
			for j, l := range c.layers {
				_ = l
				ls = append(ls, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, blobs[j], blobSize(t, layers[j])))
			}
			m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
				pushBlob(t, gh, repo, cfg), len(cfg), strings.Join(ls, ",")))
			if r := do(t, gh, "PUT", "/v2/"+repo+"/manifests/v1", map[string]string{"Content-Type": ociManifest}, m); r.status != 201 {
				t.Fatalf("push: %d %s", r.status, r.body)
			}

			// layerfs, in process, on the same blobs
			root := filepath.Join(t.TempDir(), "root")
			os.Mkdir(root, 0o755)
			res, err := layerfs.Flatten(context.Background(), root, layers, layerfs.DefaultLimits,
				layerfs.Options{Keep: func(string, fs.FileInfo) (bool, layerfs.Check) { return false, nil }})
			if err != nil {
				t.Fatal(err)
			}
			claims := true // layerfs says its tree is containerd's
			var kinds []string
			for _, is := range res.Issues {
				kinds = append(kinds, string(is.Kind))
				claims = claims && strict[is.Kind]
			}
			if res.Incomplete && len(res.Issues) == 0 {
				claims = false
			}

			// the server's own scan agrees on whether the image was read completely
			switch r, _ := waitScan(t, gh, sha(m), func(scanReport) bool { return true }); {
			case r.Error != "":
				t.Logf("gatehouse's scan failed (%s); layerfs in process stands for it", r.Error)
			case r.Complete == res.Incomplete:
				t.Errorf("gatehouse's scan says complete %v, layerfs in process says incomplete %v", r.Complete, res.Incomplete)
			}

			// containerd
			ref := gh.addr + "/" + repo + ":v1"
			if out, err := ctrRun("images", "pull", "--plain-http", "--snapshotter", "native", ref); err != nil {
				if !res.Incomplete {
					t.Errorf("containerd refused an image layerfs read as complete (issues %v):\n%s", kinds, tail(out, 5))
				} else {
					t.Logf("containerd refused it, layerfs found it incomplete (%v): %s", kinds, clip(tail(strings.TrimSpace(out), 1)))
				}
				return
			}
			chain := diffIDs[0]
			for _, d := range diffIDs[1:] {
				chain = sha([]byte(chain + " " + d))
			}
			key := fmt.Sprintf("layerdiff-%d", i)
			// a native view mounts its parent's directory, the unpacked tree: read it there
			out, err := ctrRun("snapshots", "--snapshotter", "native", "view", "--target", "/mnt", key, chain)
			f := strings.Fields(out)
			if err != nil || len(f) < 5 || f[2] != "bind" {
				t.Fatalf("snapshot view of %s: %v %q", chain, err, out)
			}
			unpacked := treeDigests(t, f[3])

			recorded := map[string]string{}
			for p, file := range res.Files {
				if file.Mode.IsRegular() {
					recorded[p] = string(file.SHA256)
				}
			}
			var diffs []string
			for p, d := range unpacked {
				switch r, ok := recorded[p]; {
				case !ok:
					diffs = append(diffs, fmt.Sprintf("%s: unpacked by containerd (%s), not in layerfs's tree", p, short(d)))
				case r != d:
					diffs = append(diffs, fmt.Sprintf("%s: containerd unpacked %s, layerfs recorded %s", p, short(d), short(r)))
				}
			}
			for p, r := range recorded {
				if _, ok := unpacked[p]; !ok {
					diffs = append(diffs, fmt.Sprintf("%s: in layerfs's tree (%s), not unpacked by containerd", p, short(r)))
				}
			}
			sort.Strings(diffs)
			switch {
			case len(diffs) > 0 && claims:
				t.Errorf("containerd and layerfs disagree (layerfs issues %v):\n%s", kinds, strings.Join(diffs, "\n"))
			case len(diffs) > 0:
				t.Logf("layerfs found it incomplete (%v) and its tree differs, as it said it might:\n%s", kinds, strings.Join(diffs, "\n"))
			default:
				compared++
				t.Logf("%d regular files agree (layerfs complete %v, issues %v)", len(unpacked), !res.Incomplete, kinds)
			}
		})
	}
	t.Logf("%d of %d images unpacked by containerd exactly as layerfs recorded them", compared, len(diffCorpus()))
	gh.healthy(t)
}

// blobSize is a layer's stored size.
func blobSize(t *testing.T, l layerfs.Layer) int {
	rc, _ := l.Open()
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return len(b)
}

// treeDigests maps each regular file under dir (by path relative to it) to its digest.
func treeDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		io.Copy(h, f)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = "sha256:" + hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func short(d string) string {
	if len(d) > 19 {
		return d[:19] + "…"
	}
	return d
}

// clip keeps a long message readable (containerd's errors repeat long paths).
func clip(s string) string {
	if len(s) > 300 {
		return s[:150] + " … " + s[len(s)-150:]
	}
	return s
}
