//go:build integration

package integration

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// podmanRun is one podman invocation on a private store: its stdout, its stderr (where
// --log-level=debug writes) and its error.
type podmanRun struct {
	stdout, stderr string
	err            error
}

// podman runs Debian's podman (containers/image, the library CRI-O pulls with) as root on a
// private vfs store under dir, with debug logging.
func podman(t *testing.T, dir string, env []string, args ...string) podmanRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := append([]string{"--root", filepath.Join(dir, "root"), "--runroot", filepath.Join(dir, "run"),
		"--tmpdir", filepath.Join(dir, "tmp"), "--storage-driver", "vfs", "--events-backend", "none",
		"--log-level=debug"}, args...)
	cmd := exec.CommandContext(ctx, tool(t, "podman"), full...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return podmanRun{out.String(), errb.String(), err}
}

// The debug lines containers/image (podman 4.3) prints when it turns to a location, each naming
// the host it is about to contact:
//
//	Trying to access "127.0.0.1:40000/docker.io/library/bad:v1"       (each pull source in turn)
//	Looking for TLS certificates and private keys in /etc/docker/certs.d/127.0.0.1:40000
//	GET https://127.0.0.1:40000/v2/                                   (every HTTP request)
//	Ping http://127.0.0.1:40000/v2/ status 200
var (
	podmanAccess = regexp.MustCompile(`msg="Trying to access \\"([^/\\]+)`)
	podmanCerts  = regexp.MustCompile(`msg="Looking for TLS certificates and private keys in [^"]*/([^/"]+)"`)
	podmanHTTP   = regexp.MustCompile(`msg="(?:GET|HEAD|POST|PUT|PATCH|DELETE|Ping) (https?://[^ "]+)`)
)

// podmanHosts returns the host of every debug line that matches one of res (all three when
// none are given), one entry per line, and those lines.
func podmanHosts(log string, res ...*regexp.Regexp) (hosts, lines []string) {
	if len(res) == 0 {
		res = []*regexp.Regexp{podmanAccess, podmanCerts, podmanHTTP}
	}
	for _, line := range strings.Split(log, "\n") {
		for _, re := range res {
			m := re.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			h := m[1]
			if u, err := url.Parse(h); err == nil && u.Host != "" {
				h = u.Host
			}
			hosts, lines = append(hosts, h), append(lines, strings.TrimSpace(line))
		}
	}
	return hosts, lines
}

// onlyGatehouse fails the test unless podman tried some location and every one it tried is gh.
func onlyGatehouse(t *testing.T, what string, r podmanRun, gh *server) {
	t.Helper()
	hosts, _ := podmanHosts(r.stderr)
	if len(hosts) == 0 {
		t.Errorf("%s: the debug log shows no attempt at all:\n%s", what, r.stderr)
	}
	for _, h := range hosts {
		if h != gh.addr {
			t.Errorf("%s: podman tried %s, not only gatehouse (%s):\n%s", what, h, gh.addr, r.stderr)
			return
		}
	}
	for _, other := range []string{"registry-1.docker.io", "index.docker.io", "docker.io/v2", "Mirrors also failed"} {
		if strings.Contains(r.stderr, other) {
			t.Errorf("%s: the debug log mentions %q:\n%s", what, other, r.stderr)
		}
	}
}

// shippedConf returns a file of deploy/ pointed at gh: the address substituted, and insecure
// turned on because this Gatehouse serves plain HTTP on loopback. Nothing else is changed.
func shippedConf(t *testing.T, path string, gh *server) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	var tables []string // the file without its comments
	for _, line := range strings.Split(s, "\n") {
		if line, _, _ = strings.Cut(line, "#"); strings.TrimSpace(line) != "" {
			tables = append(tables, strings.TrimSpace(line))
		}
	}
	if body := strings.Join(tables, "\n"); !strings.Contains(body, "prefix = \"docker.io\"\nlocation = \"gatehouse.example:5000/docker.io\"") || strings.Contains(body, "mirror") {
		t.Fatalf("%s: Gatehouse is not the location of docker.io, or there is a mirror:\n%s", path, body)
	}
	s = strings.ReplaceAll(s, "gatehouse.example:5000", gh.addr)
	return strings.ReplaceAll(s, "insecure = false", "insecure = true")
}

