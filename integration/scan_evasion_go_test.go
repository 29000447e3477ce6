//go:build integration

package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
)

// Issue 9, class 2, Go: programs altered so that a scanner reading them its own way would not
// find their modules, which Go's own reader (go version -m: debug/buildinfo) still lists. Each
// case writes an image's files, checks with the real toolchain that go version -m lists
// golang.org/x/net v0.30.0, and pulls the image through an enforcing Gatehouse: 403 DENIED
// naming the advisory, the module and the file, or, for a file over scan.max_file_size, the
// scan's incompleteness naming the file.

// netAdvisory is golang.org/x/net < 0.33.0 (GHSA-w32m-9786-jp63, GO-2024-3333:
// attest/vulndb/testdata/osv). It is of medium severity, which the default policy admits: the
// Gatehouse here runs a site's policy, the default plus a rule refusing any vulnerability that
// has a fix (sitePolicy).
const netAdvisory = "CVE-2024-45338"

// goEvasion is an evasion whose image holds a Go program.
type goEvasion struct {
	evasion
	small bool                                  // pulled through the Gatehouse whose scan.max_file_size is 8 MiB
	layer func(t *testing.T, dir string) string // the layer of dir, if not treeTar's
}

// sitePolicy writes the default policy and a rule refusing every vulnerability with a fix.
func sitePolicy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	def, err := os.ReadFile("../policies/default/gatehouse.rego")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "gatehouse.rego"), def)
	writeFile(t, filepath.Join(dir, "site.rego"), []byte(`package gatehouse

import rego.v1

deny contains reason("SITE-FIXABLE", vuln_message(v), v) if {
	some v in input.vulnerabilities
	v.fixed != ""
}
`))
	return dir
}

func TestScanEvasionGo(t *testing.T) {
	crane := tool(t, "crane")
	up := startUpstream(t, "")
	policy := "    policy: " + sitePolicy(t)
	gh := startGatehouse(t, proxyConfig(up.addr, policy)+enforcing)
	small := startGatehouse(t, proxyConfig(up.addr, policy)+enforcing+"scan: {max_file_size: 8MiB}\n")
	gateDB(t, gh)
	gateDB(t, small)

	progs := goPrograms(t)
	for i, c := range goEvasions(progs) {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.build(t, dir)
			c.check(t, dir)
			if strings.Contains(c.name, ",") {
				t.Fatal("crane append -f takes a comma-separated list: no comma in a case's name (its temporary directory)")
			}
			layer := treeTar
			if c.layer != nil {
				layer = c.layer
			}
			repo := fmt.Sprintf("library/goevasion%d", i)
			digest := pushLayer(t, crane, up.addr+"/"+repo+":v1", layer(t, dir))
			srv := gh
			if c.small {
				srv = small
			}
			msg, rules := pullRefused(t, srv, repo, digest, c.want, c.unread)
			t.Logf("refused (%s): %.300s", rules, msg)
		})
	}
	gh.healthy(t)
	small.healthy(t)
}

