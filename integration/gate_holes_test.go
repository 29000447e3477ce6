//go:build integration

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestGateHoles: the ways a hostile pusher or upstream publisher got quarantined bytes served —
// layers listed with urls (which the scan skipped), digest-less mounts of a quarantined layer,
// runnable images that carry a subject, bad index children dressed as attestations — each with
// variants, on a push route and on a pull route. Every one must be refused.
func TestGateHoles(t *testing.T) {
	crane := tool(t, "crane")
	// the upstream accepts layers with urls (distribution refuses them unless told)
	up := startUpstream(t, "validation: {manifests: {urls: {allow: ['^https://']}}}\n")
	clean, bad, _, badLayer := gateImages(t, crane, up.addr)
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	gateDB(t, gh)
	const cve = "CVE-2020-8203"

	// the bad image pushed by CI: refused, its layer stored (quarantined) in ci/bad
	if out := runFail(t, nil, crane, "copy", "--insecure", up.addr+"/library/bad:v1", gh.addr+"/ci/bad:v1"); !strings.Contains(out, cve) {
		t.Fatalf("push of the bad image: %s", out)
	}
	var badM struct {
		Config struct {
			Digest string
			Size   int
		}
		Layers []struct {
			MediaType, Digest string
			Size              int
		}
	}
	if err := json.Unmarshal([]byte(run(t, nil, crane, "manifest", "--insecure", up.addr+"/library/bad@"+bad)), &badM); err != nil {
		t.Fatal(err)
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"User":"app"}}`)
	layerSize := badM.Layers[0].Size

	// manifest returns an image manifest whose one layer is the quarantined one, as given (the
	// repository is named in an annotation: scans are per digest, so each case has its own).
	manifest := func(repo, layerType string, urls bool, subject string) []byte {
		l := fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":%d`, layerType, badLayer, layerSize)
		if urls {
			l += `,"urls":["https://example.com/layer.tar.gz"]`
		}
		l += "}"
		m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]`,
			sha(cfg), len(cfg), l)
		if subject != "" {
			m += fmt.Sprintf(`,"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":100}`, subject)
		}
		return []byte(m + fmt.Sprintf(`,"annotations":{"case":%q}}`, repo))
	}
	const (
		gzipLayer   = "application/vnd.oci.image.layer.v1.tar+gzip"
		nondist     = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
		dockerLayer = "application/vnd.docker.image.rootfs.diff.tar.gzip"
		foreign     = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
	)
	refusedPush := func(name, repo string, body []byte, want string) {
		t.Helper()
		pushBlob(t, gh, repo, cfg)
		r := do(t, gh, "PUT", "/v2/"+repo+"/manifests/evil", map[string]string{"Content-Type": ociManifest}, body)
		if r.status != http.StatusForbidden || r.code() != "DENIED" || !strings.Contains(r.message(), want) {
			t.Errorf("%s: manifest PUT = %d %s, want 403 DENIED naming %q", name, r.status, tail(string(r.body), 3), want)
		}
		for _, path := range []string{"/v2/" + repo + "/manifests/evil", "/v2/" + repo + "/manifests/" + sha(body), "/v2/" + repo + "/blobs/" + badLayer} {
			if r := do(t, gh, "GET", path, nil, nil); r.status == http.StatusOK {
				t.Errorf("%s: GET %s served %d bytes", name, path, len(r.body))
			}
		}
	}

	// 1. a mount with no source does not link the quarantined layer: the client gets an upload
	// session (202), and the blob is not in the repository afterwards
	for _, repo := range []string{"ci/evil-nomount", "other/evil-nomount"} {
		r := do(t, gh, "POST", "/v2/"+repo+"/blobs/uploads/?mount="+badLayer, nil, nil)
		if r.status != http.StatusAccepted {
			t.Errorf("digest-less mount of a quarantined layer into %s: %d %s, want 202 (upload instead)", repo, r.status, r.body)
		}
		if r := do(t, gh, "HEAD", "/v2/"+repo+"/blobs/"+badLayer, nil, nil); r.status != http.StatusNotFound {
			t.Errorf("after the digest-less mount, HEAD of the layer in %s: %d, want 404", repo, r.status)
		}
	}
	// ... so a manifest naming it with urls has nothing to scan there and is refused, saying why
	refusedPush("urls, layer never uploaded", "ci/evil-nomount", manifest("ci/evil-nomount", nondist, true, ""), "never fetches")
	refusedPush("foreign Docker layer with urls, never uploaded", "other/evil-nomount", manifest("other/evil-nomount", foreign, true, ""), "never fetches")

	// 2. mounted from the quarantined repository, then listed with urls: scanned like any layer
	for i, v := range []struct {
		name, layerType string
	}{
		{"non-distributable type with urls", nondist},
		{"foreign Docker layer with urls", foreign},
		{"ordinary gzip layer with urls", gzipLayer},
	} {
		repo := fmt.Sprintf("ci/evil-urls-%d", i)
		if r := do(t, gh, "POST", "/v2/"+repo+"/blobs/uploads/?mount="+badLayer+"&from=ci/bad", nil, nil); r.status != http.StatusCreated {
			t.Fatalf("mount from ci/bad: %d %s", r.status, r.body)
		}
		refusedPush(v.name, repo, manifest(repo, v.layerType, true, ""), cve)
	}

	// 3. a runnable image that carries a subject is an image, not metadata
	for i, lt := range []string{gzipLayer, dockerLayer, "application/vnd.oci.image.layer.v1.tar"} {
		repo := fmt.Sprintf("ci/evil-subject-%d", i)
		do(t, gh, "POST", "/v2/"+repo+"/blobs/uploads/?mount="+badLayer+"&from=ci/bad", nil, nil)
		refusedPush("runnable image with a subject ("+lt+")", repo, manifest(repo, lt, false, clean), cve)
	}

	// 4. an index whose bad child is annotated as an attestation but is an image
	for _, plat := range []string{`{"os":"linux","architecture":"amd64"}`, `{"os":"unknown","architecture":"unknown"}`} {
		idx := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"platform":%s,"annotations":{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":%q}}]}`,
			bad, len(run(t, nil, crane, "manifest", "--insecure", up.addr+"/library/bad@"+bad)), plat, bad))
		r := do(t, gh, "PUT", "/v2/ci/bad/manifests/idx", map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, idx)
		if r.status != http.StatusForbidden || !strings.Contains(r.message(), cve) {
			t.Errorf("index with the bad child dressed as an attestation (%s): %d %s", plat, r.status, tail(string(r.body), 3))
		}
	}

	// 5. a pull route: the upstream publishes the bad layer under descriptors with urls
	for i, lt := range []string{nondist, foreign} {
		repo := fmt.Sprintf("library/urls%d", i)
		run(t, nil, crane, "copy", "--insecure", up.addr+"/library/bad:v1", up.addr+"/"+repo+":base")
		upPushBlob(t, up.addr, repo, cfg)
		body := manifest(repo, lt, true, "")
		upPutManifest(t, up.addr, repo, "v1", body)
		for _, path := range []string{"/v2/docker.io/" + repo + "/manifests/v1", "/v2/docker.io/" + repo + "/manifests/" + sha(body)} {
			if r := do(t, gh, "GET", path, nil, nil); r.status != http.StatusForbidden || !strings.Contains(r.message(), cve) {
				t.Errorf("pull route, %s with urls: GET %s = %d %s, want 403 naming %s", lt, path, r.status, tail(string(r.body), 3), cve)
			}
		}
		if r := do(t, gh, "GET", "/v2/docker.io/"+repo+"/blobs/"+badLayer, nil, nil); r.status == http.StatusOK {
			t.Errorf("pull route, %s with urls: the layer was served", lt)
		}
	}
	gh.healthy(t)
}

