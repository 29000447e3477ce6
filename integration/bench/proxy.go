package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"
)

// proxyBench measures the pull-through path: a cold pull of an image of about imageSize bytes
// through Gatehouse against the same pull directly from the upstream, and cached pulls through
// Gatehouse against the distribution registry in proxy mode over the same upstream.
func proxyBench(work string, imageSize int64, rounds int, rates []int64) error {
	const layers = 4
	up, err := startDistribution(work, "upstream", "")
	if err != nil {
		return err
	}
	defer up.stop()
	defer func() { os.RemoveAll(filepath.Join(work, "upstream-data")) }()
	// the image: four random layers, pushed to several repositories (one per cold round)
	var layerDigests []string
	var layerSizes []int64
	for i := range layers {
		p := filepath.Join(work, fmt.Sprintf("layer%d", i))
		d, err := writeRandom(p, imageSize/layers)
		if err != nil {
			return err
		}
		layerDigests, layerSizes = append(layerDigests, d), append(layerSizes, imageSize/layers)
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	var ls []string
	for i, d := range layerDigests {
		ls = append(ls, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, d, layerSizes[i]))
	}
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		digestOf(config), len(config), strings.Join(ls, ",")))
	repos := make([]string, rounds)
	for r := range rounds {
		repos[r] = fmt.Sprintf("library/image%d", r)
		for i, d := range layerDigests {
			if err := pushBlobFile(up.base, repos[r], filepath.Join(work, fmt.Sprintf("layer%d", i)), d); err != nil {
				return err
			}
		}
		if err := pushBlob(up.base, repos[r], digestOf(config), strings.NewReader(string(config)), int64(len(config))); err != nil {
			return err
		}
		if err := putManifest(up.base, repos[r], "v1", manifest); err != nil {
			return err
		}
	}
	for _, rate := range rates {
		if err := proxyRound(work, up.base, repos, imageSize+int64(len(config)), rounds, rate); err != nil {
			return err
		}
	}
	return nil
}

// proxyRound measures one setting: the upstream as it is (rate 0), or behind a link limited to
// rate bytes/s shared by all connections, as a registry across a WAN is.
func proxyRound(work, upstreamBase string, repos []string, total int64, rounds int, rate int64) error {
	label := "loopback, no limit"
	if rate > 0 {
		lim, err := startThrottle(strings.TrimPrefix(upstreamBase, "http://"), rate)
		if err != nil {
			return err
		}
		defer lim.Close()
		upstreamBase = "http://" + lim.Addr().String()
		label = fmt.Sprintf("upstream link limited to %d MiB/s", rate>>20)
	}
	tag := fmt.Sprintf("r%d", rate>>20)
	gh, err := startGatehouse(work, "gatehouse-proxy-"+tag, fmt.Sprintf("admission: {mode: audit}\nroutes:\n  - {prefix: docker.io, kind: pull, upstream: {url: %q}}\n  - {prefix: \"\", kind: push}\n", upstreamBase))
	if err != nil {
		return err
	}
	defer gh.stop()
	dp, err := startDistribution(work, "distribution-proxy-"+tag, fmt.Sprintf("proxy: {remoteurl: %s}\n", upstreamBase))
	if err != nil {
		return err
	}
	defer dp.stop()

	var direct, ghCold, dpCold, ghCached, dpCached []time.Duration
	for _, repo := range repos {
		d, err := pull(upstreamBase, repo)
		if err != nil {
			return fmt.Errorf("direct: %w", err)
		}
		direct = append(direct, d)
		if d, err = pull(gh.base, "docker.io/"+repo); err != nil {
			return fmt.Errorf("gatehouse cold: %w", err)
		}
		ghCold = append(ghCold, d)
		if d, err = pull(dp.base, repo); err != nil {
			return fmt.Errorf("distribution proxy cold: %w", err)
		}
		dpCold = append(dpCold, d)
	}
	for range rounds {
		for _, repo := range repos {
			d, err := pull(gh.base, "docker.io/"+repo)
			if err != nil {
				return fmt.Errorf("gatehouse cached: %w", err)
			}
			ghCached = append(ghCached, d)
			if d, err = pull(dp.base, repo); err != nil {
				return fmt.Errorf("distribution proxy cached: %w", err)
			}
			dpCached = append(dpCached, d)
		}
	}
	mib := float64(total) / (1 << 20)
	fmt.Printf("\nPull-through, %s: one image of %.0f MiB (4 layers), medians of %d rounds; a pull is the manifest, then all blobs four at a time\n\n", label, mib, len(repos))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pull\tseconds\tMiB/s\tratio\t")
	row := func(name string, ds []time.Duration, base time.Duration, what string) {
		m := median(ds)
		fmt.Fprintf(tw, "%s\t%.3f\t%.0f\t%.2fx %s\t\n", name, m.Seconds(), mib/m.Seconds(), m.Seconds()/base.Seconds(), what)
	}
	row("direct from the upstream", direct, median(direct), "")
	row("gatehouse, cold", ghCold, median(direct), "of direct")
	row("distribution proxy, cold", dpCold, median(direct), "of direct")
	row("gatehouse, cached", ghCached, median(dpCached), "of distribution proxy cached")
	row("distribution proxy, cached", dpCached, median(dpCached), "")
	tw.Flush()
	fmt.Printf("targets: gatehouse cold <= 1.15x direct; gatehouse cached <= 1.00x distribution proxy cached (time)\n")
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// pull fetches a manifest and then all its blobs, four at a time, discarding the bytes.
func pull(base, repo string) (time.Duration, error) {
	start := time.Now()
	req, _ := http.NewRequest("GET", base+"/v2/"+repo+"/manifests/v1", nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("manifest %s: %d %s", repo, resp.StatusCode, body)
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct {
			Digest string
			Size   int64
		}
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return 0, err
	}
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(4)
	fetch := func(d string) func() error {
		return func() error {
			req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v2/"+repo+"/blobs/"+d, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("blob %s: %d", d, resp.StatusCode)
			}
			_, err = io.CopyBuffer(discard{}, resp.Body, make([]byte, 1<<20))
			return err
		}
	}
	g.Go(fetch(m.Config.Digest))
	for _, l := range m.Layers {
		g.Go(fetch(l.Digest))
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// startThrottle is a TCP relay to target whose upstream-to-client bytes share one token bucket
// of rate bytes/s: a WAN link to a remote registry, on loopback.
func startThrottle(target string, rate int64) (net.Listener, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &bucket{rate: float64(rate), next: time.Now()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go io.Copy(u, c)
				buf := make([]byte, 64<<10)
				for {
					n, err := u.Read(buf)
					if n > 0 {
						b.take(n)
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l, nil
}

type bucket struct {
	mu   sync.Mutex
	rate float64
	next time.Time
}

// take waits until n more bytes fit in the link.
func (b *bucket) take(n int) {
	b.mu.Lock()
	now := time.Now()
	if b.next.Before(now) {
		b.next = now
	}
	wait := b.next.Sub(now)
	b.next = b.next.Add(time.Duration(float64(n) / b.rate * float64(time.Second)))
	b.mu.Unlock()
	time.Sleep(wait)
}
