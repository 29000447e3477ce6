// Package inventorytest writes the hostile files that the extractors' bounds are tested with:
// a package database that makes osv-scalibr's RPM reader panic, and Java archive bombs. The
// inventory's, the scanner's and the integration tests share them.
package inventorytest

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, which go-rpmdb reads with too
)

// PanickingRPMHeader is an RPM header blob that go-rpmdb (headerImport, pkg/entry.go) accepts
// and then slices peList[1:ril] with ril = 0: one index entry, the immutable-region tag with a
// non-zero offset, and a region trailer of zeros (so ril = 0), which hdrblobVerifyRegion lets
// through because 0 is within [0, il].
func PanickingRPMHeader() []byte {
	const (
		il = 1
		dl = 32
	)
	var b bytes.Buffer
	binary.Write(&b, binary.BigEndian, int32(il))
	binary.Write(&b, binary.BigEndian, int32(dl))
	// entryInfo{Tag, Type, Offset, Count}, stored big-endian: RPMTAG_HEADERIMMUTABLE (63),
	// RPM_BIN_TYPE (7), the trailer 16 bytes into the data, REGION_TAG_COUNT (16)
	for _, v := range []int32{63, 7, 16, 16} {
		binary.Write(&b, binary.BigEndian, v)
	}
	b.Write(make([]byte, dl)) // the data, its trailer at 16..32 all zeros
	return b.Bytes()
}

// PanickingRPMDB is an rpmdb.sqlite (RPM 4.16+'s database: a Packages table of header blobs)
// holding PanickingRPMHeader. It is written in dir.
func PanickingRPMDB(dir string) ([]byte, error) {
	p := filepath.Join(dir, "rpmdb.sqlite")
	db, err := sql.Open("sqlite", p)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	for _, q := range []string{
		"CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)",
		"INSERT INTO Packages (blob) VALUES (?)",
	} {
		args := []any{}
		if q[0] == 'I' {
			args = append(args, PanickingRPMHeader())
		}
		if _, err := db.Exec(q, args...); err != nil {
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	if err := db.Close(); err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// Zeros reads n zero bytes.
func Zeros(n int64) io.Reader { return io.LimitReader(zeroReader{}, n) }

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// Entry is one file of an archive: its body is read from Body (deflated), or it is a nested
// archive of Entries.
type Entry struct {
	Name    string
	Body    io.Reader
	Entries []Entry
}

// Jar writes a zip archive of the entries, nesting archives as deflated entries; a body is
// streamed, so an entry of 1 GiB of zeros costs its 1 MB deflated, not 1 GiB.
func Jar(entries ...Entry) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		w, err := zw.Create(e.Name)
		if err != nil {
			panic(err)
		}
		if e.Entries != nil {
			w.Write(Jar(e.Entries...))
			continue
		}
		if e.Body != nil {
			if _, err := io.Copy(w, e.Body); err != nil {
				panic(err)
			}
		}
	}
	zw.Close()
	return buf.Bytes()
}

// Newlines reads n newlines: a pom.properties of 1 GiB of them took osv-scalibr 96 s.
func Newlines(n int64) io.Reader { return io.LimitReader(newlineReader{}, n) }

type newlineReader struct{}

func (newlineReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '\n'
	}
	return len(p), nil
}

// BDBPage is one page of a Berkeley DB hash database as go-rpmdb reads it: a hash page (type
// 13) of index entries, or an overflow page (type 7) of data.
type BDBPage struct {
	Type      byte
	Entries   []uint16 // a hash page's index: key, value, key, value, ...
	OffPages  map[uint16]uint32
	Next      uint32 // an overflow page's next page
	Free      uint16 // an overflow page's bytes used, on the last page of a chain
	Data      []byte
	PageBytes []byte // written as is when set
}

// BDB writes a Berkeley DB hash database of 512-byte pages: the metadata page, then pages.
// OffPages places an off-page (HOFFPAGE) entry at an offset of a hash page, naming the first
// page of its overflow chain.
func BDB(pages ...BDBPage) []byte {
	const size = 512
	out := make([]byte, size*(len(pages)+1))
	le := binary.LittleEndian
	le.PutUint32(out[12:], 0x00061561)
	le.PutUint32(out[20:], size)
	out[25] = 8
	le.PutUint32(out[32:], uint32(len(pages)))
	for i, p := range pages {
		b := out[size*(i+1) : size*(i+2)]
		if p.PageBytes != nil {
			copy(b, p.PageBytes)
			continue
		}
		le.PutUint32(b[8:], uint32(i+1))
		b[25] = p.Type
		switch p.Type {
		case 13, 2:
			le.PutUint16(b[20:], uint16(len(p.Entries)))
			for j, e := range p.Entries {
				le.PutUint16(b[26+2*j:], e)
			}
			for off, page := range p.OffPages {
				b[off] = 3
				le.PutUint32(b[int(off)+4:], page)
			}
		case 7:
			le.PutUint32(b[16:], p.Next)
			le.PutUint16(b[22:], p.Free)
			copy(b[26:], p.Data)
		}
	}
	return out
}

// NDB writes an NDB database (rpm's Packages.db) of one slot page whose first slot names a
// package whose blob header claims blobLen bytes.
func NDB(blobLen uint32) []byte {
	le := binary.LittleEndian
	out := make([]byte, 32+4096+64)
	le.PutUint32(out[0:], 'R'|'p'<<8|'m'<<16|'P'<<24)
	le.PutUint32(out[12:], 1) // slot pages
	for i := range 256 - 2 {
		le.PutUint32(out[32+16*i:], 'S'|'l'<<8|'o'<<16|'t'<<24)
	}
	blob := 32 + 4096
	le.PutUint32(out[32+4:], 1)               // package index
	le.PutUint32(out[32+8:], uint32(blob/16)) // block offset, in 16-byte blocks
	le.PutUint32(out[blob:], 'B'|'l'<<8|'b'<<16|'S'<<24)
	le.PutUint32(out[blob+4:], 1)
	le.PutUint32(out[blob+12:], blobLen)
	return out
}

// ManyFiles is a gzipped tar layer of n files of body, a thousand to a directory (an adversarial
// round's layer: 500,000 of them in 7 MB), and one more file at extraName ("": none).
func ManyFiles(n int, body []byte, extraName string, extra []byte) []byte {
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(gz)
	for d := range n/1000 + 1 {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%d/", d), Typeflag: tar.TypeDir, Mode: 0o755})
	}
	for i := range n {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d%d/f%d.dat", i/1000, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	if extraName != "" {
		tw.WriteHeader(&tar.Header{Name: extraName, Typeflag: tar.TypeReg, Mode: 0o600, Size: int64(len(extra))})
		tw.Write(extra)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}
