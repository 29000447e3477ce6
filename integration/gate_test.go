//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// gateImages pushes to the upstream registry a clean image and one carrying lodash 4.17.15
// (CVE-2020-8203, high, fixed in 4.17.19 years ago), each with a platform, and an index of both. It returns their digests and the bad image's layer.
func gateImages(t *testing.T, crane, upstream string) (clean, bad, index, badLayer string) {
	t.Helper()
	push := func(repo string, files map[string][]byte) string {
		ref := upstream + "/" + repo
		run(t, nil, crane, "append", "--insecure", "--oci-empty-base", "-f", tarDir(t, "", files), "-t", ref)
		out := strings.TrimSpace(run(t, nil, crane, "mutate", "--insecure", "--set-platform", "linux/amd64", ref, "-t", ref))
		_, d, _ := strings.Cut(out, "@")
		return d
	}
	// lodash 4.17.20 has no advisory in the base database; testdata/osv-gate adds one (#5's evidence 5)
	clean = push("library/clean:v1", map[string][]byte{"etc/motd": []byte("nothing to see here\n"),
		"app/node_modules/lodash/package.json": []byte(`{"name":"lodash","version":"4.17.20"}`)})
	bad = push("library/bad:v1", map[string][]byte{"app/node_modules/lodash/package.json": []byte(`{"name":"lodash","version":"4.17.15"}`)})
	var m struct{ Layers []struct{ Digest string } }
	json.Unmarshal([]byte(run(t, nil, crane, "manifest", "--insecure", upstream+"/library/bad@"+bad)), &m)
	badLayer = m.Layers[0].Digest
	// the index lives in its own repository with both children copied in
	for _, d := range []string{clean, bad} {
		src := upstream + "/library/clean@" + d
		if d == bad {
			src = upstream + "/library/bad@" + d
		}
		run(t, nil, crane, "copy", "--insecure", src, upstream+"/library/multi:"+d[7:19])
	}
	out := run(t, nil, crane, "index", "append", "--insecure", "-m", upstream+"/library/multi@"+clean, "-m", upstream+"/library/multi@"+bad, "-t", upstream+"/library/multi:v1")
	_, index, _ = strings.Cut(strings.TrimSpace(out), "@")
	return clean, bad, index, badLayer
}

// enforcing is the config of the gate's tests: enforce, hold a minute, pick up a database
// import within 200 ms and take the test data's dates as current.
const enforcing = "admission: {mode: enforce, hold: 60s}\nvulndb: {recheck: 200ms, max_age: 87600h}\n"

func gateDB(t *testing.T, gh *server) {
	t.Helper()
	osvZip := filepath.Join(t.TempDir(), "all.zip")
	os.WriteFile(osvZip, zipDir(t, "../attest/vulndb/testdata/osv"), 0o644)
	run(t, nil, gatehouseBin, "db", "update", "--config", gh.config, "--from", osvZip)
}

