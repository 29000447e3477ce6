package scanning

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
)

// panickingScanner panics as a third-party scanner might.
type panickingScanner struct{}

func (panickingScanner) Scan(context.Context, scan.Image) (*scan.Result, error) {
	var r *scan.Result
	return r, fmt.Errorf("scan: %w", &inventory.PanicError{Extractor: "os/rpm", Path: "var/lib/rpm/rpmdb.sqlite", Value: "slice bounds out of range [1:0]", Stack: []byte("goroutine 1 [running]:\nheaderImport(...)")})
}

type nilInventoryScanner struct{}

func (nilInventoryScanner) Scan(context.Context, scan.Image) (*scan.Result, error) {
	return &scan.Result{Complete: true}, nil // no inventory: recording it dereferences nil
}

// TestPanicsFailTheScan: a scanner's panic (reported or raised) and one while recording the
// result are failed scans, stored, with the stack logged once; the next request is answered
// from the stored failure.
func TestPanicsFailTheScan(t *testing.T) {
	for _, sc := range []Scanner{panickingScanner{}, nilInventoryScanner{}} {
		t.Run(fmt.Sprintf("%T", sc), func(t *testing.T) {
			svc, cs, md := newService(t, sc, 1)
			var logs bytes.Buffer
			svc.log = slog.New(slog.NewTextHandler(&logs, nil))
			d := pushImage(t, cs, md, "team/app", [][]byte{[]byte("layer")}, nil)
			ev, err := svc.Evidence(context.Background(), pushRoute("team/app"), d)
			got := ev.Scan
			if err == nil || got.Error == "" || !strings.Contains(got.Error, "panicked") {
				t.Fatalf("scan %+v, err %v; want a failed scan naming the panic", got, err)
			}
			stored, err := md.ScanGet(context.Background(), d)
			if err != nil || stored.Error != got.Error {
				t.Fatalf("stored %+v, %v", stored, err)
			}
			if strings.Contains(stored.Error, "goroutine") {
				t.Errorf("the stored error holds the stack: %q", stored.Error)
			}
			again, err := svc.Evidence(context.Background(), pushRoute("team/app"), d)
			if err != nil || again.Scan.Error != got.Error {
				t.Errorf("second request: %+v, %v; want the stored failure", again, err)
			}
			if c := strings.Count(logs.String(), "stack="); c != 1 {
				t.Errorf("the stack was logged %d times; want once:\n%s", c, logs.String())
			}
		})
	}
}
