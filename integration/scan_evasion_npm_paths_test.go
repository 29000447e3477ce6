//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 9, class 2, npm module directories: lodash 4.17.15 where Node finds it by name although
// no path component of its package.json is node_modules — a node_modules that is itself a symlink
// (relative, or absolute and so resolved in the image's root), the global folders
// ($HOME/.node_modules, $PREFIX/lib/node), a directory NODE_PATH in the image config names —
// its package.json without a "name", or with a VS Code extension's marker (which a scanner
// reading every package.json skips). Each case runs the real node (and npm ls where the packages
// are an application's) on the tree and checks that require('lodash') loads the code of 4.17.15,
// then pulls the image through an enforcing Gatehouse: 403 DENIED naming the advisory and
// lodash, the scan complete and listing lodash 4.17.15 at the path Node loads it from.

// npmPathEvasion is an evasion (never an unread one) whose image config may set an Env.
type npmPathEvasion struct {
	evasion
	env []string // the image config's Env (crane mutate --env)
	at  string   // where the scan must list lodash: the package.json Node reads
}

func TestScanEvasionNpmPaths(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	pkgDB(t, gh)

	for i, c := range npmPathEvasions(t) {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.build(t, dir)
			c.check(t, dir)
			layer := treeTar(t, dir)
			if strings.Contains(layer, ",") {
				t.Fatal("crane append -f takes a comma-separated list: no comma in a case's name (its temporary directory)")
			}
			ref := fmt.Sprintf("%s/library/npmpaths%d:v1", up.addr, i)
			digest := pushLayer(t, crane, ref, layer)
			if len(c.env) > 0 {
				args := []string{"mutate", "--insecure"}
				for _, kv := range c.env {
					args = append(args, "--env", kv)
				}
				out := strings.TrimSpace(run(t, nil, crane, append(args, ref, "-t", ref)...))
				_, digest, _ = strings.Cut(out, "@")
				var cfg struct{ Config struct{ Env []string } }
				json.Unmarshal([]byte(run(t, nil, crane, "config", "--insecure", ref)), &cfg)
				for _, kv := range c.env {
					if !strings.Contains(strings.Join(cfg.Config.Env, "\n")+"\n", kv+"\n") {
						t.Fatalf("the image config's Env is %q, want %s in it", cfg.Config.Env, kv)
					}
				}
			}

			msg, rules := pullRefused(t, gh, fmt.Sprintf("library/npmpaths%d", i), digest, c.want, false) // complete: read as Node reads it

			report, _ := waitScan(t, gh, digest, func(r scanReport) bool { return r.Verdict != nil })
			var listed []string
			found := false
			for _, p := range report.Result.Inventory.Packages {
				if p.Name == "lodash" {
					listed = append(listed, p.Version+" at "+p.Path)
					found = found || p.Version == "4.17.15" && strings.TrimPrefix(p.Path, "/") == c.at
				}
			}
			if !found {
				t.Errorf("the scan lists lodash at %q, want 4.17.15 at %s", listed, c.at)
			}
			if !report.Complete {
				t.Errorf("the scan report is not complete: %s", report.Error)
			}
			t.Logf("refused (%s): %.300s; lodash listed: %q", rules, msg, listed)
		})
	}
	gh.healthy(t)
}

