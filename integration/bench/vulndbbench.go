package main

import (
	"archive/zip"
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"
)

// vulndbBench measures importing one large OSV archive (generated: records shaped like osv.dev's,
// one per package, each with a range and a CVSS vector): the import's time and peak memory,
// against the archive's size. Memory must stay bounded whatever the archive's size (records are
// streamed from the zip into SQLite, never held whole).
func vulndbBench(work string, records int) error {
	archive := filepath.Join(work, "osv-large.zip")
	raw, err := writeOSVArchive(archive, records)
	if err != nil {
		return err
	}
	fi, err := os.Stat(archive)
	if err != nil {
		return err
	}
	bin, err := buildGatehouse(work)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "importing %d records (%.1f MiB zipped, %.1f MiB of JSON)\n", records, mib(fi.Size()), mib(raw))
	cmd := exec.Command(bin, "db", "update", "--data", filepath.Join(work, "vulndb-bench"), "--from", archive)
	cmd.Stderr = nil
	start := time.Now()
	out, err := cmd.Output()
	took := time.Since(start)
	if err != nil {
		return fmt.Errorf("db update: %v\n%s", err, out)
	}
	peak := float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024 // KiB on Linux
	fmt.Printf("\nImporting a large OSV archive: gatehouse db update --from (one zip of %d records)\n\n", records)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "records\tarchive MiB\tJSON MiB\timport s\trecords/s\tpeak RSS MiB\tRSS/archive\tRSS/JSON\t")
	fmt.Fprintf(w, "%d\t%.1f\t%.1f\t%.1f\t%.0f\t%.0f\t%.2fx\t%.2fx\t\n", records, mib(fi.Size()), mib(raw), took.Seconds(), float64(records)/took.Seconds(),
		peak, peak/mib(fi.Size()), peak/mib(raw))
	w.Flush()
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// writeOSVArchive writes n synthetic OSV records into a zip, one file each as osv.dev's all.zip
// holds them, and returns how many bytes of JSON it holds.
func writeOSVArchive(path string, n int) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	zw := zip.NewWriter(bw)
	var raw int64
	for i := range n {
		id := fmt.Sprintf("GHSA-bnch-%04x-%04x", i>>16, i&0xffff)
		body := fmt.Sprintf(`{"schema_version":"1.6.0","id":%q,"modified":"2025-%02d-%02dT10:00:00Z","published":"2024-01-01T00:00:00Z","aliases":["CVE-2024-%d"],`+
			`"summary":"A synthetic advisory for the benchmark, about as long as a real summary line","details":"Versions before the fix mishandle input in a way that lets a remote attacker cause harm; upgrade to the fixed version.",`+
			`"severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],`+
			`"affected":[{"package":{"ecosystem":"npm","name":"bench-package-%d"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"%d.%d.%d"}]}]}],`+
			`"references":[{"type":"ADVISORY","url":"https://example.invalid/advisories/%s"}],"database_specific":{"severity":"HIGH"}}`,
			id, 1+i%12, 1+i%28, 10000+i, i, 1+i%9, i%17, i%5, id)
		w, err := zw.Create(id + ".json")
		if err != nil {
			return 0, err
		}
		if _, err := w.Write([]byte(body)); err != nil {
			return 0, err
		}
		raw += int64(len(body))
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	return raw, bw.Flush()
}
