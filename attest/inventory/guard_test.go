package inventory

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/osv-scalibr/extractor"
	"github.com/google/osv-scalibr/extractor/filesystem"
	javaarchive "github.com/google/osv-scalibr/extractor/filesystem/language/java/archive"
	scalibrfs "github.com/google/osv-scalibr/fs"
	scalibrinv "github.com/google/osv-scalibr/inventory"
	"github.com/google/osv-scalibr/plugin"
	"github.com/google/osv-scalibr/purl"

	cpb "github.com/google/osv-scalibr/binary/proto/config_go_proto"

	"github.com/gatehouse-dev/gatehouse/attest/inventory/inventorytest"
	"github.com/gatehouse-dev/gatehouse/attest/layerfs"
)

// extract flattens one layer of files and lists its inventory with the real extractors.
func extract(t *testing.T, lim Limits, files map[string][]byte) (*Inventory, error) {
	t.Helper()
	return extractWith(t, files, WithLimits(lim))
}

// extractWith is extract with any options.
func extractWith(t *testing.T, files map[string][]byte, opts ...Option) (*Inventory, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	os.Mkdir(dir, 0o755)
	fp, err := NewFingerprinter([]byte("a test installation's key"))
	if err != nil {
		t.Fatal(err)
	}
	ex, err := Start(context.Background(), 1, fp, opts...)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := layerfs.Flatten(context.Background(), dir, []layerfs.Layer{tarLayer(t, files)}, layerfs.DefaultLimits, ex.Options())
	if err != nil {
		t.Fatal(err)
	}
	return ex.Finish(context.Background(), tree)
}

// TestCraftedRPMDBFailsTheScan: the rpmdb.sqlite that made go-rpmdb panic (slice bounds out of
// range [1:0]) and took the process down fails the extraction instead, naming the extractor and
// the file; the next extraction of it does the same.
func TestCraftedRPMDBFailsTheScan(t *testing.T) {
	db, err := inventorytest.PanickingRPMDB(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"var/lib/rpm/rpmdb.sqlite": db, "etc/os-release": []byte("ID=fedora\nVERSION_ID=40\n")}
	for range 2 {
		_, err := extract(t, DefaultLimits, files)
		var pe *PanicError
		if !errors.As(err, &pe) {
			t.Fatalf("err %v; want a *PanicError", err)
		}
		if pe.Extractor != "os/rpm" || pe.Path != "var/lib/rpm/rpmdb.sqlite" || !strings.Contains(err.Error(), "slice bounds out of range") ||
			!strings.Contains(pe.PanicStack(), "headerImport") {
			t.Fatalf("got %q (extractor %q, path %q); want os/rpm's panic on var/lib/rpm/rpmdb.sqlite with its stack", err, pe.Extractor, pe.Path)
		}
	}
}

// fake is an extractor of files named "*.fake" that does what the file says: panic, fail,
// list packages, or wait for the context.
type fake struct{}

func (fake) Name() string                       { return "test/fake" }
func (fake) Version() int                       { return 0 }
func (fake) Requirements() *plugin.Capabilities { return &plugin.Capabilities{} }
func (fake) FileRequired(api filesystem.FileAPI) bool {
	if strings.HasSuffix(api.Path(), "required-panic.fake") {
		panic("FileRequired panicked")
	}
	return strings.HasSuffix(api.Path(), ".fake")
}

func (fake) Extract(ctx context.Context, in *filesystem.ScanInput) (scalibrinv.Inventory, error) {
	b, _ := io.ReadAll(in.Reader)
	switch cmd := strings.TrimSpace(string(b)); {
	case cmd == "panic":
		var m map[string]int
		m["x"]++ // a nil map write: a runtime error, as a parser's would be
	case cmd == "fail":
		return scalibrinv.Inventory{}, errors.New("cannot parse this")
	case cmd == "wait":
		<-ctx.Done()
		return scalibrinv.Inventory{}, ctx.Err()
	case strings.HasPrefix(cmd, "packages"):
		var inv scalibrinv.Inventory
		for i := range strings.Count(cmd, "p") - 1 {
			inv.Packages = append(inv.Packages, &extractor.Package{Name: strings.Repeat("x", i+1), Version: "1", PURLType: purl.TypeGolang,
				Location: extractor.LocationFromPath(in.Path)})
		}
		return inv, nil
	}
	return scalibrinv.Inventory{}, nil
}

