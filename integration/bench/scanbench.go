package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
)

// debianLayer returns a gzipped tar of a Debian 12 minbase root filesystem, made once with
// debootstrap from Debian's packages and kept under $HOME/.cache/gatehouse/debian.
func debianLayer() (string, error) {
	home, _ := os.UserHomeDir()
	dir := filepath.Join(home, ".cache", "gatehouse", "debian")
	layer := filepath.Join(dir, "minbase.tar.gz")
	if fileExists(layer) {
		return layer, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	rootfs := filepath.Join(dir, "rootfs")
	if !fileExists(filepath.Join(rootfs, "var/lib/dpkg/status")) {
		fmt.Fprintln(os.Stderr, "making a Debian 12 minbase root filesystem with debootstrap (once)")
		cmd := exec.Command("debootstrap", "--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("debootstrap (integration/bench/run.sh installs it): %w", err)
		}
	}
	tmp := layer + ".tmp"
	cmd := exec.Command("sh", "-c", fmt.Sprintf("tar -C %q --numeric-owner -cf - . | gzip -6 > %q", rootfs, tmp))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("packing the root filesystem: %v\n%s", err, out)
	}
	return layer, os.Rename(tmp, layer)
}

// scanBench scans the Debian layer with Gatehouse's scanner and decompresses it with gzip -dc
// (the floor: no scanner reads a layer faster than it can be inflated), best of rounds each.
func scanBench(work string, rounds int) error {
	layer, err := debianLayer()
	if err != nil {
		return err
	}
	fi, err := os.Stat(layer)
	if err != nil {
		return err
	}
	mib := float64(fi.Size()) / (1 << 20)
	best := func(f func() error) (time.Duration, error) {
		var b time.Duration
		for range rounds {
			start := time.Now()
			if err := f(); err != nil {
				return 0, err
			}
			if d := time.Since(start); b == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	gz, err := best(func() error {
		return exec.Command("sh", "-c", fmt.Sprintf("gzip -dc %q > /dev/null", layer)).Run()
	})
	if err != nil {
		return fmt.Errorf("gzip -dc: %w", err)
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}`)
	s := &scan.Scanner{TempDir: work, FingerprintKey: []byte("gatehouse scan benchmark fingerprint key")}
	var packages int
	gh, err := best(func() error {
		img := scan.Image{Digest: digest.FromString(layer), Config: cfg, Layers: []layerfs.Layer{{
			Digest: digest.FromString(layer), Open: func() (io.ReadCloser, error) { return os.Open(layer) },
		}}}
		r, err := s.Scan(context.Background(), img)
		if err != nil {
			return err
		}
		packages = len(r.Inventory.Packages)
		return nil
	})
	if err != nil {
		return fmt.Errorf("gatehouse scan: %w", err)
	}
	var trivy, trivySecrets time.Duration
	if bin, err := lookTool("trivy"); err == nil {
		archive, err := ociArchive(work, layer, cfg)
		if err != nil {
			return err
		}
		runTrivy := func(args ...string) func() error {
			return func() error {
				cache, _ := os.MkdirTemp(work, "trivy-cache-") // a fresh cache: no layer analysis reused
				defer os.RemoveAll(cache)
				full := append([]string{"image", "--input", archive, "--output", os.DevNull, "--skip-db-update",
					"--skip-java-db-update", "--offline-scan", "--cache-dir", cache, "--quiet"}, args...)
				if out, err := exec.Command(bin, full...).CombinedOutput(); err != nil {
					return fmt.Errorf("trivy: %v\n%s", err, out)
				}
				return nil
			}
		}
		if trivy, err = best(runTrivy("--format", "cyclonedx")); err != nil {
			return err
		}
		if trivySecrets, err = best(runTrivy("--scanners", "secret", "--format", "json")); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(os.Stderr, "trivy not found: the comparison with Trivy is left out (see README: Benchmarks)")
	}
	fmt.Printf("\nScanning a Debian 12 minbase layer: %.0f MiB gzipped, best of %d\n\n", mib, rounds)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "reader\tseconds\tMiB/s (compressed)\tspeed vs gzip -dc\t")
	fmt.Fprintf(tw, "gzip -dc (floor)\t%.2f\t%.0f\t1.00x\t\n", gz.Seconds(), mib/gz.Seconds())
	fmt.Fprintf(tw, "gatehouse scan (%d packages, secrets, malware, config)\t%.2f\t%.0f\t%.2fx\t\n", packages, gh.Seconds(), mib/gh.Seconds(), gz.Seconds()/gh.Seconds())
	if trivy > 0 {
		fmt.Fprintf(tw, "trivy 0.74 image --format cyclonedx (packages only)\t%.2f\t%.0f\t%.2fx\t\n", trivy.Seconds(), mib/trivy.Seconds(), gz.Seconds()/trivy.Seconds())
		fmt.Fprintf(tw, "trivy 0.74 image --scanners secret (secrets only)\t%.2f\t%.0f\t%.2fx\t\n", trivySecrets.Seconds(), mib/trivySecrets.Seconds(), gz.Seconds()/trivySecrets.Seconds())
		fmt.Fprintf(tw, "trivy, both (the work gatehouse's one scan does)\t%.2f\t%.0f\t%.2fx\t\n", (trivy + trivySecrets).Seconds(), mib/(trivy+trivySecrets).Seconds(), gz.Seconds()/(trivy+trivySecrets).Seconds())
	}
	tw.Flush()
	fmt.Println("target: gatehouse >= 0.60x of gzip -dc, and faster than Trivy")
	return nil
}

// ociArchive writes the layer as a one-layer image in an OCI image layout directory (what
// trivy image --input reads).
func ociArchive(work, layer string, cfg []byte) (string, error) {
	dir := filepath.Join(work, "oci")
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", err
	}
	put := func(b []byte) (digest.Digest, error) {
		d := digest.FromBytes(b)
		return d, os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644)
	}
	f, err := os.Open(layer)
	if err != nil {
		return "", err
	}
	ld, err := digest.FromReader(f)
	f.Close()
	if err != nil {
		return "", err
	}
	fi, _ := os.Stat(layer)
	if err := os.Link(layer, filepath.Join(blobs, ld.Encoded())); err != nil {
		return "", err
	}
	diffID, err := exec.Command("sh", "-c", fmt.Sprintf("gzip -dc %q | sha256sum | cut -d' ' -f1", layer)).Output()
	if err != nil {
		return "", err
	}
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}`, strings.TrimSpace(string(diffID))))
	cd, err := put(config)
	if err != nil {
		return "", err
	}
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`, cd, len(config), ld, fi.Size()))
	md, err := put(manifest)
	if err != nil {
		return "", err
	}
	index := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":%d,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}`, md, len(manifest))
	os.WriteFile(filepath.Join(dir, "index.json"), []byte(index), 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	return dir, nil
}
