//go:build integration

package integration

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Evidence for issue 9 (class 4, upstream half): a hostile upstream publisher cannot make
// Gatehouse read, store or wait for more than the manifests it serves declare, nor fan one pull
// out into thousands of upstream requests. The upstream is the real distribution registry
// behind the lying front; each hostile route's neighbour keeps serving.

// bounds is a Gatehouse with three pull routes: docker.io (enforcing: a pull is scanned first)
// and audit (served as fetched) both behind the lying front, with a 3s upstream timeout; other
// straight to the registry. limits.blob_size is 512 KiB.
type bounds struct {
	up    *upstreamRegistry
	front *front
	gh    *server
}

func startBounds(t *testing.T) *bounds {
	t.Helper()
	up := startUpstream(t, "")
	fr := startFront(t, up.addr)
	gh := startGatehouse(t, fmt.Sprintf(`routes:
  - prefix: docker.io
    kind: pull
    upstream: {url: "http://%[1]s", timeout: 3s}
  - prefix: audit
    kind: pull
    admission_mode: audit
    upstream: {url: "http://%[1]s", timeout: 3s}
  - prefix: other
    kind: pull
    admission_mode: audit
    upstream: {url: "http://%[2]s"}
  - {prefix: "", kind: push}
limits: {blob_size: 512KiB}
`, fr.addr, up.addr)+enforcing)
	gateDB(t, gh)
	b := &bounds{up: up, front: fr, gh: gh}
	b.pushRaw(t, "library/fine", hostileLayer(t, lfFile("etc/motd", "a neighbour's image\n")))
	return b
}

// pullOther pulls the neighbour route's image with crane and says how long it took.
func (b *bounds) pullOther(t *testing.T) time.Duration {
	took, _ := b.pullOtherGrowing(t)
	return took
}

// pullOtherGrowing is pullOther, also saying how much the data directory grew meanwhile (the
// image and its scan, when it is fetched for the first time).
func (b *bounds) pullOtherGrowing(t *testing.T) (time.Duration, int64) {
	t.Helper()
	before := du(t, b.gh.dataDir)
	start := time.Now()
	out, err := exec.Command(tool(t, "crane"), "pull", "--insecure", b.gh.addr+"/other/library/fine:v1", filepath.Join(t.TempDir(), "fine.tar")).CombinedOutput()
	if err != nil {
		t.Errorf("the neighbour route's pull failed: %v\n%s", err, out)
	}
	took := time.Since(start)
	return took, du(t, b.gh.dataDir) - before
}

// du is the disk usage of dir in bytes, as du(1) counts it (a scan's tree may vanish under it:
// it is asked again).
func du(t *testing.T, dir string) int64 {
	t.Helper()
	var err error
	for range 5 {
		var out []byte
		if out, err = exec.Command("du", "-s", "-B1", dir).Output(); err == nil {
			n, err := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("du %s: %v", dir, err)
	return 0
}

// ociError is the first error of an OCI error body (empty if the body is not one).
func ociError(body []byte) (code, message string) {
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(body, &e) != nil || len(e.Errors) == 0 {
		return "", ""
	}
	return e.Errors[0].Code, e.Errors[0].Message
}

// growthAllowed is what the data directory may grow by beside a refused blob (see grown).
const growthAllowed = 1 << 20

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// pushRaw pushes an image whose one layer is the given bytes (a tar the scan never gets to
// read: the upstream lies about it) and returns the manifest.
func (b *bounds) pushRaw(t *testing.T, repo string, layer []byte) []byte {
	t.Helper()
	cfg, m := imageOf(repo, layer)
	upPushBlob(t, b.up.addr, repo, cfg)
	upPushBlob(t, b.up.addr, repo, layer)
	upPutManifest(t, b.up.addr, repo, "v1", m)
	return m
}

// waitLog waits for the server's log to hold s.
func waitLog(t *testing.T, gh *server, s string, within time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(within); !strings.Contains(gh.log.String(), s); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the log never said %q within %s:\n%s", s, within, tail(gh.log.String(), 30))
		}
	}
}