// runFake runs the fake extractor, guarded, over a directory of files.
func runFake(t *testing.T, ctx context.Context, lim Limits, files map[string]string) (*guard, []Unread, int, error) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := &guard{lim: lim, cancel: cancel}
	res, err := g.run(ctx, root.FS().(scalibrfs.FS), []filesystem.Extractor{fake{}})
	if err != nil {
		return g, nil, 0, err
	}
	return g, append(unreadOf(res.PluginStatus), g.unreadOf()...), len(res.Inventory.Packages), nil
}

func TestGuardedExtractor(t *testing.T) {
	t.Run("a panic in Extract fails the scan naming the extractor and the file", func(t *testing.T) {
		_, _, _, err := runFake(t, context.Background(), DefaultLimits, map[string]string{"a/ok.fake": "packages p", "b/bad.fake": "panic"})
		var pe *PanicError
		if !errors.As(err, &pe) || pe.Extractor != "test/fake" || pe.Path != "b/bad.fake" || !strings.Contains(pe.Error(), "nil map") {
			t.Fatalf("err %v; want test/fake's panic on b/bad.fake", err)
		}
		if want := "the extractor test/fake panicked on b/bad.fake: assignment to entry in nil map"; pe.Error() != want {
			t.Errorf("message %q; want %q", pe.Error(), want)
		}
	})
	t.Run("a panic in FileRequired fails the scan too", func(t *testing.T) {
		_, _, _, err := runFake(t, context.Background(), DefaultLimits, map[string]string{"c/required-panic.fake": ""})
		var pe *PanicError
		if !errors.As(err, &pe) || pe.Path != "c/required-panic.fake" {
			t.Fatalf("err %v; want test/fake's panic on c/required-panic.fake", err)
		}
	})
	t.Run("keep's copy raises a FileRequired panic again, as a *PanicError", func(t *testing.T) {
		defer func() {
			pe, ok := recover().(*PanicError)
			if !ok || pe.Extractor != "test/fake" || pe.Path != "x/required-panic.fake" {
				t.Fatalf("recovered %v; want a *PanicError naming test/fake and the file", pe)
			}
		}()
		guarded{Extractor: fake{}}.FileRequired(fileAPI{path: "x/required-panic.fake"})
	})
	t.Run("an error on a file is Unread, though scalibr calls the scan a partial success", func(t *testing.T) {
		_, unread, n, err := runFake(t, context.Background(), DefaultLimits, map[string]string{"a/ok.fake": "packages pp", "b/bad.fake": "fail"})
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 || len(unread) != 1 || unread[0].Path != "b/bad.fake" || unread[0].Extractor != "test/fake" || unread[0].Reason != "cannot parse this" {
			t.Fatalf("%d packages, unread %+v; want 2 and b/bad.fake unread", n, unread)
		}
	})
	t.Run("packages past the image's bound are Unread", func(t *testing.T) {
		lim := DefaultLimits
		lim.MaxPackages = 5
		_, unread, n, err := runFake(t, context.Background(), lim, map[string]string{"a.fake": "packages ppp", "b.fake": "packages ppp", "c.fake": "packages ppp"})
		if err != nil {
			t.Fatal(err)
		}
		if n != 5 || len(unread) != 1 || !strings.Contains(unread[0].Reason, "more than the 5 packages a scan keeps") {
			t.Fatalf("%d packages, unread %+v; want 5 and one Unread saying 4 are not listed", n, unread)
		}
	})
	t.Run("a file over the metadata bound is Unread, not parsed", func(t *testing.T) {
		lim := DefaultLimits
		lim.MaxMetadataFile = 10
		_, unread, n, err := runFake(t, context.Background(), lim, map[string]string{"big.fake": "packages pp" + strings.Repeat(" ", 10)})
		if err != nil {
			t.Fatal(err)
		}
		if n != 0 || len(unread) != 1 || unread[0].Path != "big.fake" || !strings.Contains(unread[0].Reason, "scan.max_metadata_file") {
			t.Fatalf("%d packages, unread %+v; want big.fake unread", n, unread)
		}
	})
	t.Run("a deadline stops the walk and fails the scan", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		files := map[string]string{"a/wait.fake": "wait"}
		for i := range 50 {
			files[filepath.Join("b", strings.Repeat("n", i+1)+".fake")] = "wait"
		}
		start := time.Now()
		_, _, _, err := runFake(t, ctx, DefaultLimits, files)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
			t.Fatalf("err %v after %s; want the deadline, at once", err, time.Since(start))
		}
	})
}

