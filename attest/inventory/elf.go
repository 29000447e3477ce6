package inventory

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// Bounds on what elfHasSection reads of one file. Real programs have tens of sections and a
// section name table of a few hundred bytes; debug/elf would allocate whatever the headers
// claim (up to the file's size), which a pushed 1 GiB file can make 1 GiB.
const (
	maxELFSections  = 1 << 16
	maxELFNameTable = 1 << 20
)

// elfHasSection reports whether r (size bytes) is an ELF file with a section of one of the names.
// It reads the ELF header, the section headers one at a time and the section name table, never
// more than those bounds: a file that is not ELF, or whose headers point outside it, has none;
// one whose headers claim more than the bounds is an error (it cannot be judged cheaply).
func elfHasSection(r io.ReaderAt, size int64, names ...string) (bool, error) {
	var id [64]byte
	if n, _ := r.ReadAt(id[:], 0); n < 52 || !bytes.Equal(id[:4], []byte("\x7fELF")) {
		return false, nil
	}
	var bo binary.ByteOrder
	switch id[5] {
	case 1:
		bo = binary.LittleEndian
	case 2:
		bo = binary.BigEndian
	default:
		return false, nil
	}
	var shoff uint64
	var shentsize, shnum, shstrndx uint64
	var minEnt uint64
	switch id[4] {
	case 1: // 32-bit
		shoff = uint64(bo.Uint32(id[0x20:]))
		shentsize, shnum, shstrndx = uint64(bo.Uint16(id[0x2e:])), uint64(bo.Uint16(id[0x30:])), uint64(bo.Uint16(id[0x32:]))
		minEnt = 40
	case 2: // 64-bit
		if size < 64 {
			return false, nil
		}
		shoff = bo.Uint64(id[0x28:])
		shentsize, shnum, shstrndx = uint64(bo.Uint16(id[0x3a:])), uint64(bo.Uint16(id[0x3c:])), uint64(bo.Uint16(id[0x3e:]))
		minEnt = 64
	default:
		return false, nil
	}
	if shoff == 0 || shentsize < minEnt || shoff >= uint64(size) {
		return false, nil
	}
	type section struct {
		name, typ, link uint32
		off, size       uint64
	}
	read := func(i uint64) (section, bool) {
		var b [64]byte
		off := shoff + i*shentsize
		if off+minEnt > uint64(size) {
			return section{}, false
		}
		if _, err := r.ReadAt(b[:minEnt], int64(off)); err != nil {
			return section{}, false
		}
		if minEnt == 40 {
			return section{name: bo.Uint32(b[0:]), typ: bo.Uint32(b[4:]), off: uint64(bo.Uint32(b[16:])), size: uint64(bo.Uint32(b[20:])), link: bo.Uint32(b[24:])}, true
		}
		return section{name: bo.Uint32(b[0:]), typ: bo.Uint32(b[4:]), off: bo.Uint64(b[24:]), size: bo.Uint64(b[32:]), link: bo.Uint32(b[40:])}, true
	}
	// With 0xff00 sections or more the counts are in section 0.
	if shnum == 0 || shstrndx == 0xffff {
		s0, ok := read(0)
		if !ok {
			return false, nil
		}
		if shnum == 0 {
			shnum = s0.size
		}
		if shstrndx == 0xffff {
			shstrndx = uint64(s0.link)
		}
	}
	if shnum > maxELFSections {
		return false, fmt.Errorf("an ELF file claiming %d sections (more than %d are not read)", shnum, maxELFSections)
	}
	if shstrndx == 0 || shstrndx >= shnum {
		return false, nil
	}
	strtab, ok := read(shstrndx)
	if !ok || strtab.typ != 3 { // SHT_STRTAB
		return false, nil
	}
	if strtab.size > maxELFNameTable {
		return false, fmt.Errorf("an ELF file whose section name table claims %d bytes (more than %d are not read)", strtab.size, maxELFNameTable)
	}
	if strtab.off+strtab.size > uint64(size) || strtab.off+strtab.size < strtab.off {
		return false, nil
	}
	table := make([]byte, strtab.size)
	if _, err := r.ReadAt(table, int64(strtab.off)); err != nil {
		return false, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	if shoff+shnum*shentsize > uint64(size) {
		return false, nil
	}
	headers := bufio.NewReaderSize(io.NewSectionReader(r, int64(shoff), int64(shnum*shentsize)), 64<<10)
	ent := make([]byte, shentsize)
	for range shnum {
		if _, err := io.ReadFull(headers, ent); err != nil {
			return false, nil
		}
		at := uint64(bo.Uint32(ent[0:]))
		if at >= uint64(len(table)) {
			continue
		}
		name := table[at:]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		if want[string(name)] {
			return true, nil
		}
	}
	return false, nil
}
