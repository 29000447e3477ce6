// Package tartest writes the tar entries that archive/tar's writer refuses to write (old GNU sparse
// files, PAX GNU.sparse records, unknown types), for the tests that check how hostile layers are
// read: layerfs's, the scanner's, and the differential test against containerd.
package tartest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"runtime/debug"
)

// RawHeader is a hand-made 512-byte tar header; gnu selects the old GNU magic, and edit adds
// fields before the checksum is computed.
func RawHeader(name string, typ byte, size int64, gnu bool, edit func(b []byte)) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:], "0000644\x00")
	copy(b[108:], "0000000\x00")
	copy(b[116:], "0000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x00", size))
	copy(b[136:], fmt.Sprintf("%011o\x00", 0))
	b[156] = typ
	if gnu {
		copy(b[257:], "ustar  \x00")
	} else {
		copy(b[257:], "ustar\x0000")
	}
	if edit != nil {
		edit(b)
	}
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// Pad fills a body to whole 512-byte blocks.
func Pad(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }

// OldGNUSparse is a type 'S' entry (header and body): data at offset 0 of a file of realsize bytes.
func OldGNUSparse(name, data string, realsize int64) []byte {
	h := RawHeader(name, 'S', int64(len(data)), true, func(b []byte) {
		copy(b[386:], fmt.Sprintf("%011o\x00", 0))
		copy(b[398:], fmt.Sprintf("%011o\x00", len(data)))
		copy(b[483:], fmt.Sprintf("%011o\x00", realsize))
	})
	return append(h, Pad([]byte(data))...)
}

// PaxSparse is a PAX GNU sparse 1.0 entry (extended header, header and body) named name: data at
// offset 0 of a file of realsize bytes.
func PaxSparse(name, data string, realsize int64) []byte {
	var recs []byte
	for _, kv := range [][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"}, {"GNU.sparse.name", name}, {"GNU.sparse.realsize", fmt.Sprint(realsize)}} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 1
		for len(fmt.Sprint(n))+len(rec) != n {
			n++
		}
		recs = append(recs, fmt.Sprintf("%d%s", n, rec)...)
	}
	x := append(RawHeader("PaxHeaders/sparse", 'x', int64(len(recs)), false, nil), Pad(recs)...)
	body := append(Pad([]byte(fmt.Sprintf("1\n0\n%d\n", len(data)))), data...)
	f := append(RawHeader("GNUSparseFile.0/sparse", '0', int64(len(body)), false, nil), Pad(body)...)
	return append(x, f...)
}

// RaceOn says whether the race detector is on (memory tests scale down under it: it slows byte
// loops tenfold and adds shadow memory).
func RaceOn() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// ZeroFile is a gzipped layer holding one file of size zero bytes (a 1 GiB one is about 1 MiB).
func ZeroFile(name string, size int64, mode int64) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: size})
	zero := make([]byte, 1<<20)
	for left := size; left > 0; left -= int64(len(zero)) {
		tw.Write(zero[:min(int64(len(zero)), left)])
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}