// npmPathEvasions: the real lodash 4.17.15 from the npm registry, its package.json edited, in a
// directory Node searches for require('lodash') that is not named node_modules.
func npmPathEvasions(t *testing.T) []npmPathEvasion {
	project := npmInstall(t, "lodash@4.17.15")
	realPJ, err := os.ReadFile(filepath.Join(project, "node_modules/lodash/package.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(realPJ), `"name": "lodash",`) || !strings.Contains(string(realPJ), `"version": "4.17.15"`) {
		t.Fatalf("lodash's package.json is not as expected:\n%s", realPJ)
	}
	noName := func(s string) string { return strings.Replace(s, `"name": "lodash",`, "", 1) }
	vscode := func(s string) string { return strings.Replace(s, "{", `{"contributes": {},`, 1) }
	vscodeEngine := func(s string) string { return strings.Replace(s, "{", `{"engines": {"vscode": "^1.0.0"},`, 1) }
	// lodash installs lodash at dir/at with its package.json edited; app is an application
	// depending on it (what npm ls lists)
	lodash := func(t *testing.T, dir, at string, edit func(string) string) {
		copyTree(t, filepath.Join(project, "node_modules/lodash"), filepath.Join(dir, at))
		writeFile(t, filepath.Join(dir, at, "package.json"), []byte(edit(string(realPJ))))
	}
	app := func(t *testing.T, dir, at string) {
		writeFile(t, filepath.Join(dir, at, "package.json"), []byte(`{"name":"app","version":"1.0.0","dependencies":{"lodash":"^4.17.0"}}`))
	}
	// linkedModules: app/node_modules a symlink to target, opt/deps holding lodash
	linkedModules := func(target string, edit func(string) string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			lodash(t, dir, "opt/deps/lodash", edit)
			app(t, dir, "app")
			symlink(t, dir, target, "app/node_modules")
		}
	}
	want := []string{lodashAdvisory, "lodash"}
	return []npmPathEvasion{
		{evasion: evasion{name: "npm: app/node_modules a symlink to ../opt/deps whose lodash has no name",
			build: linkedModules("../opt/deps", noName), check: nodeLoadsLodash, want: want}, at: "opt/deps/lodash/package.json"},
		{evasion: evasion{name: "npm: app/node_modules a symlink to /opt/deps (in the image root) whose lodash has no name",
			build: linkedModules("/opt/deps", noName), check: inImageRoot(nodeLoadsLodash), want: want}, at: "opt/deps/lodash/package.json"},
		{evasion: evasion{name: `npm: app/node_modules a symlink to /opt/deps whose lodash is named lodash with "contributes" (a VS Code marker)`,
			build: linkedModules("/opt/deps", vscode), check: inImageRoot(nodeLoadsLodash), want: want}, at: "opt/deps/lodash/package.json"},
		{evasion: evasion{name: "npm: app/node_modules a symlink to ../opt/deps whose lodash is named lodash with engines.vscode",
			build: linkedModules("../opt/deps", vscodeEngine), check: nodeLoadsLodash, want: want}, at: "opt/deps/lodash/package.json"},
		{evasion: evasion{name: "npm: app a symlink to /srv/app whose node_modules is a directory (lodash without a name)",
			build: func(t *testing.T, dir string) {
				lodash(t, dir, "srv/app/node_modules/lodash", noName)
				app(t, dir, "srv/app")
				symlink(t, dir, "/srv/app", "app")
			}, check: inImageRoot(nodeLoadsLodash), want: want}, at: "srv/app/node_modules/lodash/package.json"},
		{evasion: evasion{name: "npm: HOME=/root and lodash in root/.node_modules (no name)",
			build: func(t *testing.T, dir string) {
				lodash(t, dir, "root/.node_modules/lodash", noName)
				os.MkdirAll(filepath.Join(dir, "app"), 0o755)
			}, check: func(t *testing.T, dir string) {
				nodeLoadsLodashWith(t, filepath.Join(dir, "app"), []string{"HOME=" + filepath.Join(dir, "root")}, "", filepath.Join(dir, "root/.node_modules/lodash"))
			}, want: want}, at: "root/.node_modules/lodash/package.json"},
		{evasion: evasion{name: `npm: HOME=/root and lodash in root/.node_libraries named lodash with "contributes"`,
			build: func(t *testing.T, dir string) {
				lodash(t, dir, "root/.node_libraries/lodash", vscode)
				os.MkdirAll(filepath.Join(dir, "app"), 0o755)
			}, check: func(t *testing.T, dir string) {
				nodeLoadsLodashWith(t, filepath.Join(dir, "app"), []string{"HOME=" + filepath.Join(dir, "root")}, "", filepath.Join(dir, "root/.node_libraries/lodash"))
			}, want: want}, at: "root/.node_libraries/lodash/package.json"},
		{evasion: evasion{
			// node at /usr/bin/node loads from $PREFIX/lib/node, its prefix /usr: the check runs
			// a copy of this machine's node at the tree's usr/bin/node (not put in the image)
			name: "npm: lodash in usr/lib/node ($PREFIX/lib/node of /usr/bin/node) without a name",
			build: func(t *testing.T, dir string) {
				lodash(t, dir, "usr/lib/node/lodash", noName)
				os.MkdirAll(filepath.Join(dir, "app"), 0o755)
			}, check: func(t *testing.T, dir string) {
				node := filepath.Join(t.TempDir(), "usr/bin/node")
				copyFile(t, resolvedTool(t, "node"), node, 0o755)
				os.Symlink(filepath.Join(dir, "usr/lib"), filepath.Join(filepath.Dir(filepath.Dir(node)), "lib"))
				nodeLoadsLodashWith(t, filepath.Join(dir, "app"), []string{"HOME=/nonexistent"}, node, filepath.Join(dir, "usr/lib/node/lodash"))
			}, want: want}, at: "usr/lib/node/lodash/package.json"},
		{evasion: evasion{name: "npm: NODE_PATH=/opt/deps in the image config and lodash there without a name",
			build: func(t *testing.T, dir string) {
				lodash(t, dir, "opt/deps/lodash", noName)
				app(t, dir, "app")
			}, check: func(t *testing.T, dir string) {
				nodeLoadsLodashWith(t, filepath.Join(dir, "app"), []string{"NODE_PATH=" + filepath.Join(dir, "opt/deps")}, "", filepath.Join(dir, "opt/deps/lodash"))
			}, want: want}, env: []string{"NODE_PATH=/opt/deps"}, at: "opt/deps/lodash/package.json"},
		{evasion: evasion{name: `npm: NODE_PATH=/srv/none:/opt/deps in the image config and lodash there named lodash with "contributes"`,
			build: func(t *testing.T, dir string) {
				lodash(t, dir, "opt/deps/lodash", vscode)
				app(t, dir, "app")
			}, check: func(t *testing.T, dir string) {
				nodeLoadsLodashWith(t, filepath.Join(dir, "app"), []string{"NODE_PATH=" + filepath.Join(dir, "srv/none") + ":" + filepath.Join(dir, "opt/deps")}, "", filepath.Join(dir, "opt/deps/lodash"))
			}, want: want}, env: []string{"NODE_PATH=/srv/none:/opt/deps"}, at: "opt/deps/lodash/package.json"},
	}
}