func TestUnreadOfStatuses(t *testing.T) {
	got := unreadOf([]*plugin.Status{
		{Name: "ok", Status: &plugin.ScanStatus{Status: plugin.ScanStatusSucceeded}},
		{Name: "partial", Status: &plugin.ScanStatus{Status: plugin.ScanStatusPartiallySucceeded, FileErrors: []*plugin.FileError{{FilePath: "b", ErrorMessage: "bad b"}, {FilePath: "a", ErrorMessage: "bad a"}}}},
		{Name: "failed", Status: &plugin.ScanStatus{Status: plugin.ScanStatusFailed, FailureReason: "it broke"}},
		{Name: "nil"},
	})
	want := []Unread{{Extractor: "failed", Reason: "it broke"}, {Path: "a", Extractor: "partial", Reason: "bad a"}, {Path: "b", Extractor: "partial", Reason: "bad b"}}
	if len(got) != len(want) {
		t.Fatalf("got %+v; want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] got %+v; want %+v", i, got[i], want[i])
		}
	}
	many := make([]Unread, 1500)
	if c := capUnread(many); len(c) != maxUnread || !strings.Contains(c[len(c)-1].Reason, "and 501 more") {
		t.Errorf("capped to %d, last %+v", len(c), c[len(c)-1])
	}
}

