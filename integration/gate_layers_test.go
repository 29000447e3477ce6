//go:build integration

package integration

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

const eicarBytes = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// hostileLayer writes the entries, in order, as a gzipped tar (the differential test's builder).
func hostileLayer(t *testing.T, entries ...diffEntry) []byte {
	t.Helper()
	return diffGzip(diffTar(t, entries))
}

// imageOf returns the config and manifest of an image of the given gzipped layers.
func imageOf(note string, layers ...[]byte) (cfg, m []byte) {
	cfg = []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"User":"app","Labels":{"case":%q}}}`, note))
	var ls []string
	for _, l := range layers {
		ls = append(ls, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, sha(l), len(l)))
	}
	m = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		sha(cfg), len(cfg), strings.Join(ls, ",")))
	return cfg, m
}

// TestGateReadsLayersAsRuntimes: images whose layers the scanner used to read differently from
// containerd (same-layer opaque whiteouts, long unclean names) or whose quarantined bytes a later
// layer hides are refused, on a push route and on a pull route.
func TestGateReadsLayersAsRuntimes(t *testing.T) {
	up := startUpstream(t, "")
	gh := startGatehouse(t, proxyConfig(up.addr, "")+enforcing)
	gateDB(t, gh)
	eicar := lfFile("app/eicar.com", eicarBytes)
	lodash := lfFile("app/node_modules/lodash/package.json", `{"name":"lodash","version":"4.17.15"}`)
	cases := []struct {
		name   string
		layers [][]byte
		want   string // in the refusal
	}{
		{"opaque whiteout at the root, last in the layer", [][]byte{hostileLayer(t, eicar, lfOpaque(""))}, "EICAR"},
		{"opaque whiteout in app/, last in the layer", [][]byte{hostileLayer(t, lfDir("app/"), eicar, lfOpaque("app"))}, "EICAR"},
		{"opaque whiteout over a vulnerable package of the same layer", [][]byte{hostileLayer(t, lodash, lfOpaque("app/node_modules/lodash"))}, "CVE-2020-8203"},
		{"a name of 2,100 ./ components", [][]byte{hostileLayer(t, lfFile(strings.Repeat("./", 2100)+"app/eicar.com", eicarBytes))}, "EICAR"},
		{"a name of 1,000 a/../ components", [][]byte{hostileLayer(t, lfFile(strings.Repeat("a/../", 1000)+"app/eicar.com", eicarBytes))}, "EICAR"},
		{"a name with a leading slash and dot segments", [][]byte{hostileLayer(t, lfFile("/./app/./../app/eicar.com", eicarBytes))}, "EICAR"},
		{"malware in a lower layer, whited out above", [][]byte{hostileLayer(t, eicar), hostileLayer(t, lfWhiteout("app", "eicar.com"))}, "EICAR"},
		{"malware in a lower layer, its directory made opaque above", [][]byte{hostileLayer(t, eicar), hostileLayer(t, lfDir("app/"), lfOpaque("app"))}, "EICAR"},
		{"malware in a lower layer, overwritten above", [][]byte{hostileLayer(t, eicar), hostileLayer(t, lfFile("app/eicar.com", "clean now\n"))}, "EICAR"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, m := imageOf(c.name, c.layers...)
			// push route
			repo := fmt.Sprintf("ci/hostile%d", i)
			pushBlob(t, gh, repo, cfg)
			for _, l := range c.layers {
				pushBlob(t, gh, repo, l)
			}
			r := do(t, gh, "PUT", "/v2/"+repo+"/manifests/v1", map[string]string{"Content-Type": ociManifest}, m)
			if r.status != http.StatusForbidden || r.code() != "DENIED" || !strings.Contains(r.message(), c.want) {
				t.Errorf("push route: PUT = %d %s, want 403 DENIED naming %s", r.status, tail(string(r.body), 3), c.want)
			}
			for _, l := range c.layers {
				if r := do(t, gh, "GET", "/v2/"+repo+"/blobs/"+sha(l), nil, nil); r.status == http.StatusOK {
					t.Errorf("push route: a layer of the refused image was served")
				}
			}
			// pull route: the same image published upstream
			upRepo := fmt.Sprintf("library/hostile%d", i)
			upPushBlob(t, up.addr, upRepo, cfg)
			for _, l := range c.layers {
				upPushBlob(t, up.addr, upRepo, l)
			}
			upPutManifest(t, up.addr, upRepo, "v1", m)
			r = do(t, gh, "GET", "/v2/docker.io/"+upRepo+"/manifests/v1", nil, nil)
			if r.status != http.StatusForbidden || !strings.Contains(r.message(), c.want) {
				t.Errorf("pull route: GET = %d %s, want 403 naming %s", r.status, tail(string(r.body), 3), c.want)
			}
			for _, l := range c.layers {
				if r := do(t, gh, "GET", "/v2/docker.io/"+upRepo+"/blobs/"+sha(l), nil, nil); r.status == http.StatusOK {
					t.Errorf("pull route: a layer of the refused image was served")
				}
			}
		})
	}
	gh.healthy(t)
}
