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
	on, err := startGate(work, bin, "gatehouse-gate", "gate", osvZip)
	if err != nil {
		return err
	}
	defer on.stop()
	targets := []*target{on, off, dist}
	var base *target // -baseline's binary, enforcing, with its own data and database
	if *baseline != "" {
		if base, err = startGate(work, *baseline, "gatehouse-baseline-gate", "gate-baseline", osvZip); err != nil {
			return fmt.Errorf("baseline %s: %w", *baseline, err)
		}
		defer base.stop()
		targets = []*target{on, base, off, dist}
	}
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
	// with a baseline, two rounds against order bias: on, baseline, off, distribution, then the
	// reverse, so every target has the same mean position; each column is the best of its two
	order := targets
	if base != nil {
		order = append(order, dist, off, base, on)
	}
	rpsRounds := map[*target][]float64{}
	p99Rounds := map[*target][]float64{}
	for _, t := range order {
		fmt.Fprintf(os.Stderr, "%s: admitted manifest GET with wrk (%s, %d connections)\n", t.name, *duration, *connections)
		r, _, p, err := wrk(t.base + "/v2/bench/clean/manifests/" + manifestDigest)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		rpsRounds[t], p99Rounds[t] = append(rpsRounds[t], r), append(p99Rounds[t], p)
	}
	rps := map[*target]float64{}
	p99 := map[*target]float64{}
	for _, t := range targets {
		rps[t], p99[t] = rpsRounds[t][0], p99Rounds[t][0]
		for i := range rpsRounds[t] {
			rps[t], p99[t] = max(rps[t], rpsRounds[t][i]), min(p99[t], p99Rounds[t][i])
		}
	}
	fmt.Printf("\nThe admission gate on a cached pull: manifest GET by digest of an admitted image (%d bytes), wrk -t2 -c%d -d%s\n", len(manifest), *connections, *duration)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	if base == nil {
		fmt.Println()
		fmt.Fprintln(w, "measure\tgate on\tgate off\tdistribution\ton/off\ton/distribution\t")
		fmt.Fprintf(w, "req/s\t%.0f\t%.0f\t%.0f\t%.3fx\t%.2fx\t\n", rps[on], rps[off], rps[dist], ratio(rps[on], rps[off]), ratio(rps[on], rps[dist]))
		fmt.Fprintf(w, "p99 ms\t%.2f\t%.2f\t%.2f\t%.3fx\t%.2fx\t\n", p99[on], p99[off], p99[dist], ratio(p99[on], p99[off]), ratio(p99[on], p99[dist]))
	} else {
		fmt.Printf("baseline on: %s, enforcing like gate on; 2 interleaved rounds (on, baseline, off, distribution, then the reverse), each column the best of its 2 (max req/s, min p99)\n\n", *baseline)
		fmt.Fprintln(w, "measure\tgate on\tbaseline on\tgate off\tdistribution\ton/baseline\ton/off\ton/distribution\t")
		fmt.Fprintf(w, "req/s\t%.0f\t%.0f\t%.0f\t%.0f\t%.3fx\t%.3fx\t%.2fx\t\n", rps[on], rps[base], rps[off], rps[dist], ratio(rps[on], rps[base]), ratio(rps[on], rps[off]), ratio(rps[on], rps[dist]))
		fmt.Fprintf(w, "p99 ms\t%.2f\t%.2f\t%.2f\t%.2f\t%.3fx\t%.3fx\t%.2fx\t\n", p99[on], p99[base], p99[off], p99[dist], ratio(p99[on], p99[base]), ratio(p99[on], p99[off]), ratio(p99[on], p99[dist]))
	}
	w.Flush()
	if base != nil {
		fmt.Println("\nround 1, round 2: req/s; p99 ms")
		for i, t := range targets {
			fmt.Printf("  %-14s%.0f, %.0f; %.2f, %.2f\n", []string{"gate on", "baseline on", "gate off", "distribution"}[i]+":", rpsRounds[t][0], rpsRounds[t][1], p99Rounds[t][0], p99Rounds[t][1])
		}
	}
	fmt.Printf("\n(gate cost = 1 - on/off req/s: %.1f%%; target < 5%%)\n", 100*(1-ratio(rps[on], rps[off])))
	return nil
}

// startGate imports the test vulnerability database with bin into work/prefix-vulndb.sqlite and
// starts bin as name, enforcing with it.
func startGate(work, bin, name, prefix, osvZip string) (*target, error) {
	dbPath := filepath.Join(work, prefix+"-vulndb.sqlite")
	dbCfg := filepath.Join(work, prefix+"-db.yaml")
	os.WriteFile(dbCfg, []byte(fmt.Sprintf("data: %s\nvulndb: {path: %s}\n", filepath.Join(work, prefix+"-db-data"), dbPath)), 0o644)
	if out, err := exec.Command(bin, "db", "update", "--config", dbCfg, "--from", osvZip).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("db update: %v\n%s", err, out)
	}
	return startGatehouseBin(work, bin, name, fmt.Sprintf("admission: {mode: enforce}\nvulndb: {path: %s, max_age: 87600h}\n", dbPath))
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
