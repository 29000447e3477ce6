package inventory

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Bounds on what elfBuildInfo reads of one file, and so on what Go's reader (debug/elf,
// debug/buildinfo: the go/binary extractor's) is let allocate on a file kept for it. Real
// programs have a dozen program headers, tens of sections, a section name table of a few hundred
// bytes and build info of at most a few hundred KiB; debug/elf allocates whatever the headers
// claim, up to the file's size, and a pushed 1 GiB file can make that 1 GiB.
const (
	maxELFHeaders   = 16 << 20 // bytes of the program header table, and of the section header table
	maxELFSections  = 1 << 16
	maxELFNameTable = 1 << 20
	maxBuildInfo    = 4 << 20 // bytes of the Go version string, and of the module info string
)

// Go's build info, as debug/buildinfo finds it (src/debug/buildinfo/buildinfo.go).
const (
	buildInfoAlign      = 16
	buildInfoHeaderSize = 32
	searchChunkSize     = 1 << 20
)

var buildInfoMagic = []byte("\xff Go buildinf:")

// chunks are debug/buildinfo's 1 MiB search buffers, reused across files.
var chunks = sync.Pool{New: func() any { b := make([]byte, searchChunkSize); return &b }}

// Cargo-auditable's sections: go-rustaudit (the rust/cargoauditable extractor's reader), like
// cargo-audit itself, looks them up by name, so a name is what tells.
var cargoSections = map[string]bool{".dep-v0": true, ".rust-deps-v0": true}

// elfBuildInfo reports whether r (size bytes) is an ELF program whose dependencies a reader can
// list: Go build info found as debug/buildinfo finds it, or a cargo-auditable section.
//
// Go's reader looks for the build info blob ("\xff Go buildinf:", 16-byte aligned) in the section
// named .go.buildinfo if there is one, and otherwise in the first writable, non-executable
// PT_LOAD segment: section names are not needed (a binary without a section header table, or with
// the section renamed, is still read). This reads the headers one at a time, never more than the
// bounds above, and searches the same range in debug/buildinfo's 1 MiB chunks, so a large file
// is judged by streaming, not skipped. When it finds the blob, Go's reader must read it too
// (buildinfo.Read, its allocations bounded by the checks before it): a program the kernel runs
// whose build info Go's reader cannot read — broken section headers, a blob outside the section
// named for it or, without one, in a data segment after the first (where a position-independent
// executable keeps it), a blob Go cannot parse — is an error (the file could not be judged; the
// scan is incomplete), as is a file whose headers or strings claim more than the bounds. A file
// that is not ELF (a Linux container runs no PE or Mach-O program), or has no blob, has none.
func elfBuildInfo(r io.ReaderAt, size int64) (bool, error) {
	f, err := readELF(r, size)
	if f == nil || err != nil {
		return false, err
	}
	if f.cargo {
		return true, nil
	}
	return f.goBuildInfo()
}

// elfFile is what elfBuildInfo reads of an ELF file's headers.
type elfFile struct {
	r        io.ReaderAt
	size     int64
	bo       binary.ByteOrder
	progs    []*io.SectionReader // each program segment's bytes, as debug/elf makes them
	phdrs    []progHeader
	is64     bool
	goSect   *sectionHeader // the first section named .go.buildinfo
	cargo    bool           // a cargo-auditable section
	inflates bool           // a compressed section name table, which debug/elf would inflate whole
}

type progHeader struct {
	typ, flags                uint32
	off, vaddr, filesz, memsz uint64
}

type sectionHeader struct {
	name, typ       uint32
	flags           uint64
	addr, off, size uint64
	link            uint32
}

const (
	ptLoad        = 1
	pfX, pfW      = 1, 2
	shtStrtab     = 3
	shfCompressed = 0x800
)