// TestJavaArchiveBounds: osv-scalibr's java/archive extractor reads nested archives whole and
// parses pom.properties with no bound; javaArchive refuses, naming what, before it reads any.
func TestJavaArchiveBounds(t *testing.T) {
	zeros := func(n int64) io.Reader { return inventorytest.Zeros(n) }
	lim := DefaultLimits
	lim.MaxNestedArchive = 1 << 20
	pom := []byte("groupId=org.example\nartifactId=lib\nversion=1.2.3\n")
	lib := inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/org.example/lib/pom.properties", Body: bytes.NewReader(pom)})
	deep := inventorytest.Entry{Name: "lib/0.jar", Body: bytes.NewReader(lib)}
	for i := range maxArchiveDepth {
		deep = inventorytest.Entry{Name: "lib/" + string(rune('a'+i)) + ".jar", Entries: []inventorytest.Entry{deep}}
	}
	tests := []struct {
		name   string
		jar    []byte
		reason string // "" : read
	}{
		{"a fat jar's library", inventorytest.Jar(inventorytest.Entry{Name: "BOOT-INF/lib/lib-1.2.3.jar", Body: bytes.NewReader(lib)}), ""},
		{"a nested jar of zeros over the bound", inventorytest.Jar(inventorytest.Entry{Name: "lib/bomb.jar", Body: zeros(64 << 20)}),
			"lib/bomb.jar: a nested archive of 67108864 bytes, over the 1048576-byte limit"},
		{"a bomb one level deeper", inventorytest.Jar(inventorytest.Entry{Name: "lib/mid.jar", Entries: []inventorytest.Entry{{Name: "lib/bomb.jar", Body: zeros(64 << 20)}}}),
			"lib/mid.jar!/lib/bomb.jar: a nested archive of 67108864 bytes"},
		{"nested archives over the total", inventorytest.Jar(func() []inventorytest.Entry {
			var es []inventorytest.Entry
			noise := make([]byte, 900<<10) // incompressible: each nested jar is some 900 KiB
			rand.New(rand.NewSource(1)).Read(noise)
			for i := range archiveReadFactor + 1 { // each within the bound, not in all
				es = append(es, inventorytest.Entry{Name: "lib/" + strings.Repeat("z", i+1) + ".jar", Entries: []inventorytest.Entry{{Name: "noise", Body: bytes.NewReader(noise)}}})
			}
			return es
		}()...), "nested archives of more than 4194304 bytes in all"},
		{"a pom.properties of newlines", inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/x/y/pom.properties", Body: inventorytest.Newlines(maxArchiveMetadata + 1)}),
			"META-INF/maven/x/y/pom.properties of 16777217 bytes"},
		{"archives nested too deep", inventorytest.Jar(deep), "nested more than 8 deep"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			inv, err := extract(t, lim, map[string][]byte{"app/app.jar": tt.jar})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d-byte jar: %d packages, unread %+v, in %s", len(tt.jar), len(inv.Packages), inv.Unread, time.Since(start).Round(time.Millisecond))
			if tt.reason == "" {
				if len(inv.Unread) != 0 || len(inv.Packages) != 1 || inv.Packages[0].Name != "org.example:lib" || inv.Packages[0].Version != "1.2.3" || inv.Packages[0].Path != "app/app.jar" {
					t.Fatalf("unread %+v, packages %+v; want org.example:lib 1.2.3 at app/app.jar", inv.Unread, inv.Packages)
				}
				return
			}
			if len(inv.Unread) != 1 || inv.Unread[0].Path != "app/app.jar" || inv.Unread[0].Extractor != "java/archive" || !strings.Contains(inv.Unread[0].Reason, tt.reason) {
				t.Fatalf("unread %+v; want app/app.jar unread by java/archive: %q", inv.Unread, tt.reason)
			}
		})
	}
}

// TestJavaArchiveDirectoryBound: an archive whose central directory is over the bound (its
// entries would be held in memory, some 250 bytes each) is Unread.
func TestJavaArchiveDirectoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 20 MiB zip directory")
	}
	var es []inventorytest.Entry
	name := strings.Repeat("n", 150)
	for i := range maxArchiveDirectory/(46+150) + 2000 {
		es = append(es, inventorytest.Entry{Name: name + strconv.Itoa(i)})
	}
	jar := inventorytest.Jar(es...)
	inv, err := extract(t, DefaultLimits, map[string][]byte{"app/huge.jar": jar})
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Unread) != 1 || !strings.Contains(inv.Unread[0].Reason, "a central directory of more than") {
		t.Fatalf("unread %+v; want the directory refused", inv.Unread)
	}
}