// nodeLoadsLodashWith checks that node (this machine's when ""), run in cwd with env, loads the
// code of lodash 4.17.15 from the directory from, whose package.json npm's semver reads as
// 4.17.15.
func nodeLoadsLodashWith(t *testing.T, cwd string, env []string, node, from string) {
	t.Helper()
	if node == "" {
		node = tool(t, "node")
	}
	// no NODE_PATH of this machine's unless the case sets it
	env = append([]string{"NODE_PATH="}, env...)
	script := `const l = require('lodash'); const pj = require('lodash/package.json');
		console.log(JSON.stringify({code: l.VERSION, version: pj.version, at: require.resolve('lodash'), paths: require('module').globalPaths}))`
	out := runDir(t, cwd, env, node, "-e", script)
	var got struct {
		Code, Version, At string
		Paths             []string
	}
	json.Unmarshal([]byte(out), &got)
	if got.Code != "4.17.15" {
		t.Fatalf("node loads lodash %q from %s (package.json says %q), want the code of 4.17.15", got.Code, got.At, got.Version)
	}
	realFrom, _ := filepath.EvalSymlinks(from)
	if !strings.HasPrefix(got.At, from+string(filepath.Separator)) && !strings.HasPrefix(got.At, realFrom+string(filepath.Separator)) {
		t.Fatalf("node loads lodash from %s, want it from %s", got.At, from)
	}
	semver := `const s = require(require('path').join(process.argv[1], 'node_modules/semver')); console.log(s.eq(process.argv[2], '4.17.15', true))`
	npmDir := filepath.Dir(filepath.Dir(resolvedTool(t, "npm")))
	if eq := strings.TrimSpace(runDir(t, cwd, nil, tool(t, "node"), "-e", semver, npmDir, got.Version)); eq != "true" {
		t.Fatalf("lodash's package.json says %q, which npm's semver does not read as 4.17.15", got.Version)
	}
	t.Logf("node loads lodash %s from %s (package.json version %q; global paths %q)", got.Code, got.At, got.Version, got.Paths)
}

// copyFile copies a file with a mode.
func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