// readELF reads the headers; nil (and no error) for a file that is not an ELF file the kernel
// could run.
func readELF(r io.ReaderAt, size int64) (*elfFile, error) {
	var id [64]byte
	if n, _ := r.ReadAt(id[:], 0); n < 52 || !bytes.Equal(id[:4], []byte("\x7fELF")) {
		return nil, nil
	}
	f := &elfFile{r: r, size: size}
	switch id[5] {
	case 1:
		f.bo = binary.LittleEndian
	case 2:
		f.bo = binary.BigEndian
	default:
		return nil, nil
	}
	bo := f.bo
	var phoff, shoff uint64
	var phentsize, phnum, shentsize, shnum, shstrndx uint64
	var minPh, minSh uint64
	switch id[4] {
	case 1:
		phoff, shoff = uint64(bo.Uint32(id[0x1c:])), uint64(bo.Uint32(id[0x20:]))
		phentsize, phnum = uint64(bo.Uint16(id[0x2a:])), uint64(bo.Uint16(id[0x2c:]))
		shentsize, shnum, shstrndx = uint64(bo.Uint16(id[0x2e:])), uint64(bo.Uint16(id[0x30:])), uint64(bo.Uint16(id[0x32:]))
		minPh, minSh = 32, 40
	case 2:
		if size < 64 {
			return nil, nil
		}
		f.is64 = true
		phoff, shoff = bo.Uint64(id[0x20:]), bo.Uint64(id[0x28:])
		phentsize, phnum = uint64(bo.Uint16(id[0x36:])), uint64(bo.Uint16(id[0x38:]))
		shentsize, shnum, shstrndx = uint64(bo.Uint16(id[0x3a:])), uint64(bo.Uint16(id[0x3c:])), uint64(bo.Uint16(id[0x3e:]))
		minPh, minSh = 56, 64
	default:
		return nil, nil
	}

	// Program headers: what the kernel maps, and where Go's reader looks without a section.
	if phnum > 0 && phentsize < minPh {
		return nil, nil // the kernel refuses it (ENOEXEC), and debug/elf too
	}
	if phnum*phentsize > maxELFHeaders {
		return nil, fmt.Errorf("an ELF file claiming %d program headers of %d bytes (more than %d bytes are not read)", phnum, phentsize, maxELFHeaders)
	}
	if phoff+phnum*phentsize > uint64(size) || phoff+phnum*phentsize < phoff {
		return nil, nil // the kernel cannot read them either
	}
	ph := bufio.NewReaderSize(io.NewSectionReader(r, int64(phoff), int64(phnum*phentsize)), 16<<10)
	is64 := f.is64
	ent := make([]byte, max(phentsize, shentsize, minSh))
	for range phnum {
		if _, err := io.ReadFull(ph, ent[:phentsize]); err != nil {
			return nil, nil
		}
		var p progHeader
		if is64 {
			p = progHeader{typ: bo.Uint32(ent[0:]), flags: bo.Uint32(ent[4:]), off: bo.Uint64(ent[8:]), vaddr: bo.Uint64(ent[16:]), filesz: bo.Uint64(ent[32:]), memsz: bo.Uint64(ent[40:])}
		} else {
			p = progHeader{typ: bo.Uint32(ent[0:]), off: uint64(bo.Uint32(ent[4:])), vaddr: uint64(bo.Uint32(ent[8:])), filesz: uint64(bo.Uint32(ent[16:])), memsz: uint64(bo.Uint32(ent[20:])), flags: bo.Uint32(ent[24:])}
		}
		f.phdrs = append(f.phdrs, p)
		f.progs = append(f.progs, io.NewSectionReader(r, int64(p.off), int64(p.filesz)))
	}

	// Section headers: only names matter (.go.buildinfo, cargo-auditable's). A table that
	// cannot be read leaves none; Go's reader refuses such a file, which goBuildInfo tells.
	if shoff == 0 || shentsize < minSh || shoff >= uint64(size) {
		return f, nil
	}
	read := func(i uint64) (sectionHeader, bool) {
		off := shoff + i*shentsize
		if off+minSh > uint64(size) || off < shoff {
			return sectionHeader{}, false
		}
		if _, err := r.ReadAt(ent[:minSh], int64(off)); err != nil {
			return sectionHeader{}, false
		}
		return f.section(ent, is64), true
	}
	if shnum == 0 || shstrndx == 0xffff { // 0xff00 sections or more: the counts are in section 0
		s0, ok := read(0)
		if !ok {
			return f, nil
		}
		if shnum == 0 {
			shnum = s0.size
		}
		if shstrndx == 0xffff {
			shstrndx = uint64(s0.link)
		}
	}
	if shnum > maxELFSections || shnum*shentsize > maxELFHeaders {
		return nil, fmt.Errorf("an ELF file claiming %d sections of %d bytes (more than %d sections or %d bytes are not read)", shnum, shentsize, maxELFSections, maxELFHeaders)
	}
	if shstrndx == 0 || shstrndx >= shnum || shoff+shnum*shentsize > uint64(size) {
		return f, nil
	}
	strtab, ok := read(shstrndx)
	if !ok || strtab.typ != shtStrtab {
		return f, nil
	}
	if strtab.size > maxELFNameTable {
		return nil, fmt.Errorf("an ELF file whose section name table claims %d bytes (more than %d are not read)", strtab.size, maxELFNameTable)
	}
	if strtab.off+strtab.size > uint64(size) || strtab.off+strtab.size < strtab.off {
		return f, nil
	}
	if strtab.flags&shfCompressed != 0 {
		// debug/elf inflates it to the size its header claims, which can be any size: the
		// names are not read, and a program with Go build info is not judged (goBuildInfo).
		f.inflates = true
		return f, nil
	}
	table := make([]byte, strtab.size)
	if _, err := r.ReadAt(table, int64(strtab.off)); err != nil {
		return f, nil
	}
	sh := bufio.NewReaderSize(io.NewSectionReader(r, int64(shoff), int64(shnum*shentsize)), 64<<10)
	for range shnum {
		if _, err := io.ReadFull(sh, ent[:shentsize]); err != nil {
			return f, nil
		}
		s := f.section(ent, is64)
		if uint64(s.name) >= uint64(len(table)) {
			continue
		}
		name := table[s.name:]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		switch {
		case string(name) == ".go.buildinfo" && f.goSect == nil:
			f.goSect = &s
		case cargoSections[string(name)]:
			f.cargo = true
		}
	}
	return f, nil
}