// TestGateEnforce: a clean image is admitted and pulls through the gate; an image with a
// long-fixed high vulnerability is refused on every path with 403 DENIED naming the CVE, pulled or pushed.
func TestGateEnforce(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	clean, bad, index, badLayer := gateImages(t, crane, up.addr)
	gh := startGatehouse(t, proxyConfig(up.addr, `  - prefix: audited
    kind: pull
    upstream: {url: "http://`+up.addr+`"}
    admission_mode: audit`)+enforcing)
	gateDB(t, gh)

	// the clean image is admitted on its first pull and pulls with a real client
	run(t, nil, crane, "pull", "--insecure", gh.addr+"/docker.io/library/clean:v1", filepath.Join(t.TempDir(), "clean.tar"))
	if r := do(t, gh, "GET", "/gatehouse/v1/scans/"+clean, nil, nil); !strings.Contains(string(r.body), `"admitted"`) {
		t.Fatalf("clean image verdict: %s", r.body)
	}

	const cve = "CVE-2020-8203"
	denied := func(what string, r response) {
		t.Helper()
		if r.status != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403; body %.300s", what, r.status, r.body)
			return
		}
		if r.status == http.StatusForbidden && r.header.Get("Content-Length") != "" && len(r.body) == 0 {
			return // HEAD: status only
		}
		if code, msg := r.ociError(); code != "DENIED" || !strings.Contains(msg, cve) {
			t.Errorf("%s: %s %q, want DENIED naming %s", what, code, msg, cve)
		}
	}
	badRepo := "/v2/docker.io/library/bad"
	denied("manifest GET by tag (first pull)", do(t, gh, "GET", badRepo+"/manifests/v1", nil, nil))
	denied("manifest GET by digest", do(t, gh, "GET", badRepo+"/manifests/"+bad, nil, nil))
	if r := do(t, gh, "HEAD", badRepo+"/manifests/"+bad, nil, nil); r.status != http.StatusForbidden {
		t.Errorf("manifest HEAD: %d, want 403", r.status)
	}
	for name, h := range map[string]map[string]string{"blob GET": nil, "blob Range GET": {"Range": "bytes=0-99"}} {
		r := do(t, gh, "GET", badRepo+"/blobs/"+badLayer, h, nil)
		if r.status != http.StatusForbidden || r.code() != "DENIED" {
			t.Errorf("%s of the bad layer: %d %s, want 403 DENIED", name, r.status, tail(string(r.body), 3))
		}
	}
	// the message names the CVE, its severity and fix, the package and the file
	_, msg := do(t, gh, "GET", badRepo+"/manifests/"+bad, nil, nil).ociError()
	t.Logf("refusal: %s", msg)
	for _, want := range []string{bad, "lodash", "4.17.19", "app/node_modules/lodash/package.json"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not name %s", msg, want)
		}
	}
	out := runFail(t, nil, crane, "pull", "--insecure", gh.addr+"/docker.io/library/bad:v1", filepath.Join(t.TempDir(), "bad.tar"))
	if !strings.Contains(out, "DENIED") || !strings.Contains(out, cve) {
		t.Errorf("crane pull of the bad image: %s", out)
	}
	// on a pull route an index is served without fetching or admitting its children (a pull of
	// one platform admits one image); each child is judged on its own when a client asks for it:
	// the clean child pulls, the bad one does not
	multi := "/v2/docker.io/library/multi"
	if r := do(t, gh, "GET", multi+"/manifests/v1", nil, nil); r.status != http.StatusOK {
		t.Errorf("index: %d %s", r.status, r.body)
	}
	if r := do(t, gh, "GET", multi+"/manifests/"+clean, nil, nil); r.status != http.StatusOK {
		t.Errorf("clean child of the index: %d %s", r.status, r.body)
	}
	denied("bad child of the index", do(t, gh, "GET", multi+"/manifests/"+bad, nil, nil))
	// the index served before its bad child was refused goes back to admission, and is refused
	if r := do(t, gh, "GET", multi+"/manifests/v1", nil, nil); r.status != http.StatusForbidden || !strings.Contains(r.message(), cve) {
		t.Errorf("index after its bad child was refused: %d %s", r.status, r.body)
	}
	// an index of a repository where a child is already known refused is refused for it
	run(t, nil, crane, "copy", "--insecure", up.addr+"/library/multi@"+index, up.addr+"/library/bad:multi")
	if r := do(t, gh, "GET", badRepo+"/manifests/"+index, nil, nil); r.status != http.StatusForbidden || !strings.Contains(r.message(), cve) {
		t.Errorf("index whose child is known refused: %d %s", r.status, r.body)
	}
	// a push route judges an index by all its children: pushing it fails on the bad child
	if out := runFail(t, nil, crane, "copy", "--insecure", up.addr+"/library/multi:v1", gh.addr+"/ci/multi:v1"); !strings.Contains(out, "DENIED") {
		t.Errorf("push of the index with a bad child: %s", out)
	}

	// audit mode on another route: decided and recorded, but served
	if r := do(t, gh, "GET", "/v2/audited/library/bad/manifests/"+bad, nil, nil); r.status != http.StatusOK {
		t.Errorf("audit route: %d %s", r.status, r.body)
	}
	waitScan(t, gh, bad, func(r scanReport) bool { return r.Verdict != nil && r.Verdict.State == "quarantined" })

	// CI pushing through a push route: the push fails with the reasons; the content is kept
	out = runFail(t, nil, crane, "copy", "--insecure", up.addr+"/library/bad:v1", gh.addr+"/ci/bad:v1")
	if !strings.Contains(out, "DENIED") || !strings.Contains(out, cve) {
		t.Errorf("crane push of the bad image: %s", out)
	}
	if r := do(t, gh, "GET", "/v2/ci/bad/manifests/v1", nil, nil); r.status != http.StatusForbidden {
		t.Errorf("pushed bad image by tag: %d", r.status)
	}
	run(t, nil, crane, "copy", "--insecure", up.addr+"/library/clean:v1", gh.addr+"/ci/clean:v1")
	run(t, nil, crane, "pull", "--insecure", gh.addr+"/ci/clean:v1", filepath.Join(t.TempDir(), "again.tar"))
	gateBypasses(t, gh, crane, bad, badLayer)
}

