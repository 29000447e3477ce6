//go:build integration

package integration

import (
	"archive/tar"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// pushBigImage pushes an image with one layer of size random bytes to ref and returns the
// manifest digest and the layer (compressed blob) digest.
func pushBigImage(t *testing.T, crane, ref string, size int) (manifestDigest, layerDigest string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.tar")
	f, _ := os.Create(p)
	tw := tar.NewWriter(f)
	data := make([]byte, size)
	rand.Read(data)
	tw.WriteHeader(&tar.Header{Name: "random.bin", Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg})
	tw.Write(data)
	tw.Close()
	f.Close()
	run(t, nil, crane, "append", "--insecure", "--oci-empty-base", "-f", p, "-t", ref)
	d := strings.TrimSpace(run(t, nil, crane, "mutate", "--insecure", "--set-platform", "linux/amd64", ref, "-t", ref))
	_, manifestDigest, _ = strings.Cut(d, "@")
	raw := run(t, nil, crane, "manifest", "--insecure", ref)
	b := blobsOf(t, []byte(raw))
	return manifestDigest, b[len(b)-1]
}

// blobFile is where the filesystem driver keeps a blob's bytes under a gatehouse data dir.
func blobFile(dataDir, digest string) string {
	hexd := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(dataDir, "content", "docker", "registry", "v2", "blobs", "sha256", hexd[:2], hexd, "data")
}

func TestProxyThunderingHerd(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	fr := startFront(t, up.addr)
	digest, _ := pushBigImage(t, crane, up.addr+"/library/herd:v1", 8<<20)
	gh := startGatehouse(t, proxyConfig(fr.addr, ""))
	fr.reset()

	const clients = 100
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, clients)
	var manifest []byte
	var once sync.Once
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- func() error {
				req, _ := http.NewRequest("GET", gh.url("/v2/docker.io/library/herd/manifests/v1"), nil)
				req.Header.Set("Accept", acceptAll)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return err
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || "sha256:"+sha256hex(body) != digest {
					return errors.New("manifest: status " + resp.Status)
				}
				once.Do(func() { manifest = body })
				var ms struct {
					Config struct{ Digest string }
					Layers []struct{ Digest string }
				}
				if err := jsonUnmarshal(body, &ms); err != nil {
					return err
				}
				for _, b := range append([]string{ms.Config.Digest}, ms.Layers[0].Digest) {
					resp, err := http.Get(gh.url("/v2/docker.io/library/herd/blobs/" + b))
					if err != nil {
						return err
					}
					h := sha256.New()
					_, err = io.Copy(h, resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != 200 || "sha256:"+hex.EncodeToString(h.Sum(nil)) != b {
						return errors.New("blob " + b + ": status " + resp.Status)
					}
				}
				return nil
			}()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("client: %v", err)
		}
	}
	if manifest == nil {
		t.Fatal("no client got the manifest")
	}
	if n := fr.count("GET", "/v2/library/herd/manifests/"+digest); n != 1 {
		t.Errorf("manifest GETs upstream = %d, want 1", n)
	}
	if n := fr.count("HEAD", "/v2/library/herd/manifests/v1"); n != 1 {
		t.Errorf("tag HEADs upstream = %d, want 1", n)
	}
	for _, b := range blobsOf(t, manifest) {
		if n := fr.count("GET", "/v2/library/herd/blobs/"+b); n != 1 {
			t.Errorf("blob %s GETs upstream = %d, want 1", b, n)
		}
	}
	for _, m := range []string{
		`gatehouse_cache_requests_total{kind="blob",result="shared",route="docker.io"}`,
		`gatehouse_cache_requests_total{kind="blob",result="miss",route="docker.io"} 2`,
		`gatehouse_upstream_requests_total{kind="blob",route="docker.io",status="200"} 2`,
		`gatehouse_upstream_bytes_total{route="docker.io"}`,
		`gatehouse_served_bytes_total{route="docker.io"}`,
	} {
		waitMetric(t, gh, m)
	}
	t.Logf("%d concurrent first pulls: upstream saw %d manifest GET(s) and %d GET(s) per blob", clients,
		fr.count("GET", "/v2/library/herd/manifests/"+digest), fr.count("GET", "/v2/library/herd/blobs/"+blobsOf(t, manifest)[1]))
	gh.healthy(t)
}