// snapshot is what a hostile fetch is measured against: the data directory's disk usage (in
// all, and by entry: content, meta.db and its WAL, scan-tmp) and the blob bytes read from
// upstreams.
type snapshot struct {
	du, read int64
	parts    map[string]int64
}

func (b *bounds) snap(t *testing.T) snapshot {
	t.Helper()
	s := snapshot{du: du(t, b.gh.dataDir), read: int64(metricSum(t, b.gh, "gatehouse_upstream_bytes_total")), parts: map[string]int64{}}
	entries, _ := os.ReadDir(b.gh.dataDir)
	for _, e := range entries {
		s.parts[e.Name()] = du(t, filepath.Join(b.gh.dataDir, e.Name()))
	}
	return s
}

// growth says which entries of the data directory grew since s, and by how much.
func (s snapshot) growth(after snapshot) string {
	var out []string
	for name, n := range after.parts {
		if d := n - s.parts[name]; d != 0 {
			out = append(out, fmt.Sprintf("%s %+d", name, d))
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// grown checks a hostile blob (declared bytes long) was read no more than one byte past that,
// and never stored: the data directory grew by at most allowed (the small manifests and configs
// fetched beside it, their directories, the metadata database's WAL: tens to hundreds of KiB
// counted in 4 KiB blocks), and no upload session was left behind.
func (b *bounds) grown(t *testing.T, what string, s snapshot, blob string, declared, allowed int64) {
	t.Helper()
	// a scan of the image may still be fetching the blob (the audit route scans what it serves):
	// its fetch ends by the same bounds
	uploads := func() []string {
		u, _ := filepath.Glob(filepath.Join(b.gh.dataDir, "content", "docker", "registry", "v2", "repositories", "*", "*", "*", "_uploads", "*"))
		return u
	}
	for deadline := time.Now().Add(20 * time.Second); len(uploads()) > 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	if u := uploads(); len(u) > 0 {
		t.Errorf("%s: upload sessions left behind: %v", what, u)
	}
	after := b.snap(t)
	t.Logf("%s: %d blob bytes read from upstreams; the data directory grew %d bytes (%d -> %d: %s); the blob is declared as %d bytes",
		what, after.read-s.read, after.du-s.du, s.du, after.du, s.growth(after), declared)
	if after.du-s.du > allowed {
		t.Errorf("%s: the data directory grew %d bytes, over the %d allowed", what, after.du-s.du, allowed)
	}
	if after.read-s.read > min(declared+1, 64<<20)+4<<10 {
		t.Errorf("%s: %d blob bytes read from upstreams for a blob declared as %d", what, after.read-s.read, declared)
	}
	if fileExists(blobFile(b.gh.dataDir, blob)) {
		t.Errorf("%s: the blob was stored", what)
	}
}

// TestUpstreamEndlessLayer: a layer declared as 100 bytes that the upstream streams chunked
// without end is read to its 101st byte and refused, whether a client asks for it by digest
// (audit route) or the admission's scan fetches it (enforcing route); nothing of it is stored
// (found by an adversarial round: 3 GiB written to the data directory in 20 s).
func TestUpstreamEndlessLayer(t *testing.T) {
	b := startBounds(t)
	layer := randomBytes(100)
	b.pushRaw(t, "library/endless", layer)
	b.front.set(func(f *front) { f.endless = sha(layer) })

	t.Run("a client's GET by digest", func(t *testing.T) {
		if status, _, body := get(t, b.gh.url("/v2/audit/library/endless/manifests/v1"), map[string]string{"Accept": acceptAll}); status != 200 {
			t.Fatalf("manifest: %d %s", status, body)
		}
		before, sent := b.snap(t), b.front.sent.Load()
		start := time.Now()
		status, _, body := get(t, b.gh.url("/v2/audit/library/endless/blobs/"+sha(layer)), nil)
		took := time.Since(start)
		code, msg := ociError(body)
		t.Logf("endless layer, client GET: %d %s %q after %s (the front handed on %d bytes)", status, code, msg, took.Round(time.Millisecond), b.front.sent.Load()-sent)
		if status != http.StatusServiceUnavailable || code != "UNAVAILABLE" || !strings.Contains(msg, "more than the 100 bytes its descriptor declares") {
			t.Errorf("got %d %s %q, want 503 UNAVAILABLE saying the blob runs past its declared 100 bytes", status, code, msg)
		}
		if took > 10*time.Second {
			t.Errorf("the refusal took %s", took)
		}
		b.grown(t, "endless layer, client GET", before, sha(layer), 100, growthAllowed)
	})
	t.Run("a client's GET of a blob no manifest declared", func(t *testing.T) {
		upPushBlob(t, b.up.addr, "library/loose", layer) // no manifest fetched lists it: no declared size
		before := b.snap(t)
		start := time.Now()
		status, _, body := get(t, b.gh.url("/v2/audit/library/loose/blobs/"+sha(layer)), nil)
		took := time.Since(start)
		code, msg := ociError(body)
		t.Logf("endless blob of no known size, client GET: %d %s %q after %s", status, code, msg, took.Round(time.Millisecond))
		if status != http.StatusServiceUnavailable || !strings.Contains(msg, "more than the 524288 bytes limits.blob_size allows") {
			t.Errorf("got %d %s %q, want 503 saying the blob runs past limits.blob_size", status, code, msg)
		}
		b.grown(t, "endless blob of no known size, client GET", before, sha(layer), 512<<10, growthAllowed)
	})
	t.Run("the admission's scan", func(t *testing.T) {
		before, sent := b.snap(t), b.front.sent.Load()
		start := time.Now()
		status, _, body := get(t, b.gh.url("/v2/docker.io/library/endless/manifests/v1"), map[string]string{"Accept": acceptAll})
		took := time.Since(start)
		code, msg := ociError(body)
		t.Logf("endless layer, enforcing pull: %d %s %q after %s (the front handed on %d bytes)", status, code, msg, took.Round(time.Millisecond), b.front.sent.Load()-sent)
		if status == 200 || code == "" || !strings.Contains(msg, "more than the 100 bytes its descriptor declares") {
			t.Errorf("got %d %s %q, want an OCI error saying the layer runs past its declared 100 bytes", status, code, msg)
		}
		if took > 20*time.Second {
			t.Errorf("the refusal took %s (the admission hold is 60s)", took)
		}
		b.grown(t, "endless layer, enforcing pull", before, sha(layer), 100, growthAllowed)
	})
	if n := b.front.count("GET", "/v2/library/endless/blobs/"+sha(layer)); n > 4 {
		t.Errorf("the endless layer was asked for %d times", n)
	}
	t.Logf("the neighbour route pulled in %s", b.pullOther(t).Round(time.Millisecond))
	b.gh.healthy(t)
}

// TestUpstreamOversizedCompanion: a cosign signature whose layer is declared as 100 bytes but
// streamed without end is cut at its 101st byte; one whose layer claims 1 GiB is refused by the
// companion cap without being asked for (found by an adversarial round: 1.5 GB streamed past
// the companion caps).
func TestUpstreamOversizedCompanion(t *testing.T) {
	b := startBounds(t)
	const sigType = "application/vnd.dev.cosign.simplesigning.v1+json"
	empty := []byte("{}")
	sigManifest := func(layer string, size int) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":2},"layers":[{"mediaType":%q,"digest":%q,"size":%d,"annotations":{"dev.cosignproject.cosign/signature":"MEUC"}}]}`,
			sha(empty), sigType, layer, size))
	}

	// a signature stored honestly upstream, its layer streamed endlessly by the front
	m := b.pushRaw(t, "library/signed", hostileLayer(t, lfFile("etc/motd", "signed\n")))
	sig := randomBytes(100)
	upPushBlob(t, b.up.addr, "library/signed", empty)
	upPushBlob(t, b.up.addr, "library/signed", sig)
	sigTag := strings.Replace(sha(m), ":", "-", 1) + ".sig"
	upPutManifest(t, b.up.addr, "library/signed", sigTag, sigManifest(sha(sig), len(sig)))
	b.front.set(func(f *front) { f.endless = sha(sig) })

	before := b.snap(t)
	start := time.Now()
	if status, _, body := get(t, b.gh.url("/v2/audit/library/signed/manifests/v1"), map[string]string{"Accept": acceptAll}); status != 200 {
		t.Fatalf("manifest: %d %s", status, body)
	}
	waitLog(t, b.gh, "more than the 100 bytes its descriptor declares", 20*time.Second)
	t.Logf("endless signature layer refused %s after the pull (the front handed on %d bytes)", time.Since(start).Round(time.Millisecond), b.front.sent.Load())
	// the image's manifest, config and layer, and the signature's manifest and config are stored
	b.grown(t, "endless signature layer", before, sha(sig), 100, growthAllowed)

	// a signature whose layer claims 1 GiB: refused by the 64 MiB cap for one companion blob
	m2 := b.pushRaw(t, "library/bigsig", hostileLayer(t, lfFile("etc/motd", "big signature\n")))
	huge := sha(randomBytes(32))
	sm := sigManifest(huge, 1<<30)
	b.front.serve("library/bigsig", "manifests", []string{strings.Replace(sha(m2), ":", "-", 1) + ".sig", sha(sm)}, ociManifest, sm)
	before = b.snap(t)
	if status, _, body := get(t, b.gh.url("/v2/audit/library/bigsig/manifests/v1"), map[string]string{"Accept": acceptAll}); status != 200 {
		t.Fatalf("manifest: %d %s", status, body)
	}
	waitLog(t, b.gh, "is 1073741824 bytes, over the 67108864-byte limit for companions", 20*time.Second)
	if n := b.front.count("GET", "/v2/library/bigsig/blobs/"+huge) + b.front.count("HEAD", "/v2/library/bigsig/blobs/"+huge); n != 0 {
		t.Errorf("the 1 GiB signature layer was asked for %d times", n)
	}
	b.grown(t, "1 GiB signature layer", before, huge, 0, growthAllowed) // not one byte of it is asked for
	t.Logf("the neighbour route pulled in %s", b.pullOther(t).Round(time.Millisecond))
	b.gh.healthy(t)
}