// gateBypasses tries the ways around the gate; every one must be refused.
func gateBypasses(t *testing.T, gh *server, crane, bad, badLayer string) {
	t.Helper()
	type attempt struct {
		name, method, path string
		header             map[string]string
		want               int
	}
	attempts := []attempt{
		{"tag", "GET", "/v2/docker.io/library/bad/manifests/v1", nil, 403},
		{"digest", "GET", "/v2/docker.io/library/bad/manifests/" + bad, nil, 403},
		{"HEAD then GET", "HEAD", "/v2/docker.io/library/bad/manifests/v1", nil, 403},
		{"If-None-Match with the digest", "GET", "/v2/docker.io/library/bad/manifests/" + bad, map[string]string{"If-None-Match": `"` + bad + `"`}, 403},
		{"Accept only the index type", "GET", "/v2/docker.io/library/bad/manifests/v1", map[string]string{"Accept": "application/vnd.oci.image.index.v1+json"}, 403},
		{"upper-case name", "GET", "/v2/docker.io/library/BAD/manifests/" + bad, nil, 400},
		{"percent-encoded name", "GET", "/v2/docker.io/library/b%61d/manifests/" + bad, nil, 400},
		{"dot segment", "GET", "/v2/docker.io/library/./bad/manifests/" + bad, nil, 400},
		{"double slash", "GET", "/v2/docker.io/library//bad/manifests/" + bad, nil, 400},
		{"containerd ns= mirror", "GET", "/v2/library/bad/manifests/" + bad + "?ns=docker.io", nil, 403},
		{"Docker Hub short name", "GET", "/v2/docker.io/bad/manifests/" + bad, nil, 403},
		{"unknown ns= value", "GET", "/v2/library/bad/manifests/" + bad + "?ns=elsewhere", nil, 404},
		{"blob by digest", "GET", "/v2/docker.io/library/bad/blobs/" + badLayer, nil, 403},
		{"blob HEAD on a pull route", "HEAD", "/v2/docker.io/library/bad/blobs/" + badLayer, nil, 403},
		{"blob Range", "GET", "/v2/docker.io/library/bad/blobs/" + badLayer, map[string]string{"Range": "bytes=10-"}, 403},
		{"blob through the clean repository", "GET", "/v2/docker.io/library/clean/blobs/" + badLayer, nil, 403},
		{"blob through the index repository", "GET", "/v2/docker.io/library/multi/blobs/" + badLayer, nil, 403},
		{"pushed copy by digest", "GET", "/v2/ci/bad/manifests/" + bad, nil, 403},
		{"pushed copy's blob", "GET", "/v2/ci/bad/blobs/" + badLayer, nil, 403},
		{"sha512 alias of the digest", "GET", "/v2/ci/bad/manifests/sha512:" + strings.Repeat("0", 128), nil, 404},
	}
	// cross-repository mount of the quarantined layer into a fresh repository, then GET it there
	r := do(t, gh, "POST", "/v2/ci/mounted/blobs/uploads/?mount="+badLayer+"&from=ci/bad", nil, nil)
	if r.status != http.StatusCreated && r.status != http.StatusAccepted {
		t.Fatalf("mount: %d %s", r.status, r.body)
	}
	attempts = append(attempts, attempt{"cross-repository mount, then GET", "GET", "/v2/ci/mounted/blobs/" + badLayer, nil, 403})
	// a referrer whose subject is the bad image: served as metadata, but the subject stays refused
	sig := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.example.sig","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="},"layers":[{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}],"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":1}}`, bad)
	pushBlob(t, gh, "ci/bad", []byte("{}"))
	if r := do(t, gh, "PUT", "/v2/ci/bad/manifests/sig", map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, []byte(sig)); r.status != http.StatusCreated {
		t.Fatalf("referrer push: %d %s", r.status, r.body)
	}
	if r := do(t, gh, "GET", "/v2/ci/bad/referrers/"+bad, nil, nil); r.status != http.StatusOK || !strings.Contains(string(r.body), sha([]byte(sig))) {
		t.Errorf("referrers of the bad image: %d %s", r.status, r.body)
	}
	// the referrer itself is served (as metadata)
	if r := do(t, gh, "GET", "/v2/ci/bad/manifests/"+sha([]byte(sig)), nil, nil); r.status != http.StatusOK {
		t.Errorf("the referrer manifest: %d %s", r.status, r.body)
	}
	attempts = append(attempts, attempt{"subject after a referrer was pushed", "GET", "/v2/ci/bad/manifests/" + bad, nil, 403})
	// a tag re-pointed at the bad image after the clean one was admitted under it
	cleanManifest := do(t, gh, "GET", "/v2/ci/clean/manifests/v1", nil, nil)
	if cleanManifest.status != 200 {
		t.Fatalf("clean manifest: %d", cleanManifest.status)
	}
	if out := runFail(t, nil, crane, "copy", "--insecure", gh.addr+"/audited/library/bad:v1", gh.addr+"/ci/clean:v1"); !strings.Contains(out, "DENIED") {
		t.Errorf("re-pointing a tag at the bad image: %s", out)
	}
	attempts = append(attempts, attempt{"tag re-pointed after admission", "GET", "/v2/ci/clean/manifests/v1", nil, 403})

	for _, a := range attempts {
		r := do(t, gh, a.method, a.path, a.header, nil)
		if r.status != a.want || (a.want == 403 && a.method == "GET" && r.code() != "DENIED") {
			t.Errorf("bypass %q: %s %s = %d %s, want %d", a.name, a.method, a.path, r.status, tail(string(r.body), 3), a.want)
		}
	}
	if len(attempts) < 20 {
		t.Fatalf("only %d bypass attempts", len(attempts))
	}
}

