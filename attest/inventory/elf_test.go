package inventory

import (
	"archive/tar"
	"bytes"
	"compress/zlib"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// probeDep is the module the probe program links, taken from this module's own requirements so
// that the build needs no network (GOPROXY=off: the module cache has it).
const probeDep, probeVersion = "golang.org/x/net", "v0.61.0"

var (
	probeOnce sync.Once
	probe     []byte
	probeErr  error
)

// goProgram builds (once) a small Go program linking golang.org/x/net/html.
func goProgram(t *testing.T) []byte {
	t.Helper()
	b, err := buildProbe()
	if err != nil {
		t.Fatalf("building the probe program: %v", err)
	}
	return b
}

// buildProbe builds the probe program once and returns a copy of it.
func buildProbe() ([]byte, error) {
	probeOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gatehouse-elf-probe-")
		if err != nil {
			probeErr = err
			return
		}
		defer os.RemoveAll(dir)
		sums, _ := os.ReadFile("../../go.sum")
		var keep []string
		for _, l := range strings.Split(string(sums), "\n") {
			if strings.HasPrefix(l, probeDep+" "+probeVersion) {
				keep = append(keep, l)
			}
		}
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/probe\n\ngo 1.22\n\nrequire "+probeDep+" "+probeVersion+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "go.sum"), []byte(strings.Join(keep, "\n")+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nimport (\n\t\"fmt\"\n\t\"strings\"\n\n\t\"golang.org/x/net/html\"\n)\n\nfunc main() {\n\tdoc, err := html.Parse(strings.NewReader(\"<p>hi</p>\"))\n\tfmt.Println(doc != nil, err)\n}\n"), 0o644)
		cmd := exec.Command("go", "build", "-trimpath", "-o", "probe", ".")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOPROXY=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0", "GOWORK=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeErr = &buildError{err, string(out)}
			return
		}
		probe, probeErr = os.ReadFile(filepath.Join(dir, "probe"))
	})
	if probeErr != nil {
		return nil, probeErr
	}
	return append([]byte(nil), probe...), nil
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// ELF64 little-endian header fields.
const (
	eShoff, eShentsize, eShnum, eShstrndx = 0x28, 0x3a, 0x3c, 0x3e
)

// noSectionTable drops the section header table: e_shoff, e_shnum and e_shstrndx zero.
func noSectionTable(b []byte) []byte {
	le := binary.LittleEndian
	le.PutUint64(b[eShoff:], 0)
	le.PutUint16(b[eShnum:], 0)
	le.PutUint16(b[eShstrndx:], 0)
	return b
}

// renamed renames a section by editing the section name table.
func renamed(t *testing.T, b []byte, from, to string) []byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	strtab := f.Sections[binary.LittleEndian.Uint16(b[eShstrndx:])]
	lo, hi := int(strtab.Offset), int(strtab.Offset+strtab.Size)
	old := "\x00" + from + "\x00"
	i := bytes.Index(b[lo:hi], []byte(old))
	if i < 0 || len(to) != len(from) {
		t.Fatalf("no section %s to rename (or a new name of another length)", from)
	}
	copy(b[lo+i+1:], to)
	return b
}

// blob is the offset of the build info blob in the file.
func blob(t *testing.T, b []byte) int {
	t.Helper()
	i := bytes.Index(b, buildInfoMagic)
	if i < 0 {
		t.Fatal("no build info in the probe program")
	}
	return i
}

