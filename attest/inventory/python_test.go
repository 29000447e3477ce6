package inventory

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// The expectations are what Python 3.11's importlib.metadata (distribution(name).version) and
// pip 23.2's pip list report for the same files (integration/scan_evasion_pkg_test.go runs them).
func TestReadPyMetadata(t *testing.T) {
	long := strings.Repeat("x", 70000)
	tests := []struct {
		name, file, dir string
		wantNames       []string
		wantVersion     string
		wantErr         string
	}{
		{"plain", "Metadata-Version: 2.1\nName: requests\nVersion: 2.19.1\n\nbody\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"a 70 KB Summary line", "Metadata-Version: 2.1\nName: requests\nSummary: " + long + "\nVersion: 2.19.1\n\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"Version on a folded line", "Metadata-Version: 2.1\nName: requests\nVersion:\n 2.19.1\n\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"Version folded with a tab", "Name: requests\nVersion:\n\t2.19.1\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"a line of spaces continues a header", "Name: requests\nSummary: a\n   \nVersion: 2.19.1\n\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"CR line ends", "Metadata-Version: 2.1\rName: requests\rVersion: 2.19.1\r\rbody\r", "requests", []string{"requests"}, "2.19.1", ""},
		{"CR LF line ends", "Metadata-Version: 2.1\r\nName: requests\r\nVersion: 2.19.1\r\n\r\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"lower-case header names", "name: requests\nversion: 2.19.1\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"no space after the colon", "Name:requests\nVersion:2.19.1\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"the first Version counts", "Name: requests\nVersion: 2.19.1\nVersion: 2.31.0\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"a Version in the body does not count", "Name: requests\nVersion: 2.19.1\n\nVersion: 2.31.0\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"a From line first is the envelope", "From nobody\nName: requests\nVersion: 2.19.1\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"a continuation before any header is dropped", " Version: 9\nName: requests\nVersion: 2.19.1\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"a header with no name is dropped, with its continuation", "Name: requests\n: x\n Version: 9\nVersion: 2.19.1\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"whitespace around the version", "Name: requests\nVersion: \x1c2.19.1 \n", "requests", []string{"requests"}, "2.19.1", ""},
		{"no Name header: the directory's name", "Version: 2.19.1\n", "requests", []string{"requests"}, "2.19.1", ""},
		{"a Name the directory does not give", "Name: requests\nVersion: 9.9\n", "other", []string{"requests", "other"}, "9.9", ""},
		{"a Name spelt otherwise is the same project", "Name: Foo.Bar\nVersion: 1.0\n", "foo_bar", []string{"Foo.Bar"}, "1.0", ""},
		{"a BOM: Python reads no header", "\ufeffName: requests\nVersion: 2.19.1\n", "requests", nil, "", "no Version header"},
		{"a space before the colon ends the headers", "Name: requests\nVersion : 2.19.1\n", "requests", nil, "", "no Version header"},
		{"no Version", "Name: requests\n\nVersion: 2.19.1\n", "requests", nil, "", "no Version header"},
		{"an empty Version", "Name: requests\nVersion:\n", "requests", nil, "", "no Version header"},
		{"a version pip cannot read", "Name: requests\nVersion: 2.19.1 final\n", "requests", nil, "", "not a PEP 440"},
		{"a folded version that breaks inside", "Name: requests\nVersion: 2.\n 19.1\n", "requests", nil, "", "not a PEP 440"},
		{"not UTF-8", "Name: requests\nVersion: 2.19.1\n\nbody \xff\n", "requests", nil, "", "not UTF-8"},
		{"not UTF-8 at the end", "Name: requests\nVersion: 2.19.1\n\xe2\x82", "requests", nil, "", "not UTF-8"},
		{"no name at all", "Version: 1.0\n", "", nil, "", "no Name header"},
		{"a Version longer than the bound", "Name: requests\nVersion: " + strings.Repeat("1", pypiMaxHeader+1) + "\n", "requests", nil, "", "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := readPyMetadata(strings.NewReader(tt.file), pypiMaxMetadata)
			var names []string
			var version string
			if err == nil {
				names, version, err = pyPackages(m, tt.dir)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v %q, %v; want an error with %q", names, version, err, tt.wantErr)
				}
				return
			}
			if err != nil || version != tt.wantVersion || strings.Join(names, ",") != strings.Join(tt.wantNames, ",") {
				t.Fatalf("got %v %q, %v; want %v %q", names, version, err, tt.wantNames, tt.wantVersion)
			}
		})
	}
}

