// Command bench measures Gatehouse against the CNCF distribution registry and nginx on the same
// machine, with the same content, in one run, and prints the figures side by side as ratios:
// manifest GET by digest (wrk, requests/s and latency percentiles), blob GET throughput for one
// large blob (one stream and many at once), and each server's peak RSS.
//
//	go run ./integration/bench [-blob-size 512MiB] [-duration 10s] [-connections 32] [-streams 32] [-baseline PATH]
//
// integration/bench/run.sh installs the servers and load generator first.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

var (
	blobSizeFlag = flag.String("blob-size", "512MiB", "size of the large blob")
	duration     = flag.Duration("duration", 10*time.Second, "wrk duration per server")
	connections  = flag.Int("connections", 32, "wrk connections")
	streams      = flag.Int("streams", 32, "concurrent blob GETs in the parallel round")
	rounds       = flag.Int("rounds", 3, "single-stream blob GETs per server (the best is reported)")
	keep         = flag.Bool("keep", false, "keep the work directory")
	proxyOnly    = flag.Bool("proxy-only", false, "run only the pull-through comparison")
	registryOnly = flag.Bool("registry-only", false, "run only the registry comparison")
	imageSize    = flag.String("image-size", "100MiB", "size of the image in the pull-through comparison")
	proxyRounds  = flag.Int("proxy-rounds", 3, "rounds of the pull-through comparison (medians are reported)")
	scanOnly     = flag.Bool("scan-only", false, "run only the scanning comparison")
	vulndbOnly   = flag.Bool("vulndb-only", false, "run only the vulnerability database import measurement")
	vulndbSize   = flag.Int("vulndb-records", 200000, "records in the generated OSV archive of the import measurement")
	scanRounds   = flag.Int("scan-rounds", 3, "rounds of the scanning comparison (the best is reported)")
	upstreamRate = flag.String("upstream-rate", "200MiB", "bandwidth of the emulated WAN link to the upstream, per second, for the second pull-through round (0: only the unlimited loopback round)")
	baseline     = flag.String("baseline", "", "a second gatehouse binary (e.g. built from an older commit): the gate table also measures it, enforcing, interleaved with the others")
)

type target struct {
	name         string
	base         string // http://host:port
	manifestPath string
	blobPath     string
	pid          int
	stop         func()
}

type result struct {
	reqPerSec, p50, p99 float64 // manifest GET
	blobMiBps, parMiBps float64
	rssMiB              float64
}