// TestGateHerd: 50 concurrent first pulls of an uncached image run one admission and all get the
// same answer.
func TestGateHerd(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	_, bad, _, _ := gateImages(t, crane, up.addr)
	gh := startGatehouse(t, proxyConfig(up.addr, "")+"admission: {mode: enforce}\nvulndb: {max_age: 87600h}\n")
	gateDB(t, gh)
	before := metricValue(t, gh, "gatehouse_gate_admissions_total")
	var wg sync.WaitGroup
	results := make([]response, 50)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = do(t, gh, "GET", "/v2/docker.io/library/bad/manifests/"+bad, nil, nil)
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.status != 403 || r.message() != results[0].message() {
			rep := do(t, gh, "GET", "/gatehouse/v1/scans/"+bad, nil, nil)
			t.Fatalf("caller %d: %d %s; caller 0: %d %s\nscan: %s\nlog: %s", i, r.status, tail(string(r.body), 5), results[0].status, tail(string(results[0].body), 5), rep.body, tail(gh.log.String(), 40))
		}
	}
	if n := metricValue(t, gh, "gatehouse_gate_admissions_total") - before; n != 1 {
		t.Errorf("%v admissions for 50 concurrent first pulls, want 1", n)
	}
}

// TestGateNoDatabase: without a vulnerability database nothing is admitted, and the refusal says why.
func TestGateNoDatabase(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	clean, _, _, _ := gateImages(t, crane, up.addr)
	gh := startGatehouse(t, proxyConfig(up.addr, "")+"admission: {mode: enforce}\n")
	r := do(t, gh, "GET", "/v2/docker.io/library/clean/manifests/"+clean, nil, nil)
	if r.status != 403 || !strings.Contains(strings.ToLower(r.message()), "vulnerability database") {
		t.Errorf("clean image without a database: %d %s", r.status, r.body)
	}
}