func TestReadPyMetadataBounded(t *testing.T) {
	file := "Name: x\nVersion: 1.0\n\n" + strings.Repeat("y", 1<<20)
	if _, err := readPyMetadata(strings.NewReader(file), 1<<20); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a file over the bound: %v", err)
	}
}

func TestPyDedent(t *testing.T) {
	tests := []struct{ in, want string }{
		{"        \n 1.0", "\n1.0"},
		{"        a\n  b\n    c", "      a\nb\n  c"},
		{"        a\n\tb", "        a\n\tb"},
		{"        a\n \t \n  b", "      a\n\nb"},
	}
	for _, tt := range tests {
		if got := pyDedent(tt.in); got != tt.want {
			t.Errorf("pyDedent(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPyDistName(t *testing.T) {
	for in, want := range map[string]string{
		"requests-2.19.1.dist-info": "requests", "foo_bar-1.0.dist-info": "foo_bar", "PyYAML-6.0.egg-info": "PyYAML",
		"foo.egg-info": "foo", "foo-1.0-py3.11.egg": "foo", "foo-1.0-py3.11.egg-info": "foo",
	} {
		if got := pyDistName(in); got != want {
			t.Errorf("pyDistName(%q) = %q, want %q", in, got, want)
		}
	}
	if pep503("Foo.Bar__baz") != "foo-bar-baz" {
		t.Errorf("pep503: %q", pep503("Foo.Bar__baz"))
	}
}

func zipOf(t testing.TB, files map[string]string) []byte {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for name, body := range files {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(body))
	}
	zw.Close()
	return buf.Bytes()
}

// zipGot is one metadata member pyZipMetadata reported: its names, version and error.
type zipGot struct{ member, names, version, err string }

// readPyZip lists what pyZipMetadata reports of the archive b named archive.
func readPyZip(b []byte, archive string) ([]zipGot, error) {
	var out []zipGot
	err := pyZipMetadata(bytes.NewReader(b), int64(len(b)), archive, func(member string, names []string, version string, err error) {
		g := zipGot{member: member, names: strings.Join(names, ","), version: version}
		if err != nil {
			g.err = err.Error()
		}
		out = append(out, g)
	})
	return out, err
}

func TestPyZipMetadata(t *testing.T) {
	type got = zipGot
	read := readPyZip
	wheel := zipOf(t, map[string]string{"requests/__init__.py": "", "requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion:\n 2.19.1\n"})
	if g, err := read(wheel, "requests-2.19.1-py2.py3-none-any.whl"); err != nil || len(g) != 1 || g[0] != (got{"requests-2.19.1.dist-info/METADATA", "requests", "2.19.1", ""}) {
		t.Errorf("wheel: %+v, %v", g, err)
	}
	egg := zipOf(t, map[string]string{"EGG-INFO/PKG-INFO": "Metadata-Version: 1.1\nSummary: " + strings.Repeat("s", 70000) + "\nVersion: 2.19.1\n"})
	if g, err := read(egg, "requests-2.19.1-py3.11.egg"); err != nil || len(g) != 1 || g[0] != (got{"EGG-INFO/PKG-INFO", "requests", "2.19.1", ""}) {
		t.Errorf("egg: %+v, %v", g, err)
	}
	bad := zipOf(t, map[string]string{"x-1.0.dist-info/METADATA": "Name: x\n"})
	if g, err := read(bad, "x.whl"); err != nil || len(g) != 1 || !strings.Contains(g[0].err, "no Version") {
		t.Errorf("a wheel without a version: %+v, %v", g, err)
	}
	many := map[string]string{}
	for i := range pypiMaxZipEntries + 1 {
		many[strings.Repeat("d", i%7)+string(rune('a'+i%26))+strings.Repeat("x", i/26%5)+"/"+itoa(i)] = ""
	}
	if _, err := read(zipOf(t, many), "many.whl"); err == nil || !strings.Contains(err.Error(), "entries") {
		t.Errorf("an archive past the entry bound: %v", err)
	}
	if _, err := read([]byte("not a zip at all"), "x.egg"); err == nil {
		t.Error("a file that is no zip was read")
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// readPyMetadata never panics, stays within its bound, and gives values with no surrounding
// whitespace; a value read is one a header line of the file holds.
func FuzzReadPyMetadata(f *testing.F) {
	for _, s := range []string{
		"Name: requests\nVersion: 2.19.1\n", "Name: a\nVersion:\n 1.0\n", "From x\n: y\n z\nVersion: 1\n", "\ufeffVersion: 1\n",
		"Name: a\r\nVersion: 1\r\r\n", "Version: 1\n  \n\t\nName: b\n\nbody\xff", " x\nVersion:    \n   \n 1.0\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readPyMetadata(bytes.NewReader(b), 1<<16)
		if err != nil {
			return
		}
		for _, v := range []string{m.name, m.version} {
			if strings.TrimFunc(v, pySpace) != v {
				t.Fatalf("value %q keeps surrounding whitespace, from %q", v, b)
			}
		}
		if m.hasVersion && m.version != "" && !bytes.Contains(bytes.ToLower(b), []byte("version")) {
			t.Fatalf("a version %q from a file without a Version header: %q", m.version, b)
		}
	})
}

// The central directory check and the archive reader never panic on any bytes.
func FuzzPyZipMetadata(f *testing.F) {
	f.Add(zipOf(f, map[string]string{"a-1.dist-info/METADATA": "Name: a\nVersion: 1\n"}))
	f.Add(zipOf(f, map[string]string{"EGG-INFO/PKG-INFO": "Version: 1\n"}))
	f.Add([]byte("PK\x05\x06" + strings.Repeat("\xff", 18)))
	f.Fuzz(func(t *testing.T, b []byte) {
		pyZipMetadata(bytes.NewReader(b), int64(len(b)), "x.egg", func(string, []string, string, error) {})
	})
}

// TestPyZipAnyName: a zip archive on sys.path is read by its bytes, whatever its name, as
// importlib.metadata (FastPath's zip root: its top-level children) and pip read it.
func TestPyZipAnyName(t *testing.T) {
	type got = zipGot
	read := readPyZip
	meta := "Metadata-Version: 2.1\nName: requests\nVersion: 2.19.1\n"
	deps := zipOf(t, map[string]string{"requests/__init__.py": "", "requests-2.19.1.dist-info/METADATA": meta})
	want := got{"requests-2.19.1.dist-info/METADATA", "requests", "2.19.1", ""}
	tests := []struct {
		name    string
		zip     []byte
		archive string
		want    []got
	}{
		{"deps.zip", deps, "deps.zip", []got{want}},
		{"deps.dat", deps, "deps.dat", []got{want}},
		{"app.pyz", deps, "app.pyz", []got{want}},
		{"a shell script before the archive", append([]byte("#!/bin/sh\nexec python3 \"$0\" \"$@\"\n"), deps...), "app", []got{want}},
		{"binary data before the archive", append(bytes.Repeat([]byte{0, 0xff}, 5000), deps...), "blob", []got{want}},
		{"PKG-INFO in a dist-info", zipOf(t, map[string]string{"requests-2.19.1.dist-info/PKG-INFO": meta}), "deps.zip",
			[]got{{"requests-2.19.1.dist-info/PKG-INFO", "requests", "2.19.1", ""}}},
		{"PKG-INFO when METADATA is empty", zipOf(t, map[string]string{"requests.dist-info/METADATA": "", "requests.dist-info/PKG-INFO": meta}), "deps.zip",
			[]got{{"requests.dist-info/PKG-INFO", "requests", "2.19.1", ""}}},
		{"a DIST-INFO in capitals", zipOf(t, map[string]string{"Requests-2.19.1.DIST-INFO/METADATA": meta}), "deps.zip",
			[]got{{"Requests-2.19.1.DIST-INFO/METADATA", "requests", "2.19.1", ""}}},
		{"an egg-info", zipOf(t, map[string]string{"requests.egg-info/PKG-INFO": meta}), "deps.zip",
			[]got{{"requests.egg-info/PKG-INFO", "requests", "2.19.1", ""}}},
		// pip's pkg_resources takes a dist-info's version from its name
		{"a dist-info's name", zipOf(t, map[string]string{"requests-2.19.1.dist-info/METADATA": strings.Replace(meta, "2.19.1", "2.31.0", 1)}), "deps.zip",
			[]got{{"requests-2.19.1.dist-info/METADATA", "requests", "2.31.0", ""}, {"requests-2.19.1.dist-info/", "requests", "2.19.1", ""}}},
		{"a dist-info without metadata", zipOf(t, map[string]string{"requests-2.19.1.dist-info/RECORD": ""}), "deps.zip",
			[]got{{"requests-2.19.1.dist-info/", "requests", "2.19.1", ""}}},
		// neither importlib nor pip looks below the root, nor takes EGG-INFO but in an .egg
		{"a dist-info below the root", zipOf(t, map[string]string{"lib/requests-2.19.1.dist-info/METADATA": meta}), "deps.zip", nil},
		{"EGG-INFO in a .zip", zipOf(t, map[string]string{"EGG-INFO/PKG-INFO": meta}), "deps.zip", nil},
		{"a jar", zipOf(t, map[string]string{"META-INF/MANIFEST.MF": "Manifest-Version: 1.0\n", "a/B.class": "x"}), "app.jar", nil},
		{"no zip", []byte(strings.Repeat("not a zip ", 100)), "deps.zip", nil},
	}
	for _, tt := range tests {
		g, err := read(tt.zip, tt.archive)
		if err != nil || fmt.Sprint(g) != fmt.Sprint(tt.want) {
			t.Errorf("%s: %+v, %v; want %+v", tt.name, g, err, tt.want)
		}
		keep := tt.want != nil || tt.name == "EGG-INFO in a .zip" // kept whatever its name: the check does not know it
		if ok, err := pyImportableZip(bytes.NewReader(tt.zip), int64(len(tt.zip))); err != nil || ok != keep {
			t.Errorf("%s: pyImportableZip %v, %v", tt.name, ok, err)
		}
	}
	// a member name cut at a NUL, as zipfile cuts it
	nul := zipOf(t, map[string]string{"requests-2.19.1.dist-info/METADATA\x00.txt": meta})
	if g, err := read(nul, "deps.zip"); err != nil || len(g) != 1 || g[0].version != "2.19.1" {
		t.Errorf("a name with a NUL: %+v, %v", g, err)
	}
}

// TestPyZipLarge: an archive of any name is streamed to find its metadata, so a large jar with
// none is nothing (no error); one with metadata past the bound of what is read is an error.
func TestPyZipLarge(t *testing.T) {
	many := map[string]string{}
	for i := range pypiMaxZipEntries + 1 {
		many["com/x/"+itoa(i)+".class"] = ""
	}
	jar := zipOf(t, many)
	if err := pyZipMetadata(bytes.NewReader(jar), int64(len(jar)), "big.jar", func(string, []string, string, error) { t.Error("a member read") }); err != nil {
		t.Errorf("a large jar without metadata: %v", err)
	}
	many["requests-2.19.1.dist-info/METADATA"] = "Name: requests\nVersion: 2.19.1\n"
	withMeta := zipOf(t, many)
	if err := pyZipMetadata(bytes.NewReader(withMeta), int64(len(withMeta)), "big.zip", func(string, []string, string, error) {}); err == nil || !strings.Contains(err.Error(), "entries") {
		t.Errorf("a large archive with metadata: %v", err)
	}
	if ok, err := pyImportableZip(bytes.NewReader(withMeta), int64(len(withMeta))); !ok || err != nil {
		t.Errorf("pyImportableZip of a large archive with metadata: %v, %v", ok, err)
	}
}

// TestSniffZip: a file that begins as a zip is judged by its bytes; one that ends as a zip (a
// zip may follow any data) is found by its tail; ELF files are judged by their build info, which
// includes a zip after the program.
func TestSniffZip(t *testing.T) {
	deps := zipOf(t, map[string]string{"requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion: 2.19.1\n"})
	if sniff(deps[:layerfs.SniffLen]) == nil {
		t.Error("a zip archive is not judged")
	}
	if sniff(bytes.Repeat([]byte("#"), layerfs.SniffLen)) != nil {
		t.Error("a file of other first bytes is judged (it is the tail's to find)")
	}
	if !zipEndOfFile(append(bytes.Repeat([]byte("#"), 1000), deps...)) || zipEndOfFile(bytes.Repeat([]byte("#"), 1000)) {
		t.Error("the tail of a zip after other data, or of a file that is none, misread")
	}
	elf := append(append([]byte("\x7fELF"), make([]byte, 60)...), deps...)
	if ok, err := hasBuildInfo(bytes.NewReader(elf), int64(len(elf))); !ok || err != nil {
		t.Errorf("a program with a zip of metadata after it: %v, %v", ok, err)
	}
}

// TestPyZipKept: the scan's keep and sniff put a zip archive with metadata at its root into the
// tree by its bytes, whatever its name and mode (an executable .pyz is asked about by the binary
// extractors' check), and leave other files out.
func TestPyZipKept(t *testing.T) {
	if err := loadPlugins(); err != nil {
		t.Fatal(err)
	}
	deps := string(zipOf(t, map[string]string{"requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion: 2.19.1\n"}))
	files := []struct {
		name, body string
		mode       int64
	}{
		{"usr/lib/python3.11/site-packages/deps.pth", "/opt/deps.zip\n", 0o644},
		{"opt/deps.zip", deps, 0o644},
		{"opt/deps.dat", deps, 0o644},
		{"usr/local/bin/app", "#!/usr/bin/env python3\n" + deps, 0o755},
		{"opt/blob", strings.Repeat("\x00\xff", 300) + deps, 0o600},
		{"opt/notes.txt", strings.Repeat("not a zip\n", 100), 0o644},
		{"opt/lib.zip", string(zipOf(t, map[string]string{"lib/requests-2.19.1.dist-info/METADATA": "Name: requests\nVersion: 2.19.1\n"})), 0o644},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: f.mode, Size: int64(len(f.body))})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	b := buf.Bytes()
	layer := layerfs.Layer{Digest: digest.FromBytes(b), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
	dir := t.TempDir()
	tree, err := layerfs.Flatten(context.Background(), dir, []layerfs.Layer{layer}, layerfs.DefaultLimits, layerfs.Options{Keep: keep, Sniff: sniff, Tail: zipEndOfFile, TailCheck: pyImportableZip})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		_, err := os.Stat(filepath.Join(dir, f.name))
		want := strings.HasPrefix(f.name, "opt/deps") || f.name == "usr/local/bin/app" || f.name == "opt/blob"
		if (err == nil) != want {
			t.Errorf("%s: in the tree %v, want %v", f.name, err == nil, want)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	inv := &Inventory{}
	if err := readMetadata(context.Background(), root, tree, inv, nil); err != nil {
		t.Fatal(err)
	}
	got := linesOf(inv, "")
	want := []string{"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 opt/blob", "PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 opt/deps.dat",
		"PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 opt/deps.zip", "PyPI requests 2.19.1  pkg:pypi/requests@2.19.1 usr/local/bin/app"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(inv.Unread) > 0 {
		t.Errorf("packages:\n%s\nwant:\n%s\nunread %+v", strings.Join(got, "\n"), strings.Join(want, "\n"), inv.Unread)
	}
}