func TestProxyFaults(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	fr := startFront(t, up.addr)
	_, killedLayer := pushBigImage(t, crane, up.addr+"/library/killed:v1", 16<<20)
	_, liedLayer := pushBigImage(t, crane, up.addr+"/library/lied:v1", 1<<20)
	cachedDigest, _ := pushBigImage(t, crane, up.addr+"/library/cached:v1", 1<<10)
	pushBigImage(t, crane, up.addr+"/library/uncached:v1", 1<<10)
	gh := startGatehouse(t, proxyConfig(fr.addr, "    tag_ttl: 1s\n    max_stale: 1h"))

	t.Run("upstream killed mid-blob", func(t *testing.T) {
		fr.set(func(f *front) { f.slow, f.slowStep = strings.TrimPrefix(killedLayer, ""), 10*time.Millisecond })
		resp, err := http.Get(gh.url("/v2/docker.io/library/killed/blobs/" + killedLayer))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatalf("first MiB: %v", err)
		}
		up.kill()
		rest, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && int64(len(rest)+len(buf)) == resp.ContentLength {
			t.Fatal("the client got the whole blob although the upstream died mid-transfer")
		}
		if _, err := os.Stat(blobFile(gh.dataDir, killedLayer)); err == nil {
			t.Fatal("a partial blob was stored")
		}
		fr.set(func(f *front) { f.slow = "" })
		up.start()
		status, _, body := get(t, gh.url("/v2/docker.io/library/killed/blobs/"+killedLayer), nil)
		if status != 200 || "sha256:"+sha256hex(body) != killedLayer {
			t.Fatalf("after the upstream returned: %d, %d bytes", status, len(body))
		}
	})

	t.Run("upstream sends wrong bytes", func(t *testing.T) {
		fr.set(func(f *front) { f.lieAbout = liedLayer })
		resp, err := http.Get(gh.url("/v2/docker.io/library/lied/blobs/" + liedLayer))
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == 200 && int64(len(body)) == resp.ContentLength {
				t.Fatalf("a blob with the wrong bytes was served whole (%d bytes)", len(body))
			}
		}
		if _, err := os.Stat(blobFile(gh.dataDir, liedLayer)); err == nil {
			t.Fatal("a blob with the wrong bytes was stored")
		}
		if resp, err := http.Get(gh.url("/v2/docker.io/library/lied/blobs/" + liedLayer)); err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == 200 && int64(len(body)) == resp.ContentLength {
				t.Fatal("the lying upstream's blob is served whole on a second request")
			}
		}
		fr.set(func(f *front) { f.lieAbout = "" })
		status, _, body := get(t, gh.url("/v2/docker.io/library/lied/blobs/"+liedLayer), nil)
		if status != 200 || "sha256:"+sha256hex(body) != liedLayer {
			t.Fatalf("after the upstream mended: %d", status)
		}
	})

	t.Run("429 with a cached tag serves it stale", func(t *testing.T) {
		status, _, want := get(t, gh.url("/v2/docker.io/library/cached/manifests/v1"), map[string]string{"Accept": acceptAll})
		if status != 200 {
			t.Fatalf("first pull: %d", status)
		}
		time.Sleep(1200 * time.Millisecond) // past tag_ttl
		fr.set(func(f *front) { f.rateLimit = true })
		defer fr.set(func(f *front) { f.rateLimit = false })
		status, hdr, body := get(t, gh.url("/v2/docker.io/library/cached/manifests/v1"), map[string]string{"Accept": acceptAll})
		if status != 200 || string(body) != string(want) || hdr.Get("Docker-Content-Digest") != cachedDigest {
			t.Fatalf("stale pull: %d %s", status, body)
		}
		if !strings.Contains(hdr.Get("Gatehouse-Stale"), "429") || !strings.Contains(hdr.Get("Warning"), "110") {
			t.Errorf("stale response not marked: Warning %q, Gatehouse-Stale %q", hdr.Get("Warning"), hdr.Get("Gatehouse-Stale"))
		}
		// nothing cached: the rate limit is passed on with Retry-After
		status, hdr, body = get(t, gh.url("/v2/docker.io/library/uncached/manifests/v1"), nil)
		if status != 429 || !strings.Contains(string(body), "TOOMANYREQUESTS") || hdr.Get("Retry-After") == "" {
			t.Errorf("uncached under 429: %d %s %v", status, body, hdr)
		}
	})

	t.Run("upstream down with nothing cached", func(t *testing.T) {
		up.kill()
		// the 429 backoff from the previous subtest may still hold for a second
		time.Sleep(1100 * time.Millisecond)
		status, _, body := get(t, gh.url("/v2/docker.io/library/uncached/manifests/v1"), nil)
		if status != 503 || !strings.Contains(string(body), "UNAVAILABLE") || !strings.Contains(string(body), fr.addr) {
			t.Errorf("upstream down: %d %s", status, body)
		}
		// and the cached tag is still served, marked stale
		status, hdr, _ := get(t, gh.url("/v2/docker.io/library/cached/manifests/v1"), nil)
		if status != 200 || hdr.Get("Gatehouse-Stale") == "" {
			t.Errorf("cached tag with the upstream down: %d %v", status, hdr)
		}
	})
	gh.healthy(t)
}