// TestJavaArchiveAsTheExtractor: javaArchive, which opens nested archives itself, lists what
// osv-scalibr's java/archive lists when it recurses on its own (within the bounds).
func TestJavaArchiveAsTheExtractor(t *testing.T) {
	props := func(g, a, v string) io.Reader {
		return strings.NewReader("groupId=" + g + "\nartifactId=" + a + "\nversion=" + v + "\n")
	}
	jar := inventorytest.Jar(
		inventorytest.Entry{Name: "META-INF/maven/com.acme/app/pom.properties", Body: props("com.acme", "app", "1.0")},
		inventorytest.Entry{Name: "BOOT-INF/lib/jackson-databind-2.9.8.jar", Entries: []inventorytest.Entry{
			{Name: "META-INF/maven/com.fasterxml.jackson.core/jackson-databind/pom.properties", Body: props("com.fasterxml.jackson.core", "jackson-databind", "2.9.8")}}},
		inventorytest.Entry{Name: "BOOT-INF/lib/commons-text-1.9.jar", Entries: []inventorytest.Entry{{Name: "x.class", Body: strings.NewReader("x")}}},
		inventorytest.Entry{Name: "BOOT-INF/lib/inner.war", Entries: []inventorytest.Entry{
			{Name: "WEB-INF/lib/log4j-core-2.14.1.jar", Entries: []inventorytest.Entry{
				{Name: "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties", Body: props("org.apache.logging.log4j", "log4j-core", "2.14.1")}}}}},
	)
	dir := t.TempDir()
	p := filepath.Join(dir, "app.jar")
	os.WriteFile(p, jar, 0o644)
	list := func(run func(in *filesystem.ScanInput) (scalibrinv.Inventory, error)) []string {
		f, _ := os.Open(p)
		defer f.Close()
		info, _ := f.Stat()
		inv, err := run(&filesystem.ScanInput{Path: "app/app.jar", Info: info, Reader: f})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, pk := range inv.Packages {
			out = append(out, pk.Name+"@"+pk.Version+" at "+pk.Location.PathOrEmpty())
		}
		sort.Strings(out)
		return out
	}
	lib, err := javaarchive.New(&cpb.PluginConfig{})
	if err != nil {
		t.Fatal(err)
	}
	want := list(func(in *filesystem.ScanInput) (scalibrinv.Inventory, error) {
		return lib.Extract(context.Background(), in)
	})
	g := &guard{lim: DefaultLimits, cancel: func() {}, tempDir: dir, tempPrefix: "nested-"}
	got := list(func(in *filesystem.ScanInput) (scalibrinv.Inventory, error) {
		return g.javaArchive(context.Background(), in)
	})
	t.Logf("%d packages: %v", len(got), got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(want) < 4 {
		t.Errorf("javaArchive lists\n%s\nosv-scalibr's extractor\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestFinishReadsMetadata: an extraction lists npm, PyPI and dpkg packages with Gatehouse's own
// readers (metadata.go), not osv-scalibr's (which read these files otherwise than the tools), and
// keeps them within the bound on packages.
func TestFinishReadsMetadata(t *testing.T) {
	files := map[string][]byte{
		"etc/os-release": []byte("ID=debian\nVERSION_ID=\"12\"\n"),
		"var/lib/dpkg/status": []byte("Package: libc6\nStatus: install ok  installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u1\n\n" +
			"Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.2.13.dfsg-1\n"),
		"app/node_modules/lodash/package.json":                             []byte("\ufeff{\"name\": \"lodash\", \"version\": \"4.17.15\", \"Version\": \"4.17.21\"}"),
		"usr/lib/python3/site-packages/requests-2.19.1.dist-info/METADATA": []byte("Metadata-Version: 2.1\nName: requests\nVersion:\n 2.19.1\n"),
	}
	inv, err := extract(t, DefaultLimits, files)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range inv.Packages {
		got[p.Name+" "+p.Version] = p.Extractor
	}
	for _, want := range []string{"libc6 2.36-9+deb12u1", "zlib1g 1:1.2.13.dfsg-1", "lodash 4.17.15", "requests 2.19.1"} {
		if x, ok := got[want]; !ok || !strings.Contains(x, "gatehouse") {
			t.Errorf("%s: listed by %q; want it listed by Gatehouse's reader (all: %v)", want, x, got)
		}
	}
	if len(got) != 4 {
		t.Errorf("packages %v; want the four, once each", got)
	}
	if len(inv.Unread) != 0 {
		t.Errorf("unread %+v", inv.Unread)
	}

	inv, err = extract(t, Limits{MaxPackages: 3}, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Packages) != 3 || len(inv.Unread) != 1 || !strings.Contains(inv.Unread[0].Reason, "scan.max_packages") {
		t.Errorf("with max_packages 3: %d packages, unread %+v; want 3 and one unread naming the bound", len(inv.Packages), inv.Unread)
	}
}

// TestDpkgAdminDir: the dpkg database DPKG_ADMINDIR names in the image config (which dpkg-query
// in the container reads) is read as well as var/lib/dpkg.
func TestDpkgAdminDir(t *testing.T) {
	libc := "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u1\n"
	files := map[string][]byte{
		"etc/os-release":        []byte("ID=debian\nVERSION_ID=\"12\"\n"),
		"var/lib/dpkg/status":   []byte(strings.Replace(libc, "deb12u1", "deb12u10", 1)),
		"opt/dpkg/status":       []byte(libc),
		"opt/dpkg/updates/0001": []byte(strings.NewReplacer("libc6", "zlib1g", "glibc", "zlib").Replace(libc)),
		"opt/other/status":      []byte(strings.Replace(libc, "libc6", "libother", 1)),
	}
	for _, tt := range []struct {
		env     []string
		workDir string
		want    []string
	}{
		{nil, "", []string{"libc6 2.36-9+deb12u10 var/lib/dpkg/status"}},
		// dpkg started in WorkingDir /opt reads DPKG_ADMINDIR=dpkg at /opt/dpkg
		{[]string{"DPKG_ADMINDIR=dpkg"}, "/opt", []string{"libc6 2.36-9+deb12u1 opt/dpkg/status", "libc6 2.36-9+deb12u10 var/lib/dpkg/status", "zlib1g 2.36-9+deb12u1 opt/dpkg/updates/0001"}},
		{[]string{"PATH=/bin", "DPKG_ADMINDIR=/opt/../opt/dpkg/"}, "/srv", []string{"libc6 2.36-9+deb12u1 opt/dpkg/status", "libc6 2.36-9+deb12u10 var/lib/dpkg/status", "zlib1g 2.36-9+deb12u1 opt/dpkg/updates/0001"}},
	} {
		inv, err := extractWith(t, files, WithEnv(tt.env, tt.workDir))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range inv.Packages {
			got = append(got, p.Name+" "+p.Version+" "+p.Path)
		}
		sort.Strings(got)
		if strings.Join(got, "|") != strings.Join(tt.want, "|") {
			t.Errorf("env %q: %q; want %q", tt.env, got, tt.want)
		}
	}
}

// TestDpkgSourceVersion: "Source: glibc (2.36-9+deb12u1)" gives the source's own version, by
// which advisories of the source package are matched.
func TestDpkgSourceVersion(t *testing.T) {
	inv, err := extract(t, DefaultLimits, map[string][]byte{
		"etc/os-release":      []byte("ID=debian\nVERSION_ID=\"12\"\n"),
		"var/lib/dpkg/status": []byte("Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9+deb12u1)\nVersion: 2.36-9+deb12u1+b1\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Packages) != 1 || inv.Packages[0].Source != "glibc" || inv.Packages[0].SourceVersion != "2.36-9+deb12u1" {
		t.Errorf("packages %+v; want libc6 from glibc 2.36-9+deb12u1", inv.Packages)
	}
}

// TestJavaArchivesOfAnyName: a Java archive is read whatever its name (the JVM runs java -jar
// /app/app and loads -cp lib.zip; osv-scalibr's java/archive asks for *.jar, *.war, ... only),
// also after a launcher script; a pom.properties that Maven reads with ':' separators, which
// the extractor would read as no version, is an unread file.
func TestJavaArchivesOfAnyName(t *testing.T) {
	pom := func(sep string) []byte {
		return inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties",
			Body: strings.NewReader("groupId" + sep + "org.apache.logging.log4j\nartifactId" + sep + "log4j-core\nversion" + sep + "2.14.1\n")})
	}
	props := func(body string) []byte {
		return inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties", Body: strings.NewReader(body)})
	}
	inv, err := extract(t, DefaultLimits, map[string][]byte{
		"app/app":           pom("="),
		"app/lib/log4j.zip": pom("="),
		"app/launcher":      append([]byte("#!/bin/sh\nexec java -jar \"$0\" \"$@\"\n"), pom("=")...),
		"app/colon.jar":     pom(":"),
		"app/rootpom": inventorytest.Jar(inventorytest.Entry{Name: "pom.properties",
			Body: strings.NewReader("groupId=org.apache.logging.log4j\nartifactId=log4j-core\nversion=2.14.1\n")}),
		// a false end record after the jar, which the JVM passes over (its directory is not there)
		"app/fakeend":       append(pom("="), []byte("PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\xf0\xff\xff\xff\x00\x00\x00\x00\x00\x00x")...),
		"app/escaped.jar":   props("groupId=org.apache.logging.log4j\nartifactId=log4j-core\n\\u0076ersion=2.14.1\n"),
		"app/swallow.jar":   props("groupId=org.apache.logging.log4j\nartifactId=log4j-core\nversion=2.14.1\nfoo=bar\\\nversion=2.17.1\n"),
		"app/cr.jar":        props("groupId=org.apache.logging.log4j\rartifactId=log4j-core\rversion=2.14.1\r"),
		"app/commented.jar": props("#Generated by Maven\r\n#Tue Dec 01 2026\r\ngroupId=org.apache.logging.log4j\r\nartifactId=log4j-core\r\nversion=2.14.1\r\n"),
		"app/cont.jar": inventorytest.Jar(inventorytest.Entry{Name: "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties",
			Body: strings.NewReader("groupId=org.apache.logging.log4j\nartifactId=log4j-core\nversion=2.14.\\\n  1\n")}),
	})
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, p := range inv.Packages {
		if strings.HasSuffix(p.Name, "log4j-core") && p.Version == "2.14.1" {
			found[p.Path] = true
		}
	}
	unread := map[string]string{}
	for _, u := range inv.Unread {
		unread[u.Path] = u.Reason
	}
	for _, p := range []string{"app/app", "app/lib/log4j.zip", "app/launcher", "app/rootpom"} {
		if !found[p] {
			t.Errorf("%s: log4j-core 2.14.1 not listed (found %v)", p, found)
		}
	}
	if !found["app/fakeend"] && unread["app/fakeend"] == "" {
		t.Errorf("app/fakeend: neither listed nor unread (found %v, unread %v)", found, unread)
	}
	for p, want := range map[string]string{
		"app/colon.jar":   `Maven reads groupId "org.apache.logging.log4j", the Java extractor ""`,
		"app/cont.jar":    `Maven reads version "2.14.1", the Java extractor "2.14.\\"`,
		"app/escaped.jar": `Maven reads version "2.14.1", the Java extractor ""`,
		"app/swallow.jar": `Maven reads version "2.14.1", the Java extractor "2.17.1"`,
		"app/cr.jar":      `Maven reads groupId "org.apache.logging.log4j", the Java extractor "org.apache.logging.log4j\rartifactId`,
	} {
		if !strings.Contains(unread[p], want) {
			t.Errorf("%s: unread %q; want %q", p, unread[p], want)
		}
	}
	if found["app/commented.jar"] != true || unread["app/commented.jar"] != "" {
		t.Errorf("app/commented.jar, a plain pom.properties with comments and CRLF: found %v, unread %q", found["app/commented.jar"], unread["app/commented.jar"])
	}
}

// TestJavaZip64BehindAFalseEndRecord: the JVM's search for the end record behind a false one
// reads a zip64 archive's record too (its directory size is in the zip64 record).
func TestJavaZip64BehindAFalseEndRecord(t *testing.T) {
	es := []inventorytest.Entry{{Name: "META-INF/maven/org.apache.logging.log4j/log4j-core/pom.properties",
		Body: strings.NewReader("groupId=org.apache.logging.log4j\nartifactId=log4j-core\nversion=2.14.1\n")}}
	for i := range 1 << 16 { // past 65,535 entries archive/zip writes zip64 records
		es = append(es, inventorytest.Entry{Name: "c" + strconv.Itoa(i)})
	}
	jar := append(inventorytest.Jar(es...), []byte("PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\xf0\xff\xff\xff\x00\x00\x00\x00\x00\x00x")...)
	if ok, err := zipKept(bytes.NewReader(jar), int64(len(jar))); !ok || err != nil {
		t.Fatalf("zipKept: %v, %v; want the zip64 jar behind the false record kept", ok, err)
	}
}
