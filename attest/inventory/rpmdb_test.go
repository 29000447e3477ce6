package inventory

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rpmdb "github.com/erikvarga/go-rpmdb/pkg"

	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
)

type bdbPage = inventorytest.BDBPage

// rpmdbCases are databases go-rpmdb's own goroutines would panic or loop on, and one they read.
var rpmdbCases = []struct {
	name, file string
	db         []byte
	want       string // in the refusal; "" : let through
}{
	{"a hash index past its page", "Packages", inventorytest.BDB(bdbPage{Type: 13, Entries: []uint16{0, 0xffff}}), "an index entry at offset 65535"},
	{"an off-page entry past its page", "Packages", inventorytest.BDB(bdbPage{Type: 13, Entries: []uint16{0, 505}, PageBytes: func() []byte {
		b := make([]byte, 512)
		b[25], b[20], b[26+2], b[26+3], b[505] = 13, 2, 505&0xff, 505>>8, 3
		return b
	}()}), "runs past the page"},
	{"an overflow chain meeting a hash page", "Packages", inventorytest.BDB(bdbPage{Type: 13, Entries: []uint16{0, 100}, OffPages: map[uint16]uint32{100: 1}}), "the reader loops on it"},
	{"an overflow chain back on itself", "Packages", inventorytest.BDB(bdbPage{Type: 13, Entries: []uint16{0, 100}, OffPages: map[uint16]uint32{100: 2}},
		bdbPage{Type: 7, Next: 3}, bdbPage{Type: 7, Next: 2}), "comes back to page 2"},
	{"an overflow page claiming more than itself", "Packages", inventorytest.BDB(bdbPage{Type: 13, Entries: []uint16{0, 100}, OffPages: map[uint16]uint32{100: 2}},
		bdbPage{Type: 7, Free: 600}), "claiming 600 bytes of 512"},
	{"an NDB blob larger than the file", "Packages.db", inventorytest.NDB(1 << 31), "a blob of 2147483648 bytes"},
	{"a sound Berkeley DB of a header that is not one", "Packages", inventorytest.BDB(bdbPage{Type: 13, Entries: []uint16{0, 100}, OffPages: map[uint16]uint32{100: 2}},
		bdbPage{Type: 7, Free: 25, Data: []byte("\x00\x00\x00\x00\x00\x00\x00\x00not an rpm header")}), ""},
	{"a header claiming 2^31 index entries", "Packages", inventorytest.BDB(bdbPage{Type: 13, Entries: []uint16{0, 100}, OffPages: map[uint16]uint32{100: 2}},
		bdbPage{Type: 7, Free: 25, Data: []byte("\x7f\xff\xff\xff\x00\x00\x00\x00not an rpm header")}), "claiming 2147483647 index entries"},
	{"a sound NDB", "Packages.db", inventorytest.NDB(8), ""},
}

// TestRPMDBChecked: the Berkeley DB and NDB databases on which go-rpmdb's readers would panic
// (on their own goroutine, where no recover reaches: the process ends), loop or over-allocate
// are refused, naming what; a sound one is given to the extractor, which says what it cannot read.
func TestRPMDBChecked(t *testing.T) {
	for _, tt := range rpmdbCases {
		t.Run(tt.name, func(t *testing.T) {
			inv, err := extract(t, DefaultLimits, map[string][]byte{"var/lib/rpm/" + tt.file: tt.db})
			if err != nil {
				t.Fatal(err)
			}
			if len(inv.Unread) != 1 || inv.Unread[0].Extractor != "os/rpm" || inv.Unread[0].Path != "var/lib/rpm/"+tt.file {
				t.Fatalf("unread %+v; want var/lib/rpm/%s unread by os/rpm", inv.Unread, tt.file)
			}
			reason := inv.Unread[0].Reason
			t.Logf("%s", reason)
			if tt.want == "" && strings.Contains(reason, "would not read safely") || tt.want != "" && !strings.Contains(reason, tt.want) {
				t.Errorf("reason %q; want %q", reason, tt.want)
			}
		})
	}
}

// FuzzRPMDB: what checkRPMDB lets through, go-rpmdb reads without panicking (a panic on its
// reader's goroutine ends the fuzzing process, which reports the input) or looping.
func FuzzRPMDB(f *testing.F) {
	for _, c := range rpmdbCases {
		f.Add(c.db)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := checkRPMDB(context.Background(), bytes.NewReader(b), int64(len(b)), ""); err != nil {
			if !errors.Is(err, errRPMDB) {
				t.Fatalf("an error not errRPMDB: %v", err)
			}
			return
		}
		p := filepath.Join(t.TempDir(), "Packages")
		os.WriteFile(p, b, 0o644)
		db, err := rpmdb.Open(p)
		if err != nil {
			return
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		func() {
			defer func() { recover() }() // headerImport's panics are the guard's; the reader's are not recoverable
			db.ListPackagesWithContext(ctx)
		}()
		if ctx.Err() != nil {
			t.Fatalf("go-rpmdb ran past 5 s on an input checkRPMDB let through")
		}
	})
}