// goEvasions are the cases, each a program of progs altered and put at a path in the image.
func goEvasions(progs map[string][]byte) []goEvasion {
	const bin = "usr/local/bin/server"
	// at writes the program (altered by edits) at p, executable
	at := func(p, prog string, edits ...func(t *testing.T, b []byte) []byte) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			b := append([]byte(nil), progs[prog]...)
			for _, e := range edits {
				b = e(t, b)
			}
			writeExe(t, filepath.Join(dir, p), b)
		}
	}
	advisory := func(p string) []string { return []string{netAdvisory, "golang.org/x/net 0.30.0", "at " + p} }
	denied := func(name, prog string, edits ...func(t *testing.T, b []byte) []byte) goEvasion {
		return goEvasion{evasion: evasion{name: "Go: " + name, build: at(bin, prog, edits...), check: goLists(bin), want: advisory(bin)}}
	}
	return []goEvasion{
		denied("the program as built", "exe"),
		denied("no section header table (e_shoff e_shnum and e_shstrndx 0)", "exe", noSections),
		denied(".go.buildinfo renamed .go.xuildinfo", "exe", rename(".go.buildinfo", ".go.xuildinfo")),
		{
			// files from 256 MiB to scan.max_file_size were once skipped without a word
			evasion: evasion{name: "Go: padded with zeros to 300 MiB", build: func(t *testing.T, dir string) {
				at(bin, "exe")(t, dir)
				if err := os.Truncate(filepath.Join(dir, bin), 300<<20); err != nil { // sparse here; zeros in the layer
					t.Fatal(err)
				}
			}, check: goLists(bin), want: advisory(bin)},
			layer: gzipTree,
		},
		{
			evasion: evasion{name: "Go: padded to 16 MiB over a scan.max_file_size of 8 MiB", build: func(t *testing.T, dir string) {
				at(bin, "exe", func(t *testing.T, b []byte) []byte { return append(b, make([]byte, 16<<20-len(b))...) })(t, dir)
			}, check: goLists(bin), want: []string{"could not read everything", bin, "over the 8388608-byte limit"}, unread: true},
			small: true,
		},
		// more of the same kind
		denied("stripped (-ldflags=-s -w)", "stripped"),
		denied("stripped and without a section header table", "stripped", noSections),
		denied("a position-independent executable (-buildmode=pie)", "pie"),
		denied("a position-independent executable with .go.buildinfo of type SHT_NOBITS at offset 0", "pie", noBits),
		denied("linux/s390x (big-endian ELF64) without a section header table", "s390x", noSections),
		denied("linux/386 (ELF32) with .go.buildinfo renamed", "386", rename(".go.buildinfo", ".go.xuildinfo")),
		denied("no section name table (e_shstrndx 0)", "exe", noNameTable),
		denied(".go.buildinfo of type SHT_NOBITS at file offset 0 (Go reads it by address)", "exe", noBits),
		denied("built with a replace of x/net v0.33.0 by v0.30.0", "replaced"),
		{evasion: evasion{name: "Go: reached through a symlink in usr/local/bin", build: func(t *testing.T, dir string) {
			at("opt/app/bin/server", "exe", noSections)(t, dir)
			os.MkdirAll(filepath.Join(dir, "usr/local/bin"), 0o755)
			if err := os.Symlink("../../../opt/app/bin/server", filepath.Join(dir, bin)); err != nil {
				t.Fatal(err)
			}
		}, check: goLists(bin), want: advisory("opt/app/bin/server")}},
		{
			// Go's reader cannot list its modules (it searches the first writable segment, the
			// PIE's relocated read-only data), yet the kernel runs it: the scan cannot judge it
			evasion: evasion{name: "Go: a position-independent executable without a section header table",
				build: at(bin, "pie", noSections), check: goCannotList(bin),
				want: []string{"could not read everything", bin, "could not be judged", "Go build info"}, unread: true},
		},
		// osv-scalibr's go/binary extractor asks only for what filesystem.IsInterestingExecutable
		// calls executable: never a name ending in .json, .txt, .yaml, .tar, .go and the like
		// (unlikelyExecutableExtensions), whatever its mode; the kernel runs it all the same
		{evasion: evasion{name: "Go: an executable named server.json", build: at("app/server.json", "exe"), check: goLists("app/server.json"), want: advisory("app/server.json")}},
		// and a library only by a name ending in .so or .so.<digits>, or an executable mode;
		// dlopen loads a library of mode 0644 whatever its name
		{evasion: evasion{name: "Go: a shared library libnet.so.1.0 (-buildmode=c-shared) of mode 0644", build: func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "usr/lib/libnet.so.1.0"), progs["c-shared"])
		}, check: goLists("usr/lib/libnet.so.1.0"), want: advisory("usr/lib/libnet.so.1.0")}},
	}
}

