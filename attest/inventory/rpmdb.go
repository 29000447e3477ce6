package inventory

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// osv-scalibr's os/rpm extractor reads RPM databases with go-rpmdb, whose Berkeley DB and NDB
// readers parse the file on a goroutine of their own (pkg/bdb, pkg/ndb: Read), where no recover
// of Gatehouse's reaches: a 1 KiB Packages file whose hash page points past the page
// (pageData[65535] of 512 bytes) ended the process. The same readers loop forever on an overflow
// chain that meets a page of another type (the loop continues without moving on) or that comes
// back on itself, and allocate what a blob header claims. checkRPMDB walks the file as those
// readers will, before they do, and refuses what would make them panic, loop or allocate past
// the file; the SQLite format (rpm 4.16 and later) is read on the extractor's own goroutine,
// under the guard's recover, and is let through.
const maxRPMHeader = 256 << 20 // go-rpmdb's headerMaxbytes

var errRPMDB = errors.New("an RPM database go-rpmdb would not read safely")

// checkRPMHeader checks the start of one package's header blob (size bytes) as go-rpmdb's
// hdrblobInit will read it: it allocates 16 bytes for each index entry the header claims (il)
// before it checks the claim against the blob, so a blob of 8 bytes claiming 2^31 entries
// asked for 32 GiB and ended the process (an out-of-memory error is not a panic: no recover
// catches it).
func checkRPMHeader(start []byte, size int64) error {
	if len(start) < 8 {
		return nil // hdrblobInit cannot read il and dl, and says so
	}
	il, dl := int64(int32(binary.BigEndian.Uint32(start))), int64(int32(binary.BigEndian.Uint32(start[4:])))
	if il < 1 {
		return nil // hdrblobInit refuses it before allocating
	}
	if dl < 0 || 8+16*il+dl > size || 8+16*il+dl >= maxRPMHeader {
		return rpmdbError("a package header claiming %d index entries and %d bytes of data in %d bytes", il, dl, size)
	}
	return nil
}

// checkRPMDB returns an error (errRPMDB) for a database that go-rpmdb's readers would panic,
// loop or over-allocate on; path is where the file is on disk (SQLite is read from a path).
func checkRPMDB(ctx context.Context, r io.ReaderAt, size int64, path string) error {
	var head [512]byte
	n, _ := r.ReadAt(head[:], 0)
	switch {
	case n >= 16 && bytes.Equal(head[:16], []byte("SQLite format 3\x00")):
		return checkSQLite(ctx, path)
	case n >= 32 && binary.LittleEndian.Uint32(head[0:]) == 'R'|'p'<<8|'m'<<16|'P'<<24:
		return checkNDB(r, size, head[:n])
	case n >= 72:
		return checkBDB(r, size, head[:n])
	}
	return nil // none of go-rpmdb's formats: it says so itself
}

func rpmdbError(format string, args ...any) error {
	return fmt.Errorf("%w: %s: not read", errRPMDB, fmt.Sprintf(format, args...))
}