// TestGateReevaluation: a database update that adds an advisory moves an admitted image to
// quarantine from its stored inventory, without reading its layers, and the gate follows at once.
func TestGateReevaluation(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	clean, _, _, _ := gateImages(t, crane, up.addr)
	gh := startGatehouse(t, proxyConfig(up.addr, "")+"admission: {mode: enforce}\nvulndb: {recheck: 200ms, max_age: 87600h}\n")
	gateDB(t, gh)
	path := "/v2/docker.io/library/clean/manifests/" + clean
	if r := do(t, gh, "GET", path, nil, nil); r.status != 200 {
		t.Fatalf("clean image before the update: %d %s", r.status, r.body)
	}
	var m struct{ Layers []struct{ Digest string } }
	json.Unmarshal(do(t, gh, "GET", path, nil, nil).body, &m)
	blob := "/v2/docker.io/library/clean/blobs/" + m.Layers[0].Digest
	if r := do(t, gh, "GET", blob, nil, nil); r.status != 200 {
		t.Fatalf("clean layer before the update: %d", r.status)
	}
	// the same digest pushed to a push route: admitted there too (the scan is shared)
	run(t, nil, crane, "copy", "--insecure", up.addr+"/library/clean@"+clean, gh.addr+"/ci/clean2:v1")
	pushed := "/v2/ci/clean2/manifests/" + clean
	if r := do(t, gh, "GET", pushed, nil, nil); r.status != 200 {
		t.Fatalf("pushed copy before the update: %d %s", r.status, r.body)
	}
	read := metricValue(t, gh, "gatehouse_scan_layer_bytes_read_total")
	osvZip := filepath.Join(t.TempDir(), "all.zip")
	os.WriteFile(osvZip, zipDir(t, "../attest/vulndb/testdata/osv", "testdata/osv-gate"), 0o644)
	run(t, nil, gatehouseBin, "db", "update", "--config", gh.config, "--from", osvZip)
	var r response
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if r = do(t, gh, "GET", path, nil, nil); r.status == 403 {
			break
		}
	}
	if r.status != 403 || !strings.Contains(r.message(), "CVE-2021-23337") {
		t.Fatalf("admitted image after an advisory was added: %d %s", r.status, r.body)
	}
	if r := do(t, gh, "GET", blob, nil, nil); r.status != 403 {
		t.Errorf("its layer after quarantine: %d", r.status)
	}
	// every repository holding the digest follows, and still does after a restart
	check := func(when string) {
		t.Helper()
		for _, p := range []string{path, pushed, "/v2/ci/clean2/blobs/" + m.Layers[0].Digest} {
			if r := do(t, gh, "GET", p, nil, nil); r.status != 403 {
				t.Errorf("%s: GET %s = %d, want 403", when, p, r.status)
			}
		}
	}
	check("after the update")
	if after := metricValue(t, gh, "gatehouse_scan_layer_bytes_read_total"); after != read {
		t.Errorf("re-evaluation read %v layer bytes", after-read)
	}
	if n := metricValue(t, gh, "gatehouse_verdicts_revoked_total"); n != 2 {
		t.Errorf("gatehouse_verdicts_revoked_total = %v, want 2 (one per repository)", n)
	}
	gh.stop()
	gh.start()
	check("after a restart")
}