// upPushBlob uploads a blob to the upstream registry.
func upPushBlob(t *testing.T, addr, repo string, b []byte) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("upstream upload start: %d", resp.StatusCode)
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	if !strings.HasPrefix(loc, "http") {
		loc = "http://" + addr + loc
	}
	req, _ := http.NewRequest("PUT", loc+sep+"digest="+sha(b), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upstream blob push: %d", resp.StatusCode)
	}
}

// upPutManifest pushes a manifest to the upstream registry.
func upPutManifest(t *testing.T, addr, repo, ref string, body []byte) {
	t.Helper()
	req, _ := http.NewRequest("PUT", "http://"+addr+"/v2/"+repo+"/manifests/"+ref, bytes.NewReader(body))
	req.Header.Set("Content-Type", ociManifest)
	if bytes.Contains(body, []byte(`"manifests"`)) {
		req.Header.Set("Content-Type", "application/vnd.oci.image.index.v1+json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		t.Fatalf("upstream manifest push: %d %s", resp.StatusCode, b.String())
	}
}

// TestExternalScanDoesNotWhitewash: an image pushed first through a route whose external scanner
// (a Harbor adapter, which looks for vulnerabilities only) reports it clean is not admitted with
// that result on a route scanned by the built-in scanner, nor on a pull route, where it holds
// EICAR. (The adapter is a stand-in that follows the Harbor scanner API's exchange: no real
// adapter runs here.)
func TestExternalScanDoesNotWhitewash(t *testing.T) {
	adapter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == "POST" && r.URL.Path == "/api/v1/scan":
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, `{"id":"1"}`)
		case strings.HasSuffix(r.URL.Path, "/report"):
			io.WriteString(w, `{"scanner":{"name":"Lenient","vendor":"test","version":"1"},"vulnerabilities":[]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer adapter.Close()
	up := startUpstream(t, "")
	gh := startGatehouse(t, fmt.Sprintf(`routes:
  - {prefix: docker.io, kind: pull, upstream: {url: "http://%s", timeout: 5s}}
  - {prefix: ext, kind: push, scanner: {harbor: {url: %q}}}
  - {prefix: "", kind: push}
admission: {mode: enforce, hold: 60s}
vulndb: {recheck: 200ms, max_age: 87600h}
`, up.addr, adapter.URL))
	gateDB(t, gh)
	layer := hostileLayer(t, lfFile("app/eicar.com", eicarBytes))
	cfg, m := imageOf("whitewash", layer)
	push := func(repo string) response {
		pushBlob(t, gh, repo, cfg)
		pushBlob(t, gh, repo, layer)
		return do(t, gh, "PUT", "/v2/"+repo+"/manifests/v1", map[string]string{"Content-Type": ociManifest}, m)
	}
	if r := push("ext/app"); r.status != http.StatusCreated {
		t.Fatalf("the lenient route refused the image (%d %s): the test proves nothing", r.status, tail(string(r.body), 3))
	}
	if r := push("team/app"); r.status != http.StatusForbidden || !strings.Contains(r.message(), "EICAR") {
		t.Errorf("built-in route: PUT = %d %s, want 403 naming EICAR", r.status, tail(string(r.body), 3))
	}
	if r := do(t, gh, "GET", "/v2/team/app/blobs/"+sha(layer), nil, nil); r.status == http.StatusOK {
		t.Errorf("built-in route served the EICAR layer")
	}
	upPushBlob(t, up.addr, "library/whitewash", cfg)
	upPushBlob(t, up.addr, "library/whitewash", layer)
	upPutManifest(t, up.addr, "library/whitewash", "v1", m)
	if r := do(t, gh, "GET", "/v2/docker.io/library/whitewash/manifests/v1", nil, nil); r.status != http.StatusForbidden || !strings.Contains(r.message(), "EICAR") {
		t.Errorf("pull route: GET = %d %s, want 403 naming EICAR", r.status, tail(string(r.body), 3))
	}
	if r := do(t, gh, "GET", "/v2/docker.io/library/whitewash/blobs/"+sha(layer), nil, nil); r.status == http.StatusOK {
		t.Errorf("pull route served the EICAR layer")
	}
}
