//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// get fetches a URL and returns status, headers and body.
func get(t *testing.T, url string, header map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, resp.Header, b
}

const acceptAll = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// blobsOf lists the config and layer digests of an image manifest.
func blobsOf(t *testing.T, manifest []byte) []string {
	t.Helper()
	var m struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	out := []string{m.Config.Digest}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

func TestProxyPull(t *testing.T) {
	crane, skopeo, cosign := tool(t, "crane"), tool(t, "skopeo"), tool(t, "cosign")
	up := startUpstream(t, "")
	fr := startFront(t, up.addr)

	// content on the upstream, pushed directly: an image of real files, a two-platform index,
	// and a cosign signature of the image
	appDigest, files := pushImage(t, crane, up.addr+"/library/app:v1")
	armDigest, _ := pushImage(t, crane, up.addr+"/library/app:arm")
	run(t, nil, crane, "mutate", "--insecure", "--set-platform", "linux/arm64", up.addr+"/library/app:arm", "-t", up.addr+"/library/multi:arm")
	armDigest = strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", up.addr+"/library/multi:arm"))
	run(t, nil, crane, "index", "append", "--insecure", "-m", up.addr+"/library/app:v1", "-m", up.addr+"/library/multi:arm", "-t", up.addr+"/library/multi:v1")
	keys := t.TempDir()
	env := []string{"COSIGN_PASSWORD=", "HOME=" + keys, "TUF_ROOT=" + filepath.Join(keys, "tuf")}
	runDir(t, keys, env, cosign, "generate-key-pair")
	run(t, env, cosign, "sign", "--key", filepath.Join(keys, "cosign.key"), "--tlog-upload=false", "--allow-insecure-registry", "-y", up.addr+"/library/app@"+appDigest)
	_, _, upstreamManifest := get(t, "http://"+up.addr+"/v2/library/app/manifests/v1", map[string]string{"Accept": acceptAll})

	gh := startGatehouse(t, proxyConfig(fr.addr, ""))

	// path-prefix mode, with crane
	ref := gh.addr + "/docker.io/library/app:v1"
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", ref)); got != appDigest {
		t.Fatalf("digest through gatehouse = %s, upstream %s", got, appDigest)
	}
	if got := run(t, nil, crane, "manifest", "--insecure", ref); got != string(upstreamManifest) {
		t.Fatalf("manifest bytes differ through the proxy")
	}
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", gh.addr+"/docker.io/app:v1")); got != appDigest {
		t.Errorf("docker.io/app (library namespace) = %s", got)
	}
	assertFiles(t, crane, ref, files)

	// path-prefix mode, with skopeo
	layout := filepath.Join(t.TempDir(), "layout")
	run(t, nil, skopeo, "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":v1")
	raw := run(t, nil, skopeo, "inspect", "--tls-verify=false", "--raw", "docker://"+ref)
	if "sha256:"+sha256hex([]byte(raw)) != appDigest {
		t.Errorf("skopeo sees a different manifest")
	}

	// containerd mirror mode (?ns=), byte for byte
	status, hdr, body := get(t, gh.url("/v2/library/app/manifests/v1?ns=docker.io"), map[string]string{"Accept": acceptAll})
	if status != 200 || !bytes.Equal(body, upstreamManifest) || hdr.Get("Docker-Content-Digest") != appDigest {
		t.Fatalf("ns mode manifest: %d %s", status, body)
	}
	for _, b := range blobsOf(t, body) {
		status, _, blob := get(t, gh.url("/v2/library/app/blobs/"+b+"?ns=docker.io"), nil)
		if status != 200 || "sha256:"+sha256hex(blob) != b {
			t.Errorf("ns mode blob %s: %d, %d bytes", b, status, len(blob))
		}
	}
	// ns is a closed-world key: an unknown one is refused, never dialled
	if status, _, body := get(t, gh.url("/v2/library/app/manifests/v1?ns="+up.addr), nil); status != 404 || !strings.Contains(string(body), "NAME_UNKNOWN") {
		t.Errorf("ns naming a host: %d %s", status, body)
	}

	// the image that entered by first pull was scanned, and its SBOM attached on the pull route
	if r, _ := waitScan(t, gh, appDigest, func(r scanReport) bool { return true }); !r.Complete || r.Error != "" {
		t.Errorf("first-pull scan: %+v", r)
	}
	if status, _, refs := get(t, gh.url("/v2/docker.io/library/app/referrers/"+appDigest+"?artifactType=application/vnd.cyclonedx%2Bjson"), nil); status != 200 || !strings.Contains(string(refs), "cyclonedx") {
		t.Errorf("no SBOM referrer on the pull route: %d %s", status, refs)
	}

	// a Range request on a blob not yet cached: fetched whole once, the range served from the store
	_, _, armManifest := get(t, "http://"+up.addr+"/v2/library/multi/manifests/"+armDigest, map[string]string{"Accept": acceptAll})
	armConfig := blobsOf(t, armManifest)[0]
	_, _, wantConfig := get(t, "http://"+up.addr+"/v2/library/multi/blobs/"+armConfig, nil)
	status, _, part := get(t, gh.url("/v2/docker.io/library/multi/blobs/"+armConfig), map[string]string{"Range": "bytes=2-9"})
	if status != 206 || string(part) != string(wantConfig[2:10]) {
		t.Errorf("range on an uncached blob: %d %q, want 206 %q", status, part, wantConfig[2:10])
	}

	// only the platform asked for is fetched
	fr.reset()
	if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", "--platform", "linux/arm64", gh.addr+"/docker.io/library/multi:v1")); got != armDigest {
		t.Errorf("arm64 child through the proxy = %s, want %s", got, armDigest)
	}
	if n := fr.count("GET", "/v2/library/multi/manifests/"+appDigest); n != 0 {
		t.Errorf("the amd64 child was fetched %d times for an arm64 pull", n)
	}

	// a pull route is read-only
	out := runFail(t, nil, crane, "tag", "--insecure", ref, "v2")
	if !strings.Contains(out, "DENIED") || !strings.Contains(out, "read-only") {
		t.Errorf("tagging on a pull route: %s", out)
	}

	// the signature came with the image (fetched in the background once the image's manifest
	// was): it verifies through the proxy with the upstream gone
	waitMetric(t, gh, `gatehouse_companions_fetched_total{kind="sig",route="docker.io"} 1`)
	up.kill()
	out = run(t, env, cosign, "verify", "--key", filepath.Join(keys, "cosign.pub"), "--insecure-ignore-tlog", "--allow-insecure-registry", gh.addr+"/docker.io/library/app@"+appDigest)
	if !strings.Contains(out, appDigest) {
		t.Errorf("cosign verify through the proxy:\n%s", out)
	}
	gh.healthy(t)
}
