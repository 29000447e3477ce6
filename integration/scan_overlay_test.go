//go:build integration

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestScanOverlaySymlink: a lower layer writes a symlink (x -> app, v -> var/lib) and an upper
// layer names its entries through it: a whiteout or an opaque marker removing the vulnerable
// package, or its "fixed" version written over it. containerd's native snapshotter follows the
// symlink and shows the package removed or fixed; its overlayfs snapshotter, the default (as
// podman's and CRI-O's overlay and Docker's overlay2), unpacks the layer into an empty directory
// whose x/ hides the symlink, and shows the vulnerable package untouched. Gatehouse cannot know
// which the runtime uses: the image is refused through an enforcing pull route as incomplete
// (GH-POL-SCAN-INCOMPLETE), naming the entry and the symlink.
func TestScanOverlaySymlink(t *testing.T) {
	crane := tool(t, "crane")
	ctr := tool(t, "ctr")
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	pkgDB(t, gh)
	work := t.TempDir()
	sock := startContainerd(t, work)
	ctrRun := func(args ...string) (string, error) {
		out, err := exec.Command(ctr, append([]string{"--address", sock}, args...)...).CombinedOutput()
		return string(out), err
	}

	pj := func(v string) string { return `{"name":"lodash","version":"` + v + `","main":"lodash.js"}` }
	const lodashPJ = "app/node_modules/lodash/package.json"
	npm := []diffEntry{lfDir("app/"), lfDir("app/node_modules/"), lfDir("app/node_modules/lodash/"), lfFile(lodashPJ, pj("4.17.15")), lfSymlink("x", "app")}
	dpkg := []diffEntry{lfDir("etc/"), lfFile("etc/os-release", debianOSRelease), lfDir("var/"), lfDir("var/lib/"), lfDir("var/lib/dpkg/"),
		lfFile("var/lib/dpkg/status", baseFiles+"\n"+libc6), lfSymlink("v", "var/lib")}
	cases := []struct {
		name   string
		layers [][]diffEntry
		entry  string // the upper layer's entry the refusal names
		via    string // the lower layer's symlink
		file   string // the vulnerable file, as overlayfs shows it
		vuln   string // what it holds there
	}{
		{"whiteout", [][]diffEntry{npm, {lfWhiteout("x/node_modules", "lodash")}}, "x/node_modules/.wh.lodash", "x", lodashPJ, "4.17.15"},
		{"opaque", [][]diffEntry{npm, {lfOpaque("x")}}, "x/.wh..wh..opq", "x", lodashPJ, "4.17.15"},
		{"upgrade", [][]diffEntry{npm, {lfFile("x/node_modules/lodash/package.json", pj("4.17.21"))}}, "x/node_modules/lodash/package.json", "x", lodashPJ, "4.17.15"},
		{"dpkg", [][]diffEntry{dpkg, {lfFile("v/dpkg/status", baseFiles+"\n"+strings.Replace(libc6, "2.36-9+deb12u1", "2.36-9+deb12u3", 1))}},
			"v/dpkg/status", "v", "var/lib/dpkg/status", "Version: 2.36-9+deb12u1"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var files []string
			for j, es := range c.layers {
				p := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d.tar", j))
				if err := os.WriteFile(p, diffTar(t, es), 0o644); err != nil {
					t.Fatal(err)
				}
				files = append(files, p)
			}
			repo := fmt.Sprintf("library/overlay%d", i)
			ref := up.addr + "/" + repo + ":v1"
			digest := pushLayer(t, crane, ref, strings.Join(files, ","))

			chain := ""
			for _, es := range c.layers {
				if d := sha(diffTar(t, es)); chain == "" {
					chain = d
				} else {
					chain = sha([]byte(chain + " " + d))
				}
			}

			// the runtimes disagree: overlayfs shows the vulnerable file untouched, native does not
			views := map[string]string{}
			for _, sn := range []string{"overlayfs", "native"} {
				if out, err := ctrRun("images", "pull", "--plain-http", "--snapshotter", sn, ref); err != nil {
					t.Fatalf("containerd (%s) pull: %v\n%s", sn, err, tail(out, 5))
				}
				m, key := t.TempDir(), fmt.Sprintf("overlay%d-%s", i, sn)
				// the view prints its mount command (a view holds no lease: read it from this output)
				cmd, err := ctrRun("snapshots", "--snapshotter", sn, "view", "--target", m, key, chain)
				if err != nil || !strings.HasPrefix(cmd, "mount ") {
					t.Fatalf("containerd (%s) view of %s: %v\n%s", sn, chain, err, tail(cmd, 5))
				}
				if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
					t.Fatalf("containerd (%s) mount %q: %v\n%s", sn, cmd, err, out)
				}
				b, err := os.ReadFile(filepath.Join(m, c.file))
				views[sn] = string(b)
				if err != nil {
					views[sn] = "(" + err.Error() + ")"
				}
				if out, err := exec.Command("umount", m).CombinedOutput(); err != nil {
					t.Errorf("umount %s: %v\n%s", m, err, out)
				}
			}
			if !strings.Contains(views["overlayfs"], c.vuln) || strings.Contains(views["native"], c.vuln) {
				t.Fatalf("want %s to hold %q on overlayfs only; overlayfs: %.200q, native: %.200q", c.file, c.vuln, views["overlayfs"], views["native"])
			}
			t.Logf("%s holds %q on overlayfs, not on native (%.80q)", c.file, c.vuln, views["native"])

			msg, rules := pullRefused(t, gh, repo, digest, []string{c.entry, c.via + ", a symlink of a lower layer", "overlay snapshotters"}, true)
			t.Logf("refused (%s): %.400s", rules, msg)
		})
	}
	gh.healthy(t)
}