// TestUpstreamDripEnds: a 64 KiB layer the upstream sends one byte a second (no stall timeout
// ever fires) ends by the route's deadline, timeout + size / min_rate (3s + 1s), for a client
// and for the admission's scan, while the neighbour route serves (found by an adversarial
// round: only a stall timeout existed).
func TestUpstreamDripEnds(t *testing.T) {
	b := startBounds(t)
	layer := randomBytes(64 << 10)
	b.pushRaw(t, "library/drip", layer)
	b.front.set(func(f *front) { f.drip = sha(layer) })
	const deadline = 4 * time.Second

	for _, tc := range []struct{ name, path string }{
		{"a client's GET by digest", "/v2/audit/library/drip/blobs/" + sha(layer)},
		{"the admission's scan", "/v2/docker.io/library/drip/manifests/v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.path, "/v2/audit/") {
				if status, _, body := get(t, b.gh.url("/v2/audit/library/drip/manifests/v1"), map[string]string{"Accept": acceptAll}); status != 200 {
					t.Fatalf("manifest: %d %s", status, body)
				}
			}
			before := b.snap(t)
			type answer struct {
				status int
				body   []byte
				took   time.Duration
			}
			done := make(chan answer, 1)
			start := time.Now()
			go func() {
				status, _, body := get(t, b.gh.url(tc.path), map[string]string{"Accept": acceptAll})
				done <- answer{status, body, time.Since(start)}
			}()
			time.Sleep(500 * time.Millisecond)
			other, otherGrew := b.pullOtherGrowing(t) // while the drip is under way
			a := <-done
			code, msg := ociError(a.body)
			t.Logf("drip: %d %s %q after %s; the neighbour route pulled in %s meanwhile", a.status, code, msg, a.took.Round(time.Millisecond), other.Round(time.Millisecond))
			if a.status == 200 || code == "" || !strings.Contains(msg, "too slowly") {
				t.Errorf("got %d %s %q, want an OCI error saying the upstream sent the layer too slowly", a.status, code, msg)
			}
			if a.took > deadline+6*time.Second {
				t.Errorf("the drip ended after %s, want by its %s deadline (with slack)", a.took, deadline)
			}
			if other > 5*time.Second {
				t.Errorf("the neighbour route's pull took %s during the drip", other)
			}
			t.Logf("drip: the neighbour's pull grew the data directory %d bytes, allowed beside the drip's", otherGrew)
			b.grown(t, "drip", before, sha(layer), 64<<10, growthAllowed+otherGrew)
		})
	}
	b.gh.healthy(t)
}