func run() error {
	flag.Parse()
	blobSize, err := parseSize(*blobSizeFlag)
	if err != nil {
		return err
	}
	if *vulndbOnly {
		work, err := os.MkdirTemp("", "gatehouse-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(work)
		return vulndbBench(work, *vulndbSize)
	}
	for _, t := range []string{"registry", "nginx", "wrk"} {
		if _, err := lookTool(t); err != nil {
			return fmt.Errorf("%s not found: run integration/bench/run.sh (it installs the tools first)", t)
		}
	}
	if *baseline != "" {
		if *baseline, err = filepath.Abs(*baseline); err != nil {
			return err
		}
		if !fileExists(*baseline) {
			return fmt.Errorf("-baseline %s: no such file", *baseline)
		}
	}
	work, err := os.MkdirTemp("", "gatehouse-bench-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(work)
	}
	if err := os.Chmod(work, 0o755); err != nil { // nginx workers run as an unprivileged user
		return err
	}
	fmt.Fprintf(os.Stderr, "work directory %s\n", work)
	if *scanOnly {
		return scanBench(work, *scanRounds)
	}
	if !*registryOnly {
		size, err := parseSize(*imageSize)
		if err != nil {
			return err
		}
		rates := []int64{0}
		if *upstreamRate != "0" {
			r, err := parseSize(*upstreamRate)
			if err != nil {
				return err
			}
			rates = append(rates, r)
		}
		if err := proxyBench(work, size, *proxyRounds, rates); err != nil {
			return fmt.Errorf("pull-through: %w", err)
		}
	}
	if *proxyOnly {
		return nil
	}

	// content: one large random blob, a small config, and a manifest over them
	blobFile := filepath.Join(work, "blob")
	blobDigest, err := writeRandom(blobFile, blobSize)
	if err != nil {
		return err
	}
	config := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	configDigest := digestOf(config)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		configDigest, len(config), blobDigest, blobSize))
	manifestDigest := digestOf(manifest)

	// audit mode: this content (a random "layer") is no image a policy could admit; the gate's
	// own cost is measured by gateBench below
	gh, err := startGatehouse(work, "gatehouse", "admission: {mode: audit}\n")
	if err != nil {
		return err
	}
	defer gh.stop()
	dist, err := startDistribution(work, "distribution", "")
	if err != nil {
		return err
	}
	defer dist.stop()
	for _, t := range []*target{gh, dist} {
		if err := pushImage(t, "bench/app", blobFile, blobDigest, config, configDigest, manifest, manifestDigest); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		t.manifestPath = "/v2/bench/app/manifests/" + manifestDigest
		t.blobPath = "/v2/bench/app/blobs/" + blobDigest
	}
	ng, err := startNginx(work, blobFile, manifest)
	if err != nil {
		return err
	}
	defer ng.stop()

	targets := []*target{gh, dist, ng}
	results := map[string]*result{}
	for _, t := range targets {
		r := &result{}
		results[t.name] = r
		fmt.Fprintf(os.Stderr, "%s: manifest GET with wrk (%s, %d connections)\n", t.name, *duration, *connections)
		if r.reqPerSec, r.p50, r.p99, err = wrk(t.base + t.manifestPath); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		// one untimed GET checks the bytes; the timed ones only count them
		if _, err := blobGets(t.base+t.blobPath, blobSize, 1, blobDigest); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		fmt.Fprintf(os.Stderr, "%s: blob GET, %d single streams\n", t.name, *rounds)
		for range *rounds {
			v, err := blobGets(t.base+t.blobPath, blobSize, 1, "")
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			r.blobMiBps = max(r.blobMiBps, v)
		}
		fmt.Fprintf(os.Stderr, "%s: blob GET, %d streams at once\n", t.name, *streams)
		if r.parMiBps, err = blobGets(t.base+t.blobPath, blobSize, *streams, ""); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		r.rssMiB = peakRSS(t.pid)
	}

	fmt.Printf("\nGatehouse vs distribution %s vs nginx (sendfile), same machine, same content, one run\n", "3.1.2")
	fmt.Printf("manifest: %d bytes by digest; blob: %s; wrk -t2 -c%d -d%s\n\n", len(manifest), *blobSizeFlag, *connections, *duration)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "measure\tgatehouse\tdistribution\tnginx\tgatehouse/distribution\tgatehouse/nginx\t")
	g, d, n := results["gatehouse"], results["distribution"], results["nginx"]
	row := func(name string, f func(*result) float64, format string) {
		fmt.Fprintf(tw, "%s\t"+format+"\t"+format+"\t"+format+"\t%.2fx\t%.2fx\t\n", name, f(g), f(d), f(n), ratio(f(g), f(d)), ratio(f(g), f(n)))
	}
	row("manifest GET req/s", func(r *result) float64 { return r.reqPerSec }, "%.0f")
	row("manifest GET p50 ms", func(r *result) float64 { return r.p50 }, "%.2f")
	row("manifest GET p99 ms", func(r *result) float64 { return r.p99 }, "%.2f")
	row("blob GET MiB/s, 1 stream", func(r *result) float64 { return r.blobMiBps }, "%.0f")
	row(fmt.Sprintf("blob GET MiB/s, %d streams", *streams), func(r *result) float64 { return r.parMiBps }, "%.0f")
	row("peak RSS MiB", func(r *result) float64 { return r.rssMiB }, "%.0f")
	tw.Flush()
	fmt.Println("\n(latency rows: lower is better, so a ratio below 1 is a win; RSS likewise)")
	return gateBench(work, gh, dist)
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func lookTool(name string) (string, error) {
	if dir := os.Getenv("GATEHOUSE_TOOLS_BIN"); dir != "" {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p, nil
		}
	}
	for _, p := range []string{"/usr/sbin/" + name} {
		if fileExists(p) {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func digestOf(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }

func writeRandom(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		rand.Read(buf[:n])
		f.Write(buf[:n])
		h.Write(buf[:n])
		left -= n
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), f.Close()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startProcess starts a server and waits until url answers.
func startProcess(name, url string, cmd *exec.Cmd, logPath string) (*target, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	t := &target{name: name, pid: cmd.Process.Pid, stop: func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		logf.Close()
	}}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return t, nil
		}
	}
	t.stop()
	log, _ := os.ReadFile(logPath)
	return nil, fmt.Errorf("%s did not answer at %s:\n%s", name, url, log)
}