func (f *elfFile) section(b []byte, is64 bool) sectionHeader {
	bo := f.bo
	if is64 {
		return sectionHeader{name: bo.Uint32(b[0:]), typ: bo.Uint32(b[4:]), flags: bo.Uint64(b[8:]), addr: bo.Uint64(b[16:]), off: bo.Uint64(b[24:]), size: bo.Uint64(b[32:]), link: bo.Uint32(b[40:])}
	}
	return sectionHeader{name: bo.Uint32(b[0:]), typ: bo.Uint32(b[4:]), flags: uint64(bo.Uint32(b[8:])), addr: uint64(bo.Uint32(b[12:])), off: uint64(bo.Uint32(b[16:])), size: uint64(bo.Uint32(b[20:])), link: bo.Uint32(b[24:])}
}

// dataReader is debug/buildinfo's elfExe.DataReader: the bytes from addr to the end of the first
// program segment holding it.
func (f *elfFile) dataReader(addr uint64) io.ReaderAt {
	for i, p := range f.phdrs {
		if p.vaddr <= addr && addr <= p.vaddr+p.filesz-1 {
			remaining := p.vaddr + p.filesz - addr
			return io.NewSectionReader(f.progs[i], int64(addr-p.vaddr), int64(remaining))
		}
	}
	return nil
}

// dataSegment is where debug/buildinfo looks without a section named .go.buildinfo: the first
// writable, non-executable PT_LOAD segment.
func (f *elfFile) dataSegment() (addr, size uint64) {
	for _, p := range f.phdrs {
		if p.typ == ptLoad && p.flags&(pfX|pfW) == pfW {
			return p.vaddr, p.memsz
		}
	}
	return 0, 0
}

// blobInDataSegments reports whether a writable, non-executable PT_LOAD segment (after the first,
// which Go's reader searched, if skipFirst) holds Go build info. Segments are searched in their
// order, in all no more bytes than the file holds.
func (f *elfFile) blobInDataSegments(skipFirst bool) bool {
	budget := uint64(f.size)
	for _, p := range f.phdrs {
		if p.typ != ptLoad || p.flags&(pfX|pfW) != pfW {
			continue
		}
		if skipFirst {
			skipFirst = false
			continue
		}
		n := min(p.filesz, p.memsz)
		if n > budget {
			return false
		}
		budget -= n
		if _, err := f.search(p.vaddr, n); err == nil {
			return true
		}
	}
	return false
}

// errNotGo is debug/buildinfo's "not a Go executable": no blob where it looks.
var errNotGo = errors.New("no Go build info")

// search is debug/buildinfo's searchMagic: the first aligned magic in [start, start+size), read
// in 1 MiB chunks.
func (f *elfFile) search(start, size uint64) (uint64, error) {
	end := start + size
	if end < start {
		return 0, errNotGo
	}
	start = (start + buildInfoAlign - 1) &^ (buildInfoAlign - 1)
	bp := chunks.Get().(*[]byte)
	defer chunks.Put(bp)
	for start < end {
		remaining := end - start
		buf := (*bp)[:min(uint64(searchChunkSize), remaining)]
		clear(buf)
		r := f.dataReader(start)
		if r == nil {
			return 0, errNotGo
		}
		n, err := r.ReadAt(buf, 0)
		if err != nil && !(n > 0 && err == io.EOF) {
			return 0, errNotGo
		}
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.Index(data, buildInfoMagic)
			if i < 0 {
				break
			}
			if remaining-uint64(i) < buildInfoHeaderSize {
				return 0, errNotGo
			}
			if i%buildInfoAlign != 0 {
				next := (i + buildInfoAlign - 1) &^ (buildInfoAlign - 1)
				if next > len(data) {
					return 0, errNotGo
				}
				data = data[next:]
				continue
			}
			// As debug/buildinfo returns it: i counts from where a misaligned match was
			// skipped, not from start (it then finds no header there).
			return start + uint64(i), nil
		}
		start += uint64(len(buf))
	}
	return 0, errNotGo
}