// TestPodmanNoFallback: with the registries.conf shipped in deploy/containers (and, separately,
// its registries.conf.d drop-in over a main file that makes Gatehouse a mirror), Gatehouse is the
// location of docker.io, not a mirror of it: podman pulls a clean image through it and takes a
// refusal as final, trying no other host. The mirror form, for contrast, goes on to Docker Hub.
// Nothing here can reach the internet, so the proof is podman's debug log, not a network error.
func TestPodmanNoFallback(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	clean, bad, _, _ := gateImages(t, crane, up.addr)
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	gateDB(t, gh)
	const cve = "CVE-2020-8203"

	dir := t.TempDir()
	// the signature policy is the test's own (accept anything: signatures are not what this
	// tests), so nothing under /etc/containers decides it
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644)
	shipped := filepath.Join(dir, "registries.conf")
	os.WriteFile(shipped, []byte(shippedConf(t, "../deploy/containers/registries.conf", gh)), 0o644)
	// HOME is private: no registries.conf.d or credentials of this machine's root user apply
	env := []string{"CONTAINERS_REGISTRIES_CONF=" + shipped, "HOME=" + filepath.Join(dir, "home")}
	pull := func(store string, env []string, ref string) podmanRun {
		return podman(t, filepath.Join(dir, store), env, "pull", "--signature-policy", policy, ref)
	}
	refused := func(what string, r podmanRun) {
		t.Helper()
		if r.err == nil {
			t.Errorf("%s: pulled; it should have been refused:\n%s", what, r.stderr)
			return
		}
		var last string
		for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
			if strings.HasPrefix(line, "Error: ") {
				last = line
			}
		}
		if !strings.Contains(last, "denied") || !strings.Contains(last, cve) || !strings.Contains(last, bad) {
			t.Errorf("%s: podman's error does not name the refusal (%s of %s): %q\n%s", what, cve, bad, last, r.stderr)
		}
		onlyGatehouse(t, what, r, gh)
		t.Logf("%s: %s", what, last)
	}

	// the clean image pulls through Gatehouse and is in podman's store with the upstream digest
	r := pull("store", env, "docker.io/library/clean:v1")
	if r.err != nil {
		t.Fatalf("podman pull docker.io/library/clean:v1: %v\n%s\ngatehouse:\n%s", r.err, r.stderr, tail(gh.log.String(), 30))
	}
	onlyGatehouse(t, "clean pull", r, gh)
	if !strings.Contains(r.stderr, `GET http://`+gh.addr+`/v2/docker.io/library/clean/manifests/v1"`) {
		t.Errorf("the clean pull did not read the manifest from gatehouse's docker.io route:\n%s", r.stderr)
	}
	got := podman(t, filepath.Join(dir, "store"), env, "image", "inspect", "--format", "{{.Digest}} {{.RepoTags}}", "docker.io/library/clean:v1")
	if got.err != nil || !strings.Contains(got.stdout, clean) || !strings.Contains(got.stdout, "docker.io/library/clean:v1") {
		t.Errorf("podman's store: %q (err %v), want %s named docker.io/library/clean:v1\n%s", got.stdout, got.err, clean, got.stderr)
	}

	// the quarantined image is refused with the reason, and nothing else is tried
	refused("podman pull docker.io/library/bad:v1", pull("store", env, "docker.io/library/bad:v1"))

	// short names resolve to docker.io only, which is Gatehouse (a fresh store: nothing cached)
	r = pull("short", env, "clean:v1")
	if r.err != nil {
		t.Fatalf("podman pull clean:v1: %v\n%s", r.err, r.stderr)
	}
	if !strings.Contains(r.stderr, "Trying to pull docker.io/library/clean:v1...") {
		t.Errorf("clean:v1 did not resolve to docker.io/library/clean:v1:\n%s", r.stderr)
	}
	onlyGatehouse(t, "short-name pull clean:v1", r, gh)
	refused("podman pull bad:v1", pull("short", env, "bad:v1"))

	// Docker Hub under a name that is not normalised to docker.io is blocked: podman gives up
	// before its first request
	r = pull("store", env, "registry-1.docker.io/library/bad:v1")
	if requests, _ := podmanHosts(r.stderr, podmanHTTP); r.err == nil || !strings.Contains(r.stderr, "registry registry-1.docker.io is blocked") || len(requests) != 0 {
		t.Errorf("registry-1.docker.io/library/bad:v1: err %v, requests to %v; want blocked before any request:\n%s", r.err, requests, r.stderr)
	}

	// For contrast, the fallible form: Gatehouse as a [[registry.mirror]] of docker.io. After
	// the refusal podman turns to docker.io itself (here it cannot reach it; on a node with
	// internet access it would pull the refused image from there). This is also what shows that
	// the assertions above see a fallback when there is one.
	mirror := filepath.Join(dir, "mirror.conf")
	os.WriteFile(mirror, []byte(`unqualified-search-registries = ["docker.io"]
[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "`+gh.addr+`/docker.io"
insecure = true
`), 0o644)
	mirrorEnv := []string{"CONTAINERS_REGISTRIES_CONF=" + mirror, "HOME=" + filepath.Join(dir, "home-mirror")}
	r = pull("mirror", mirrorEnv, "docker.io/library/bad:v1")
	hosts, lines := podmanHosts(r.stderr, podmanAccess, podmanHTTP)
	if r.err == nil || len(hosts) == 0 || hosts[0] != gh.addr || !strings.Contains(strings.Join(hosts, " "), "registry-1.docker.io") {
		t.Errorf("mirror form: err %v, tried %v; want gatehouse, then Docker Hub:\n%s", r.err, hosts, r.stderr)
	} else {
		t.Logf("mirror form: podman went on to Docker Hub after gatehouse refused:\n\t%s", strings.Join(lines, "\n\t"))
	}

	// The drop-in fixes that node: deploy/containers/registries.conf.d/gatehouse.conf, loaded
	// after the main file (here from the private HOME's ~/.config/containers/registries.conf.d,
	// which containers/image reads after /etc/containers/registries.conf.d), replaces the
	// docker.io table, mirror and all.
	dropDir := filepath.Join(dir, "home-dropin", ".config", "containers", "registries.conf.d")
	os.MkdirAll(dropDir, 0o755)
	os.WriteFile(filepath.Join(dropDir, "gatehouse.conf"), []byte(shippedConf(t, "../deploy/containers/registries.conf.d/gatehouse.conf", gh)), 0o644)
	dropEnv := []string{"CONTAINERS_REGISTRIES_CONF=" + mirror, "HOME=" + filepath.Join(dir, "home-dropin")}
	refused("drop-in over the mirror form: podman pull docker.io/library/bad:v1", pull("dropin", dropEnv, "docker.io/library/bad:v1"))
	r = pull("dropin", dropEnv, "docker.io/library/clean:v1")
	if r.err != nil {
		t.Fatalf("drop-in: podman pull docker.io/library/clean:v1: %v\n%s", r.err, r.stderr)
	}
	onlyGatehouse(t, "drop-in: clean pull", r, gh)
	gh.healthy(t)
}