// TestUpstreamManifestFanOut: an image manifest of 24,000 layers is refused before any layer is
// asked for, and a subject with 20,000 referrers gets 32 of them fetched (found by an
// adversarial round: one upstream request per layer and per referrer).
func TestUpstreamManifestFanOut(t *testing.T) {
	b := startBounds(t)
	total := func(repo string) int {
		b.front.mu.Lock()
		defer b.front.mu.Unlock()
		n := 0
		for k, c := range b.front.seen {
			if strings.Contains(k, "/v2/"+repo+"/") {
				n += c
			}
		}
		return n
	}

	t.Run("24,000 layers", func(t *testing.T) {
		cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
		layers := make([]string, 24000)
		for i := range layers {
			layers[i] = fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":%q,"size":1}`, sha([]byte(strconv.Itoa(i))))
		}
		m := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
			sha(cfg), len(cfg), strings.Join(layers, ",")))
		b.front.serve("library/wide", "manifests", []string{"v1", sha(m)}, ociManifest, m)
		t.Logf("a manifest of %d layers, %d bytes", len(layers), len(m))
		for _, prefix := range []string{"audit", "docker.io"} {
			status, _, body := get(t, b.gh.url("/v2/"+prefix+"/library/wide/manifests/v1"), map[string]string{"Accept": acceptAll})
			code, msg := ociError(body)
			t.Logf("%s: %d %s %q", prefix, status, code, msg)
			if status == 200 || !strings.Contains(msg, "listing 24000 layers; Gatehouse accepts at most 1024") {
				t.Errorf("%s: got %d %s %q, want the manifest refused for its layers", prefix, status, code, msg)
			}
		}
		n := total("library/wide")
		t.Logf("upstream requests for the 24,000-layer image, two routes: %d", n)
		if n > 10 {
			t.Errorf("%d upstream requests, want a few (a tag HEAD and a manifest GET per route)", n)
		}
	})

	t.Run("20,000 referrers", func(t *testing.T) {
		m := b.pushRaw(t, "library/popular", hostileLayer(t, lfFile("etc/motd", "popular\n")))
		refs := make([]string, 20000)
		for i := range refs {
			refs[i] = fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":400}`, sha([]byte("referrer "+strconv.Itoa(i))))
		}
		idx := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` + strings.Join(refs, ",") + `]}`)
		b.front.serve("library/popular", "referrers", []string{sha(m)}, "application/vnd.oci.image.index.v1+json", idx)
		t.Logf("a referrers list of %d, %d bytes", len(refs), len(idx))
		before := total("library/popular")
		if status, _, body := get(t, b.gh.url("/v2/audit/library/popular/manifests/v1"), map[string]string{"Accept": acceptAll}); status != 200 {
			t.Fatalf("manifest: %d %s", status, body)
		}
		waitLog(t, b.gh, `"referrers":20000,"fetched":32`, 20*time.Second)
		for deadline := time.Now().Add(20 * time.Second); strings.Count(b.gh.log.String(), "could not fetch a referrer") < 32; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the referrers fetched were never all tried:\n%s", tail(b.gh.log.String(), 20))
			}
		}
		time.Sleep(500 * time.Millisecond) // anything past the 32 would be asked for by now
		fetched := 0
		for i := range refs {
			fetched += b.front.count("GET", "/v2/library/popular/manifests/"+sha([]byte("referrer "+strconv.Itoa(i))))
		}
		n := total("library/popular") - before
		t.Logf("upstream requests for one pull of a subject with 20,000 referrers: %d, of which %d referrer manifests", n, fetched)
		if fetched > 32 {
			t.Errorf("%d referrer manifests asked for, want at most 32", fetched)
		}
		if n > 60 {
			t.Errorf("%d upstream requests for one pull", n)
		}
	})
	t.Logf("the neighbour route pulled in %s", b.pullOther(t).Round(time.Millisecond))
	b.gh.healthy(t)
}