func buildGatehouse(work string) (string, error) {
	bin := filepath.Join(work, "gatehouse")
	if fileExists(bin) {
		return bin, nil
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/gatehouse")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building gatehouse (run from the repository root): %w", err)
	}
	return bin, nil
}

// startGatehouse starts gatehouse as name, with its data under work/name-data and extra YAML.
func startGatehouse(work, name, extra string) (*target, error) {
	bin, err := buildGatehouse(work)
	if err != nil {
		return nil, err
	}
	return startGatehouseBin(work, bin, name, extra)
}

// startGatehouseBin is startGatehouse with a given gatehouse binary (-baseline's).
func startGatehouseBin(work, bin, name, extra string) (*target, error) {
	return startServer(work, name, func(port int, cfg string) *exec.Cmd {
		os.WriteFile(cfg, []byte(fmt.Sprintf("listen: 127.0.0.1:%d\ndata: %s\nlog: {level: warn}\n%s", port, filepath.Join(work, name+"-data"), extra)), 0o644)
		return exec.Command(bin, "serve", "--config", cfg)
	})
}

// startDistribution starts the distribution registry as name, with extra YAML (a proxy block).
func startDistribution(work, name, extra string) (*target, error) {
	bin, err := lookTool("registry")
	if err != nil {
		return nil, err
	}
	return startServer(work, name, func(port int, cfg string) *exec.Cmd {
		os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: %s}
  delete: {enabled: true}
http: {addr: 127.0.0.1:%d}
%s`, filepath.Join(work, name+"-data"), port, extra)), 0o644)
		return exec.Command(bin, "serve", cfg)
	})
}

// startServer picks a port, lets command write name's config and build its command, starts it
// and waits for /v2/.
func startServer(work, name string, command func(port int, cfg string) *exec.Cmd) (*target, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	t, err := startProcess(name, base+"/v2/", command(port, filepath.Join(work, name+".yaml")), filepath.Join(work, name+".log"))
	if t != nil {
		t.base = base
	}
	return t, err
}

func startNginx(work, blobFile string, manifest []byte) (*target, error) {
	bin, err := lookTool("nginx")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(work, "nginx-root")
	os.MkdirAll(filepath.Join(root, "logs"), 0o755)
	if err := os.Link(blobFile, filepath.Join(root, "blob")); err != nil {
		return nil, err
	}
	os.WriteFile(filepath.Join(root, "manifest"), manifest, 0o644)
	conf := filepath.Join(work, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
  server {
    listen 127.0.0.1:%[2]d;
    root %[1]s;
    location = /manifest { default_type application/vnd.oci.image.manifest.v1+json; }
    location = /blob { default_type application/octet-stream; }
  }
}
`, root, port)), 0o644)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	t, err := startProcess("nginx", base+"/manifest", exec.Command(bin, "-c", conf, "-p", root, "-g", "daemon off;"), filepath.Join(work, "nginx.log"))
	if t != nil {
		t.base, t.manifestPath, t.blobPath = base, "/manifest", "/blob"
	}
	return t, err
}

