package main

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"text/tabwriter"
)

// gateBench measures what the admission gate costs a cached pull: manifest GET by digest of an
// admitted image through an enforcing Gatehouse, the same with the gate off (audit mode), and
// distribution, in one run.
func gateBench(work string, off, dist *target) error {
	// a small clean image: one gzip layer holding one text file
	var layer bytes.Buffer
	zw := gzip.NewWriter(&layer)
	tw := tar.NewWriter(zw)
	body := []byte("nothing to see here\n")
	tw.WriteHeader(&tar.Header{Name: "etc/motd", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	tw.Close()
	zw.Close()
	var raw bytes.Buffer
	rw := tar.NewWriter(&raw)
	rw.WriteHeader(&tar.Header{Name: "etc/motd", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	rw.Write(body)
	rw.Close()
	config := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","config":{"User":"1000"},"rootfs":{"type":"layers","diff_ids":[%q]}}`, digestOf(raw.Bytes())))
	layerDigest, configDigest := digestOf(layer.Bytes()), digestOf(config)
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}]}`,
		configDigest, len(config), layerDigest, layer.Len()))
	manifestDigest := digestOf(manifest)

	// the vulnerability database the gate decides with, imported before it starts
	bin, err := buildGatehouse(work)
	if err != nil {
		return err
	}
	osvZip := filepath.Join(work, "osv.zip")
	if err := zipTree("attest/vulndb/testdata/osv", osvZip); err != nil {
		return err
	}
	dbPath := filepath.Join(work, "gate-vulndb.sqlite")
	dbCfg := filepath.Join(work, "gate-db.yaml")
	os.WriteFile(dbCfg, []byte(fmt.Sprintf("data: %s\nvulndb: {path: %s}\n", filepath.Join(work, "gate-db-data"), dbPath)), 0o644)
	if out, err := exec.Command(bin, "db", "update", "--config", dbCfg, "--from", osvZip).CombinedOutput(); err != nil {
		return fmt.Errorf("db update: %v\n%s", err, out)
	}
	on, err := startGatehouse(work, "gatehouse-gate", fmt.Sprintf("admission: {mode: enforce}\nvulndb: {path: %s, max_age: 87600h}\n", dbPath))
	if err != nil {
		return err
	}
	defer on.stop()
	targets := []*target{on, off, dist}
	for _, t := range targets {
		// on the enforcing server the manifest PUT returns once the image is admitted
		if err := pushBlob(t.base, "bench/clean", layerDigest, bytes.NewReader(layer.Bytes()), int64(layer.Len())); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if err := pushBlob(t.base, "bench/clean", configDigest, bytes.NewReader(config), int64(len(config))); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if err := putManifest(t.base, "bench/clean", manifestDigest, manifest); err != nil {
			return fmt.Errorf("%s: push of the clean image (is it admitted?): %w", t.name, err)
		}
	}
	rps := map[*target]float64{}
	p99 := map[*target]float64{}
	for _, t := range targets {
		fmt.Fprintf(os.Stderr, "%s: admitted manifest GET with wrk (%s, %d connections)\n", t.name, *duration, *connections)
		r, _, p, err := wrk(t.base + "/v2/bench/clean/manifests/" + manifestDigest)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		rps[t], p99[t] = r, p
	}
	fmt.Printf("\nThe admission gate on a cached pull: manifest GET by digest of an admitted image (%d bytes), wrk -t2 -c%d -d%s\n\n", len(manifest), *connections, *duration)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "measure\tgate on\tgate off\tdistribution\ton/off\ton/distribution\t")
	fmt.Fprintf(w, "req/s\t%.0f\t%.0f\t%.0f\t%.3fx\t%.2fx\t\n", rps[on], rps[off], rps[dist], ratio(rps[on], rps[off]), ratio(rps[on], rps[dist]))
	fmt.Fprintf(w, "p99 ms\t%.2f\t%.2f\t%.2f\t%.3fx\t%.2fx\t\n", p99[on], p99[off], p99[dist], ratio(p99[on], p99[off]), ratio(p99[on], p99[dist]))
	w.Flush()
	fmt.Printf("\n(gate cost = 1 - on/off req/s: %.1f%%; target < 5%%)\n", 100*(1-ratio(rps[on], rps[off])))
	return nil
}

// zipTree writes the regular files under dir into a zip (an osv.dev-style all.zip).
func zipTree(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := zip.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		w, err := zw.Create(d.Name())
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	})
	if err != nil {
		return err
	}
	return zw.Close()
}