// goPrograms builds the program of buildGoBinary (golang.org/x/net v0.30.0) in the ways the
// cases start from.
func goPrograms(t *testing.T) map[string][]byte {
	t.Helper()
	progs := map[string][]byte{"exe": buildGoBinary(t)}
	dir := t.TempDir()
	main := "package main\n\nimport (\n\t\"fmt\"\n\t\"strings\"\n\n\t\"golang.org/x/net/html\"\n)\n\nfunc main() {\n\tdoc, err := html.Parse(strings.NewReader(\"<p>hi</p>\"))\n\tfmt.Println(doc != nil, err)\n}\n"
	writeFile(t, filepath.Join(dir, "main.go"), []byte(main))
	writeFile(t, filepath.Join(dir, "lib/main.go"), []byte(strings.Replace(main, "import (", "import \"C\"\n\nimport (", 1)+"\n//export Parse\nfunc Parse() { main() }\n"))
	writeFile(t, filepath.Join(dir, "go.mod"), []byte("module example.com/server\n\ngo 1.22\n"))
	env := []string{"GOFLAGS=-mod=mod", "CGO_ENABLED=0", "GOWORK=off"}
	runDir(t, dir, env, "go", "get", "golang.org/x/net@v0.30.0")
	var wg sync.WaitGroup
	var mu sync.Mutex
	build := func(name string, env []string, args ...string) {
		out := filepath.Join(t.TempDir(), name)
		runDir(t, dir, env, "go", append(append([]string{"build", "-o", out}, args...), ".")...)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		progs[name] = b
		mu.Unlock()
	}
	for _, b := range []struct {
		name string
		env  []string
		args []string
	}{
		{"stripped", env, []string{"-ldflags=-s -w"}},
		{"pie", env, []string{"-buildmode=pie"}},
		{"s390x", append(env, "GOARCH=s390x"), nil},
		{"386", append(env, "GOARCH=386"), nil},
	} {
		wg.Add(1)
		go func() { defer wg.Done(); build(b.name, b.env, b.args...) }()
	}
	wg.Wait()
	// the c-shared library needs cgo
	out := filepath.Join(t.TempDir(), "libnet.so")
	runDir(t, filepath.Join(dir, "lib"), []string{"GOFLAGS=-mod=mod", "CGO_ENABLED=1", "GOWORK=off"}, "go", "build", "-buildmode=c-shared", "-o", out, ".")
	progs["c-shared"], _ = os.ReadFile(out)
	// a module requiring the fixed x/net and replacing it by the vulnerable one
	rep := t.TempDir()
	writeFile(t, filepath.Join(rep, "main.go"), []byte(main))
	gomod, _ := os.ReadFile(filepath.Join(dir, "go.mod"))
	gosum, _ := os.ReadFile(filepath.Join(dir, "go.sum"))
	writeFile(t, filepath.Join(rep, "go.mod"), []byte(strings.Replace(string(gomod), "golang.org/x/net v0.30.0", "golang.org/x/net v0.33.0", 1)+"\nreplace golang.org/x/net v0.33.0 => golang.org/x/net v0.30.0\n"))
	writeFile(t, filepath.Join(rep, "go.sum"), gosum)
	out = filepath.Join(t.TempDir(), "replaced")
	runDir(t, rep, env, "go", "build", "-o", out, ".")
	progs["replaced"], _ = os.ReadFile(out)
	return progs
}

// goLists checks that go version -m lists golang.org/x/net v0.30.0 in the file at p, as the
// module built (the replacement, if it was replaced).
func goLists(p string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		out := run(t, nil, "go", "version", "-m", "-json", filepath.Join(dir, p))
		var bi debug.BuildInfo
		if err := json.Unmarshal([]byte(out), &bi); err != nil {
			t.Fatalf("go version -m -json %s: %v\n%s", p, err, out)
		}
		for _, d := range bi.Deps {
			m := d
			if d.Replace != nil {
				m = d.Replace
			}
			if m.Path == "golang.org/x/net" && m.Version == "v0.30.0" {
				line := "dep " + d.Path + " " + d.Version
				if d.Replace != nil {
					line += " => " + m.Path + " " + m.Version
				}
				t.Logf("go version -m %s: %s (%s)", p, line, bi.GoVersion)
				return
			}
		}
		t.Fatalf("go version -m does not list golang.org/x/net v0.30.0 in %s:\n%s", p, out)
	}
}

// goCannotList checks that the program at p runs and that go version -m cannot read it.
func goCannotList(p string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		file := filepath.Join(dir, p)
		if out := run(t, nil, file); out != "true <nil>\n" {
			t.Fatalf("%s printed %q", p, out)
		}
		if err := tryRun(nil, "go", "version", "-m", file); err == nil {
			t.Fatalf("go version -m reads %s", p)
		}
		t.Logf("%s runs; go version -m cannot read it", p)
	}
}