// pushImage pushes the blob (streamed from its file), the config and the manifest.
func pushImage(t *target, repo, blobFile, blobDigest string, config []byte, configDigest string, manifest []byte, manifestDigest string) error {
	if err := pushBlobFile(t.base, repo, blobFile, blobDigest); err != nil {
		return err
	}
	if err := pushBlob(t.base, repo, configDigest, bytes.NewReader(config), int64(len(config))); err != nil {
		return err
	}
	return putManifest(t.base, repo, manifestDigest, manifest)
}

func pushBlobFile(base, repo, path, digest string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, _ := f.Stat()
	return pushBlob(base, repo, digest, f, fi.Size())
}

// pushBlob uploads a blob with POST then PUT.
func pushBlob(base, repo, digest string, body io.Reader, size int64) error {
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		return fmt.Errorf("start upload: %d", resp.StatusCode)
	}
	if !strings.HasPrefix(loc, "http") {
		loc = base + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return send("PUT", loc+sep+"digest="+digest, "application/octet-stream", body, size)
}

func putManifest(base, repo, ref string, manifest []byte) error {
	return send("PUT", base+"/v2/"+repo+"/manifests/"+ref, "application/vnd.oci.image.manifest.v1+json", bytes.NewReader(manifest), int64(len(manifest)))
}

func send(method, url, ctype string, body io.Reader, size int64) error {
	req, _ := http.NewRequest(method, url, body)
	req.ContentLength = size
	req.Header.Set("Content-Type", ctype)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return nil
}

var (
	reqRe     = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	latencyRe = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$`)
	non2xxRe  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// wrk runs wrk against url and returns requests/s and p50/p99 latency in ms.
func wrk(url string) (float64, float64, float64, error) {
	bin, err := lookTool("wrk")
	if err != nil {
		return 0, 0, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *duration+time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-t2", fmt.Sprintf("-c%d", *connections), "-d"+duration.String(), "--latency",
		"-H", "Accept: application/vnd.oci.image.manifest.v1+json", url).CombinedOutput()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	if m := non2xxRe.FindSubmatch(out); m != nil {
		return 0, 0, 0, fmt.Errorf("wrk saw %s non-2xx responses from %s:\n%s", m[1], url, out)
	}
	m := reqRe.FindSubmatch(out)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	rps, _ := strconv.ParseFloat(string(m[1]), 64)
	lat := map[string]float64{}
	for _, l := range latencyRe.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(l[2]), 64)
		switch string(l[3]) {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		lat[string(l[1])] = v
	}
	return rps, lat["50"], lat["99"], nil
}

// blobGets downloads the blob n times at once and returns the aggregate MiB/s. With a digest it
// also checks the bytes.
func blobGets(url string, size int64, n int, digest string) (float64, error) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, DisableCompression: true}}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(url)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			var w io.Writer = discard{}
			h := sha256.New()
			if digest != "" {
				w = h
			}
			// 1 MiB reads keep the client's syscalls from capping what the server can send
			got, err := io.CopyBuffer(w, resp.Body, make([]byte, 1<<20))
			if err != nil || got != size || resp.StatusCode != 200 {
				errs <- fmt.Errorf("GET %s: status %d, %d of %d bytes, %v", url, resp.StatusCode, got, size, err)
				return
			}
			if digest != "" && "sha256:"+hex.EncodeToString(h.Sum(nil)) != digest {
				errs <- errors.New("blob bytes do not match their digest")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	return float64(size*int64(n)) / (1 << 20) / time.Since(start).Seconds(), nil
}

// discard is io.Discard without ReadFrom, so io.CopyBuffer uses the large buffer it is given.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// peakRSS is the high-water mark of resident memory of a process and its children (nginx
// workers), in MiB.
func peakRSS(pid int) float64 {
	total := 0.0
	pids := []int{pid}
	if kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(kids)) {
			if k, err := strconv.Atoi(f); err == nil {
				pids = append(pids, k)
			}
		}
	}
	for _, p := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				total += kb / 1024
			}
		}
		f.Close()
	}
	return total
}
