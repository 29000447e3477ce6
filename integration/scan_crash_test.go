//go:build integration

package integration

import (
	"net/http"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
)

// TestScanCrashRPMDB: the 12 KiB rpmdb.sqlite that made go-rpmdb panic inside the scan and took
// Gatehouse down (and again after each restart) is refused as a failed scan naming the extractor
// and the file, on a push route and on a pull route; the server stays up, the next request for
// the image is answered the same way from the stored failure, and so is one after a restart.
func TestScanCrashRPMDB(t *testing.T) {
	db, err := inventorytest.PanickingRPMDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the crafted rpmdb.sqlite: %d bytes", len(db))
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	gateDB(t, gh)
	pid := gh.cmd.Process.Pid
	layer := hostileLayer(t, lfFile("etc/os-release", "ID=fedora\nVERSION_ID=40\n"), lfFile("var/lib/rpm/rpmdb.sqlite", string(db)))

	// the push route: the push is refused
	pcfg, pm := imageOf("rpmdb crash, pushed", layer)
	pushBlob(t, gh, "ci/rpmcrash", pcfg)
	pushBlob(t, gh, "ci/rpmcrash", layer)
	pushed := sha(pm)
	// the pull route: the same layer published upstream under another image
	ucfg, um := imageOf("rpmdb crash, pulled", layer)
	upPushBlob(t, up.addr, "library/rpmcrash", ucfg)
	upPushBlob(t, up.addr, "library/rpmcrash", layer)
	upPutManifest(t, up.addr, "library/rpmcrash", "v1", um)
	pulled := sha(um)

	refused := func(what string, r response) {
		t.Helper()
		msg := r.message()
		if r.status != http.StatusForbidden || r.code() != "DENIED" || !strings.Contains(string(r.body), `"rule":"GH-POL-SCAN-FAILED"`) ||
			!strings.Contains(msg, "the extractor os/rpm panicked on var/lib/rpm/rpmdb.sqlite") {
			t.Errorf("%s: %d %.600s; want 403 DENIED, GH-POL-SCAN-FAILED naming os/rpm and var/lib/rpm/rpmdb.sqlite", what, r.status, r.body)
		}
	}
	alive := func(when string) {
		t.Helper()
		resp, err := http.Get(gh.url("/healthz"))
		if err != nil {
			t.Fatalf("%s: the server is down: %v\n%s", when, err, tail(gh.log.String(), 30))
		}
		resp.Body.Close()
		select {
		case <-gh.exited:
			t.Fatalf("%s: gatehouse exited:\n%s", when, tail(gh.log.String(), 30))
		default:
		}
	}
	requests := func(round string) {
		t.Helper()
		refused(round+": push route, PUT", do(t, gh, "PUT", "/v2/ci/rpmcrash/manifests/v1", map[string]string{"Content-Type": ociManifest}, pm))
		refused(round+": push route, GET by digest", do(t, gh, "GET", "/v2/ci/rpmcrash/manifests/"+pushed, nil, nil))
		refused(round+": pull route, GET by tag", do(t, gh, "GET", "/v2/docker.io/library/rpmcrash/manifests/v1", nil, nil))
		refused(round+": pull route, GET by digest", do(t, gh, "GET", "/v2/docker.io/library/rpmcrash/manifests/"+pulled, nil, nil))
		alive(round)
	}
	requests("first")
	_, msg := do(t, gh, "GET", "/v2/docker.io/library/rpmcrash/manifests/"+pulled, nil, nil).ociError()
	t.Logf("refusal: %s", msg)
	if gh.cmd.Process.Pid != pid {
		t.Fatal("the server restarted")
	}
	requests("again")
	for _, d := range []string{pushed, pulled} {
		if r, _ := waitScan(t, gh, d, func(r scanReport) bool { return r.Error != "" }); !strings.Contains(r.Error, "the extractor os/rpm panicked on var/lib/rpm/rpmdb.sqlite: runtime error: slice bounds out of range [1:0]") {
			t.Errorf("scan report of %s: error %q", d, r.Error)
		}
	}
	// each image's scan failed once and its panic was logged once, with the stack
	if n := strings.Count(gh.log.String(), "the scan panicked"); n != 2 {
		t.Errorf("the panic was logged %d times; want once per image (2)", n)
	}
	if !strings.Contains(gh.log.String(), "headerImport") {
		t.Errorf("the log lacks the panic's stack")
	}

	// after a restart the stored failures answer: nothing is scanned again, nothing crashes
	gh.stop()
	gh.start()
	requests("after a restart")
	if n := strings.Count(gh.log.String(), "the scan panicked"); n != 0 {
		t.Errorf("after the restart the image was scanned again (%d panics logged)", n)
	}
}