// TestGateTagFallback: on a route with tag_fallback: last-admitted, a tag re-pointed upstream at
// a refused image keeps serving the digest it last served admitted, and says so.
func TestGateTagFallback(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	clean, bad, _, _ := gateImages(t, crane, up.addr)
	run(t, nil, crane, "copy", "--insecure", up.addr+"/library/clean:v1", up.addr+"/library/moving:v1")
	gh := startGatehouse(t, proxyConfig(up.addr, "    tag_ttl: 1s\n    tag_fallback: last-admitted")+"admission: {mode: enforce}\nvulndb: {max_age: 87600h}\n")
	gateDB(t, gh)
	path := "/v2/docker.io/library/moving/manifests/v1"
	if r := do(t, gh, "GET", path, nil, nil); r.status != 200 || r.header.Get("Docker-Content-Digest") != clean {
		t.Fatalf("tag before it moved: %d %s %s", r.status, r.header.Get("Docker-Content-Digest"), r.body)
	}
	run(t, nil, crane, "copy", "--insecure", up.addr+"/library/bad:v1", up.addr+"/library/moving:v1")
	time.Sleep(1500 * time.Millisecond) // past tag_ttl: the next request revalidates and sees the new digest
	for i := 0; i < 2; i++ {            // while the new digest is under admission, and once it is refused
		r := do(t, gh, "GET", path, nil, nil)
		if r.status != 200 || r.header.Get("Docker-Content-Digest") != clean || sha(r.body) != clean {
			t.Fatalf("moved tag, request %d: %d %s", i, r.status, r.header.Get("Docker-Content-Digest"))
		}
		if fb := r.header.Get("Gatehouse-Tag-Fallback"); !strings.Contains(fb, bad) || !strings.Contains(fb, clean) {
			t.Errorf("Gatehouse-Tag-Fallback = %q, want both digests", fb)
		}
		waitScan(t, gh, bad, func(r scanReport) bool { return r.Verdict != nil && r.Verdict.State == "quarantined" })
	}
	if r := do(t, gh, "GET", "/v2/docker.io/library/moving/manifests/"+bad, nil, nil); r.status != 403 {
		t.Errorf("the new digest itself: %d", r.status)
	}
	// the fallback survives a restart (it is recorded, not only remembered), and a client that
	// asks for a layer before its manifest after the restart gets it
	var m struct{ Layers []struct{ Digest string } }
	json.Unmarshal(do(t, gh, "GET", "/v2/docker.io/library/moving/manifests/"+clean, nil, nil).body, &m)
	gh.stop()
	gh.start()
	if r := do(t, gh, "GET", "/v2/docker.io/library/moving/blobs/"+m.Layers[0].Digest, nil, nil); r.status != 200 {
		t.Errorf("admitted layer before its manifest, after a restart: %d %s", r.status, tail(string(r.body), 3))
	}
	if r := do(t, gh, "GET", path, nil, nil); r.status != 200 || r.header.Get("Docker-Content-Digest") != clean {
		t.Errorf("moved tag after a restart: %d %s %s", r.status, r.header.Get("Docker-Content-Digest"), r.body)
	}
}