// goBuildInfo finds Go build info as debug/buildinfo does, checks what it would allocate for
// it, and has Go's reader read it.
func (f *elfFile) goBuildInfo() (bool, error) {
	var at uint64
	var err error
	if s := f.goSect; s != nil {
		size := s.size
		if s.flags&shfCompressed != 0 {
			// Go takes the size from the compression header; look where either says.
			size = max(size, f.chdrSize(s))
		}
		if s.size == 0 && size == 0 {
			err = errNotGo
		} else {
			at, err = f.search(s.addr, size)
		}
		if err != nil {
			// Go's reader looks nowhere else; the kernel maps the data segments regardless.
			if f.blobInDataSegments(false) {
				return false, errors.New("Go build info in a data segment, outside the section named .go.buildinfo, where Go's reader looks (it cannot list this program's modules)")
			}
			return false, nil
		}
	} else {
		addr, size := f.dataSegment()
		if size > 0 {
			at, err = f.search(addr, size)
		}
		if size == 0 || err != nil {
			// A position-independent executable keeps .go.buildinfo in its second writable
			// segment, not the first, where Go's reader looks without a section name.
			if f.blobInDataSegments(true) {
				return false, errors.New("Go build info in a data segment where Go's reader, without a section named .go.buildinfo, does not look (it cannot list this program's modules)")
			}
			return false, nil
		}
	}
	if f.inflates {
		return false, errors.New("Go build info in an ELF file whose section name table is compressed: Go's reader would inflate it whole, and it is not read")
	}
	if err := f.checkStrings(at); err != nil {
		return false, err
	}
	if _, err := buildinfo.Read(f.r); err != nil {
		return false, fmt.Errorf("Go build info (%q at %#x) that Go's reader cannot read (it cannot list this program's modules): %v", buildInfoMagic, at, err)
	}
	return true, nil
}

// chdrSize is a compressed section's size as its compression header gives it.
func (f *elfFile) chdrSize(s *sectionHeader) uint64 {
	var b [24]byte
	if _, err := f.r.ReadAt(b[:], int64(s.off)); err != nil {
		return 0
	}
	if f.is64 {
		return f.bo.Uint64(b[8:]) // Chdr64: type, reserved, size, align
	}
	return uint64(f.bo.Uint32(b[4:])) // Chdr32: type, size, align
}

// checkStrings bounds the version and module strings of the blob at addr as debug/buildinfo
// would read them: inline, each a varint length and its bytes (Go 1.18 and later), or through
// two pointers to Go strings (before).
func (f *elfFile) checkStrings(addr uint64) error {
	read := func(at uint64, n int) []byte {
		r := f.dataReader(at)
		if r == nil {
			return nil
		}
		b := make([]byte, n)
		k, _ := r.ReadAt(b, 0)
		return b[:k]
	}
	header := read(addr, buildInfoHeaderSize)
	if len(header) < buildInfoHeaderSize {
		return nil // Go's reader finds nothing; buildinfo.Read says so
	}
	tooLong := func(what string, n uint64) error {
		return fmt.Errorf("Go build info whose %s claims %d bytes (more than %d are not read)", what, n, maxBuildInfo)
	}
	flags := header[15]
	if flags&2 != 0 { // inline strings
		at := addr + buildInfoHeaderSize
		for _, what := range []string{"version string", "module info"} {
			n, k := binary.Uvarint(read(at, binary.MaxVarintLen64))
			if k <= 0 {
				return nil
			}
			if n > maxBuildInfo {
				return tooLong(what, n)
			}
			at += uint64(k) + n
		}
		return nil
	}
	ptrSize := int(header[14])
	if ptrSize != 4 && ptrSize != 8 {
		return nil
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if flags&1 != 0 {
		bo = binary.BigEndian
	}
	ptr := func(b []byte) uint64 {
		if ptrSize == 4 {
			return uint64(bo.Uint32(b))
		}
		return bo.Uint64(b)
	}
	for i, what := range []string{"version string", "module info"} {
		hdr := read(ptr(header[16+i*ptrSize:]), 2*ptrSize)
		if len(hdr) < 2*ptrSize {
			continue
		}
		if n := ptr(hdr[ptrSize:]); n > maxBuildInfo {
			return tooLong(what, n)
		}
	}
	return nil
}