func writeExe(t *testing.T, p string, b []byte) {
	t.Helper()
	writeFile(t, p, b)
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

// elfHeader is where an ELF file's header keeps e_shoff, e_shnum and e_shstrndx, and the byte
// order it writes them in.
func elfHeader(b []byte) (bo binary.ByteOrder, is64 bool, shoff, shnum, shstrndx int) {
	bo = binary.ByteOrder(binary.LittleEndian)
	if b[elf.EI_DATA] == byte(elf.ELFDATA2MSB) {
		bo = binary.BigEndian
	}
	if b[elf.EI_CLASS] == byte(elf.ELFCLASS64) {
		return bo, true, 0x28, 0x3c, 0x3e
	}
	return bo, false, 0x20, 0x30, 0x32
}

// noSections drops the section header table: e_shoff, e_shnum and e_shstrndx 0. The kernel
// needs only the program headers.
func noSections(t *testing.T, b []byte) []byte {
	bo, is64, shoff, shnum, shstrndx := elfHeader(b)
	if is64 {
		bo.PutUint64(b[shoff:], 0)
	} else {
		bo.PutUint32(b[shoff:], 0)
	}
	bo.PutUint16(b[shnum:], 0)
	bo.PutUint16(b[shstrndx:], 0)
	if f, err := elf.NewFile(bytes.NewReader(b)); err != nil || len(f.Sections) != 0 {
		t.Fatalf("the section header table is still read (%v)", err)
	}
	return b
}

// noNameTable leaves the section headers and drops e_shstrndx: the sections have no names.
func noNameTable(t *testing.T, b []byte) []byte {
	bo, _, _, _, shstrndx := elfHeader(b)
	bo.PutUint16(b[shstrndx:], 0)
	if _, ok := section(t, b, ".go.buildinfo"); ok {
		t.Fatal("the sections still have names")
	}
	return b
}

// rename renames a section in the section name table (a name of the same length).
func rename(from, to string) func(t *testing.T, b []byte) []byte {
	return func(t *testing.T, b []byte) []byte {
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		_, _, _, _, shstrndx := elfHeader(b)
		strtab := f.Sections[f.ByteOrder.Uint16(b[shstrndx:])]
		lo, hi := int(strtab.Offset), int(strtab.Offset+strtab.Size)
		i := bytes.Index(b[lo:hi], []byte("\x00"+from+"\x00"))
		if i < 0 || len(to) != len(from) {
			t.Fatalf("no section %s to rename (or a new name of another length)", from)
		}
		copy(b[lo+i+1:], to)
		if _, ok := section(t, b, from); ok {
			t.Fatalf("%s still named", from)
		}
		return b
	}
}

// noBits makes .go.buildinfo a section of type SHT_NOBITS at file offset 0: its address and
// size stay, and the data segment still holds its bytes.
func noBits(t *testing.T, b []byte) []byte {
	i, ok := section(t, b, ".go.buildinfo")
	if !ok {
		t.Fatal("no .go.buildinfo")
	}
	bo, is64, shoff, _, _ := elfHeader(b)
	if !is64 {
		t.Fatal("noBits edits ELF64 section headers")
	}
	h := int(bo.Uint64(b[shoff:])) + i*int(bo.Uint16(b[0x3a:]))
	bo.PutUint32(b[h+4:], uint32(elf.SHT_NOBITS))
	bo.PutUint64(b[h+24:], 0)
	f, _ := elf.NewFile(bytes.NewReader(b))
	if s := f.Section(".go.buildinfo"); s == nil || s.Type != elf.SHT_NOBITS || s.Offset != 0 {
		t.Fatalf("the section is %+v", s)
	}
	return b
}

// section is the index of the first section of that name.
func section(t *testing.T, b []byte, name string) (int, bool) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range f.Sections {
		if s.Name == name {
			return i, true
		}
	}
	return 0, false
}

// gzipTree is treeTar's layer of a directory of regular files and directories, gzipped as it is
// written: a large file full of zeros takes little disk and no memory.
func gzipTree(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "layer.tar.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || path == dir {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		h.Name = filepath.ToSlash(rel)
		if info.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil || !info.Mode().IsRegular() {
			return err
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}