// TestGateBrokenPolicy: a route whose policy does not compile admits nothing new and says why;
// config check reports it; other routes keep deciding under their own policy.
func TestGateBrokenPolicy(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	clean, _, _, _ := gateImages(t, crane, up.addr)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "broken.rego"), []byte("package gatehouse\n\ndecision := {\"allow\": true\n"), 0o644)
	gh := startGatehouse(t, proxyConfig(up.addr, "    policy: "+dir)+"admission: {mode: enforce}\nvulndb: {max_age: 87600h}\n")
	gateDB(t, gh)
	if out := runFail(t, nil, gatehouseBin, "config", "check", gh.config); !strings.Contains(out, "broken.rego") {
		t.Errorf("config check of a broken policy: %s", out)
	}
	r := do(t, gh, "GET", "/v2/docker.io/library/clean/manifests/"+clean, nil, nil)
	if r.status == 200 || !strings.Contains(r.message(), "does not compile") || !strings.Contains(r.message(), "nothing new is admitted") {
		t.Errorf("image on the broken route: %d %s", r.status, r.body)
	}
	// the push route decides under the embedded default
	run(t, nil, crane, "copy", "--insecure", up.addr+"/library/clean:v1", gh.addr+"/ci/clean:v1")
	if r := do(t, gh, "GET", "/v2/ci/clean/manifests/v1", nil, nil); r.status != 200 {
		t.Errorf("clean image on the default route: %d %s", r.status, r.body)
	}
}

// TestGatePolicyChange: a new policy re-decides stored verdicts from stored evidence on start, and
// an image admitted under the old one is refused under the new one.
func TestGatePolicyChange(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	gateImages(t, crane, up.addr)
	gh := startGatehouse(t, "admission: {mode: enforce}\nvulndb: {max_age: 87600h}\n")
	gateDB(t, gh)
	run(t, nil, crane, "copy", "--insecure", up.addr+"/library/clean:v1", gh.addr+"/ci/clean:v1")
	if r := do(t, gh, "GET", "/v2/ci/clean/manifests/v1", nil, nil); r.status != 200 {
		t.Fatalf("clean image under the default policy: %d %s", r.status, r.body)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "freeze.rego"), []byte(`package gatehouse

decision := {"allow": false, "deny": [{"rule": "ORG-FREEZE", "message": "change freeze: nothing new is admitted this week"}], "warn": []}
`), 0o644)
	gh.stop()
	cfg, _ := os.ReadFile(gh.config)
	os.WriteFile(gh.config, []byte(strings.Replace(string(cfg), "admission: {mode: enforce}", "admission: {mode: enforce, policy: "+dir+"}", 1)), 0o644)
	gh.start()
	var r response
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if r = do(t, gh, "GET", "/v2/ci/clean/manifests/v1", nil, nil); r.status == 403 {
			break
		}
	}
	if r.status != 403 || !strings.Contains(r.message(), "change freeze") {
		t.Fatalf("admitted image after the policy changed: %d %s", r.status, r.body)
	}
}

// TestGateContainerd: containerd pulling through Gatehouse as its docker.io mirror (deploy's
// hosts.toml) gets the admitted image and is refused the quarantined one, with no way around.
func TestGateContainerd(t *testing.T) {
	crane, ctr := tool(t, "crane"), tool(t, "ctr")
	up := startUpstream(t, "")
	clean, _, _, _ := gateImages(t, crane, up.addr)
	gh := startGatehouse(t, proxyConfig(up.addr, "")+"admission: {mode: enforce}\nvulndb: {max_age: 87600h}\n")
	gateDB(t, gh)
	dir := t.TempDir()
	sock := startContainerd(t, dir)
	pull := []string{"--address", sock, "images", "pull", "--hosts-dir", mirrorHosts(t, dir, gh)}
	run(t, nil, ctr, append(pull, "docker.io/library/clean:v1")...)
	if list := run(t, nil, ctr, "--address", sock, "images", "ls"); !strings.Contains(list, clean) {
		t.Fatalf("ctr images ls lacks the clean image %s:\n%s", clean, list)
	}
	out := runFail(t, nil, ctr, append(pull, "docker.io/library/bad:v1")...)
	if !strings.Contains(out, "403 Forbidden") {
		t.Errorf("ctr pull of the quarantined image failed, but not with the gate's refusal:\n%s", out)
	}
	t.Logf("ctr pull of the quarantined image: %s", tail(out, 2))
	if list := run(t, nil, ctr, "--address", sock, "images", "ls"); strings.Contains(list, "library/bad") {
		t.Errorf("containerd has the quarantined image:\n%s", list)
	}
}