// goModules lists a program's modules as Go's reader (go version -m) reads them.
func goModules(b []byte) (map[string]string, error) {
	bi, err := buildinfo.Read(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, d := range bi.Deps {
		out[d.Path] = d.Version
	}
	return out, nil
}

// TestBuildInfoAsGoReadsIt: a Go program is kept when Go's own reader lists its modules, whatever
// its section names say; what Go's reader cannot read although the kernel runs it, or headers
// claiming more than the bounds, cannot be judged; other files are not kept.
func TestBuildInfoAsGoReadsIt(t *testing.T) {
	prog := goProgram(t)
	at := blob(t, prog)
	tests := []struct {
		name     string
		data     []byte
		want     bool
		wantErr  string // a part of the error
		goListed bool   // Go's reader lists golang.org/x/net
	}{
		{"a Go program", prog, true, "", true},
		{"no section header table", noSectionTable(goProgram(t)), true, "", true},
		{".go.buildinfo renamed", renamed(t, goProgram(t), ".go.buildinfo", ".go.buildinfX"), true, "", true},
		{"e_shnum zero with the table still there", func() []byte {
			b := goProgram(t)
			binary.LittleEndian.PutUint16(b[eShnum:], 0) // Go's reader refuses the file; the kernel runs it
			return b
		}(), false, "Go's reader cannot read", false},
		{"a version string claiming 2^40 bytes", func() []byte {
			b := goProgram(t)
			binary.PutUvarint(b[at+32:], 1<<40)
			return b
		}(), false, "more than", false},
		{"a version string running past its segment", func() []byte {
			b := goProgram(t)
			binary.PutUvarint(b[at+32:], 3<<20)
			return b
		}(), false, "Go's reader cannot read", false},
		{"a cargo-auditable section by its legacy name", renamed(t, goProgram(t), ".go.buildinfo", ".rust-deps-v0"), true, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mods, _ := goModules(tt.data)
			if got := mods[probeDep] == probeVersion; got != tt.goListed {
				t.Fatalf("Go's reader lists %s %s: %v, want %v (the mutation is not what the case says)", probeDep, probeVersion, got, tt.goListed)
			}
			got, err := hasBuildInfo(bytes.NewReader(tt.data), int64(len(tt.data)))
			if got != tt.want || (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("hasBuildInfo = %v, %v; want %v, an error saying %q", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestBuildInfoOfALargeProgram: a Go program padded to 300 MiB (a sparse file here) is judged
// by reading a few MiB of it, not skipped and not held in memory.
func TestBuildInfoOfALargeProgram(t *testing.T) {
	prog := noSectionTable(goProgram(t))
	p := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(p, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	const size = 300 << 20
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, err := hasBuildInfo(f, size)
	runtime.ReadMemStats(&after)
	if !got || err != nil {
		t.Errorf("hasBuildInfo = %v, %v", got, err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("allocated %d MiB to judge a 300 MiB program", alloc>>20)
	}
}

// TestBuildInfoBounded: crafted headers and files that are not Go programs.
func TestBuildInfoBounded(t *testing.T) {
	extended := elf64(0, 16, "\x00.go.buildinfo\x00", 0)
	binary.LittleEndian.PutUint64(extended[64+32:], 1<<40) // section 0's size: the section count
	native, _ := os.ReadFile("/usr/bin/true")              // a C program, if there is one
	tests := []struct {
		name    string
		data    []byte
		want    bool
		wantErr bool
	}{
		{"an empty section named .go.buildinfo", elf64(2, 16, "\x00.go.buildinfo\x00", 0), false, false},
		{"a small ELF without it", elf64(2, 8, "\x00.text\x00", 0), false, false},
		{"a section named .dep-v0", elf64(2, 16, "\x00.dep-v0\x00", 0), true, false},
		{"zeros", make([]byte, 1<<20), false, false},
		{"a script", []byte("#!/bin/sh\necho hi\n"), false, false},
		{"a name table past the end of the file", elf64(2, 1<<20, "\x00.dep-v0\x00", 4096), false, false},
		{"a name table claiming 32 MiB", elf64(2, 32<<20, "\x00.go.buildinfo\x00", 33<<20), false, true},
		{"2^40 sections", extended, false, true},
		{"a program without build info", native, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			got, err := hasBuildInfo(bytes.NewReader(tt.data), int64(len(tt.data)))
			runtime.ReadMemStats(&after)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("hasBuildInfo = %v, %v; want %v (error %v)", got, err, tt.want, tt.wantErr)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 2<<20 {
				t.Errorf("allocated %d bytes to judge a %d-byte file", alloc, len(tt.data))
			}
		})
	}
}

// elf64 is a little-endian ELF64 header followed by two section headers (the second the section
// name table, at offset 256 and claiming strtabSize bytes) and the table's bytes.
func elf64(shnum uint16, strtabSize uint64, table string, fileSize int) []byte {
	b := make([]byte, max(fileSize, 512))
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint64(b[0x28:], 64) // e_shoff
	le.PutUint16(b[0x3a:], 64) // e_shentsize
	le.PutUint16(b[0x3c:], shnum)
	le.PutUint16(b[0x3e:], 1) // e_shstrndx
	le.PutUint32(b[64:], 1)   // section 0's name: the table's first name
	sh := b[128:]
	le.PutUint32(sh[4:], 3) // SHT_STRTAB
	le.PutUint64(sh[24:], 256)
	le.PutUint64(sh[32:], strtabSize)
	copy(b[256:], table)
	return b
}

// TestGoBinaryExtractorReadsMutatedPrograms: the programs kept are the ones osv-scalibr's
// go/binary extractor lists the modules of (it reads them with debug/buildinfo), through the
// whole extraction.
func TestGoBinaryExtractorReadsMutatedPrograms(t *testing.T) {
	files := map[string][]byte{
		"usr/bin/plain":      goProgram(t),
		"usr/bin/nosections": noSectionTable(goProgram(t)),
		"usr/bin/renamed":    renamed(t, goProgram(t), ".go.buildinfo", ".go.buildinfX"),
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"usr/bin/plain", "usr/bin/nosections", "usr/bin/renamed"} {
		tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(files[name]))})
		tw.Write(files[name])
	}
	tw.Close()
	b := buf.Bytes()
	l := layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
	fp, _ := NewFingerprinter([]byte("a test installation's key"))
	ex, err := Start(context.Background(), 1, fp)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	tree, err := layerfs.Flatten(context.Background(), dir, []layerfs.Layer{l}, layerfs.DefaultLimits, ex.Options())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := ex.Finish(context.Background(), tree)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, p := range inv.Packages {
		if p.Name == probeDep && p.Version == strings.TrimPrefix(probeVersion, "v") || p.Name == probeDep && p.Version == probeVersion {
			found[p.Path] = true
		}
	}
	for name := range files {
		if !found[name] && !found["/"+name] {
			t.Errorf("%s: %s %s not listed (packages %+v, issues %+v, unread %+v)", name, probeDep, probeVersion, inv.Packages, tree.Issues, inv.Unread)
		}
	}
}

// TestGoProgramsOfAnyName: a Go program is read whatever its name and mode (the layer writes
// each file 0644): osv-scalibr's go/binary asks only for executables and *.so names it expects,
// but the kernel runs app.json if it is executable, dlopen loads a library of any name and mode,
// and go version -m lists the modules of each. A non-Go ELF file of such a name is not kept.
func TestGoProgramsOfAnyName(t *testing.T) {
	prog := goProgram(t)
	notGo := append([]byte("\x7fELF"), make([]byte, 60)...)
	names := []string{"opt/app/server.json", "usr/lib/libnet.so.1.0", "srv/data/blob", "usr/share/doc/notes.txt"}
	files := map[string][]byte{"etc/os-release": []byte("ID=debian\nVERSION_ID=\"12\"\n"), "opt/other/not-go.json": notGo}
	for _, n := range names {
		files[n] = prog
	}
	inv, err := extract(t, DefaultLimits, files)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, p := range inv.Packages {
		if p.Name == probeDep && "v"+strings.TrimPrefix(p.Version, "v") == probeVersion {
			found[p.Path] = true
		}
	}
	for _, n := range names {
		if !found[n] {
			t.Errorf("%s: %s %s not listed (listed at %v)", n, probeDep, probeVersion, found)
		}
	}
	for _, u := range inv.Unread {
		t.Errorf("unread %+v", u)
	}
}

// FuzzELFBuildInfo: on any ELF file hasBuildInfo ends without panicking, and never calls a file
// whose modules Go's own reader lists one without build info (an error is allowed: the file is
// then unjudged and the scan incomplete).
func FuzzELFBuildInfo(f *testing.F) {
	if prog, err := buildProbe(); err == nil {
		f.Add(prog)
		f.Add(noSectionTable(append([]byte(nil), prog...)))
	}
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if !bytes.HasPrefix(b, elfMagic) {
			return
		}
		ok, err := hasBuildInfo(bytes.NewReader(b), int64(len(b)))
		if ok || err != nil {
			return
		}
		if bi, rerr := buildinfo.Read(bytes.NewReader(b)); rerr == nil && len(bi.Deps) > 0 {
			t.Fatalf("Go's reader lists %d modules (%s ...) of a file hasBuildInfo says has none", len(bi.Deps), bi.Deps[0].Path)
		}
	})
}

// TestRustProgramsOfAnyName: a cargo-auditable program (its .dep-v0 section, added here with
// objcopy to a system program) is read whatever its name and mode, as a Go program is.
func TestRustProgramsOfAnyName(t *testing.T) {
	objcopy, err := exec.LookPath("objcopy")
	if err != nil {
		t.Fatalf("objcopy (binutils) is needed to make a cargo-auditable program: %v", err)
	}
	dir := t.TempDir()
	var dep bytes.Buffer
	zw := zlib.NewWriter(&dep)
	zw.Write([]byte(`{"packages":[{"name":"smallvec","version":"1.6.0","source":"crates.io","kind":"runtime","dependencies":[],"root":true}]}`))
	zw.Close()
	os.WriteFile(filepath.Join(dir, "dep"), dep.Bytes(), 0o644)
	if out, err := exec.Command(objcopy, "--add-section", ".dep-v0="+filepath.Join(dir, "dep"), "/bin/true", filepath.Join(dir, "prog")).CombinedOutput(); err != nil {
		t.Fatalf("objcopy: %v: %s", err, out)
	}
	prog, err := os.ReadFile(filepath.Join(dir, "prog"))
	if err != nil {
		t.Fatal(err)
	}
	inv, err := extract(t, DefaultLimits, map[string][]byte{"opt/app/server.json": prog, "usr/lib/librs.so.1.0": prog})
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, p := range inv.Packages {
		if p.Name == "smallvec" && p.Version == "1.6.0" {
			found[p.Path] = true
		}
	}
	if !found["opt/app/server.json"] || !found["usr/lib/librs.so.1.0"] {
		t.Errorf("smallvec 1.6.0 listed at %v; want both files (packages %+v, unread %+v)", found, inv.Packages, inv.Unread)
	}
}