// checkBDB walks a Berkeley DB hash database as go-rpmdb's bdb.Read does.
func checkBDB(r io.ReaderAt, size int64, meta []byte) error {
	const (
		hashMagic   = 0x00061561
		hashMagicBE = 0x61150600
		headerSize  = 26
		offPageSize = 12
	)
	var order binary.ByteOrder = binary.LittleEndian
	switch binary.LittleEndian.Uint32(meta[12:]) {
	case hashMagic:
	case hashMagicBE:
		order = binary.BigEndian
	default:
		return nil // not a hash database: Open refuses it
	}
	pageSize, lastPage := order.Uint32(meta[20:]), order.Uint32(meta[32:])
	switch pageSize {
	case 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536:
	default:
		return nil // Open refuses it
	}
	if meta[24] != 0 || meta[25] != 8 {
		return nil // encrypted, or not a hash metadata page: Open refuses it
	}
	pages := uint64(lastPage) + 1
	page, chain := make([]byte, pageSize), make([]byte, pageSize)
	readPage := func(buf []byte, no uint32) bool {
		// go-rpmdb seeks to pageSize*no in uint32 arithmetic, which wraps
		n, _ := r.ReadAt(buf, int64(pageSize*no))
		return n == len(buf)
	}
	steps := uint64(0) // overflow pages followed, over all entries
	for no := uint64(0); no < pages; no++ {
		if int64(no)*int64(pageSize) >= size || !readPage(page, uint32(no)) {
			return nil // a short page: the reader reports an error and stops
		}
		if typ := page[25]; typ != 2 && typ != 13 {
			continue
		}
		entries := order.Uint16(page[20:])
		if entries%2 != 0 || headerSize+2*int(entries) > len(page) {
			return nil // the reader reports an error and stops
		}
		var values []uint16
		for i := 1; i < int(entries); i += 2 {
			values = append(values, order.Uint16(page[headerSize+2*i:]))
		}
		for _, v := range values {
			if int(v) >= len(page) {
				return rpmdbError("page %d: an index entry at offset %d of a %d-byte page", no, v, pageSize)
			}
			if page[v] != 3 { // HOFFPAGE: the only entries it reads
				continue
			}
			if int(v)+offPageSize > len(page) {
				return rpmdbError("page %d: an off-page entry at offset %d runs past the page", no, v)
			}
			next := order.Uint32(page[int(v)+4:])
			total, seen := 0, map[uint32]bool{}
			var start []byte // the header's first bytes
			for next != 0 {
				if seen[next] {
					return rpmdbError("page %d: an overflow chain that comes back to page %d", no, next)
				}
				seen[next] = true
				if steps++; steps > 2*pages+16 {
					return rpmdbError("overflow chains longer than the database's %d pages", pages)
				}
				if !readPage(chain, next) {
					break // the reader reports an error for this entry and stops
				}
				if chain[25] != 7 {
					return rpmdbError("page %d: an overflow chain meeting page %d, of type %d (the reader loops on it)", no, next, chain[25])
				}
				nextPage, free := order.Uint32(chain[16:]), int(order.Uint16(chain[22:]))
				used := len(chain) - headerSize
				if nextPage == 0 {
					if headerSize+free > len(chain) {
						return rpmdbError("page %d: an overflow page claiming %d bytes of %d", next, free, pageSize)
					}
					used = free
				}
				if len(start) < 8 {
					start = append(start, chain[headerSize:headerSize+min(used, 8-len(start))]...)
				}
				total += used
				if total > maxRPMHeader {
					return rpmdbError("page %d: a header of more than %d bytes", no, maxRPMHeader)
				}
				next = nextPage
			}
			if next == 0 {
				if err := checkRPMHeader(start, int64(total)); err != nil {
					return fmt.Errorf("page %d: %w", no, err)
				}
			}
		}
	}
	return nil
}

// checkNDB walks an NDB database as go-rpmdb's ndb.Open and Read do.
func checkNDB(r io.ReaderAt, size int64, head []byte) error {
	if binary.LittleEndian.Uint32(head[4:]) != 0 {
		return nil // another version: Open refuses it
	}
	slotPages := binary.LittleEndian.Uint32(head[12:])
	if slotPages == 0 || slotPages > 2048 {
		return nil // Open refuses it
	}
	nslots := int64(slotPages)*256 - 2
	if 32+nslots*16 > size {
		return nil // Open cannot read the slots
	}
	var slot, blob [16]byte
	for i := int64(0); i < nslots; i++ {
		if _, err := r.ReadAt(slot[:], 32+i*16); err != nil {
			return nil
		}
		if binary.LittleEndian.Uint32(slot[0:]) != 'S'|'l'<<8|'o'<<16|'t'<<24 {
			return nil // the reader reports an error and stops
		}
		pkg, off := binary.LittleEndian.Uint32(slot[4:]), int64(binary.LittleEndian.Uint32(slot[8:]))*16
		if pkg == 0 {
			continue
		}
		if _, err := r.ReadAt(blob[:], off); err != nil {
			return nil
		}
		if binary.LittleEndian.Uint32(blob[0:]) != 'B'|'l'<<8|'b'<<16|'S'<<24 {
			return nil
		}
		n := int64(binary.LittleEndian.Uint32(blob[12:]))
		if n > size-off-16 || n > maxRPMHeader {
			return rpmdbError("package %d: a blob of %d bytes claimed at offset %d of a %d-byte file", pkg, n, off, size)
		}
		start := make([]byte, min(n, 8))
		r.ReadAt(start, off+16)
		if err := checkRPMHeader(start, n); err != nil {
			return fmt.Errorf("package %d: %w", pkg, err)
		}
	}
	return nil
}

// checkSQLite checks each package header of an rpmdb.sqlite, read as go-rpmdb reads them
// (SELECT blob FROM Packages), read-only. What SQLite cannot read, go-rpmdb cannot either.
func checkSQLite(ctx context.Context, path string) error {
	if path == "" || !slices.Contains(sql.Drivers(), "sqlite") {
		return nil
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&immutable=1")
	if err != nil {
		return nil
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SELECT blob FROM Packages")
	if err != nil {
		return nil
	}
	defer rows.Close()
	for rows.Next() {
		var blob []byte
		if err := rows.Scan(&blob); err != nil {
			return nil
		}
		if err := checkRPMHeader(blob, int64(len(blob))); err != nil {
			return err
		}
	}
	return nil
}
