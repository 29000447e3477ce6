package inventory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// dpkgRead reads a status text and lists its installed packages as "name version [source]".
func dpkgRead(t testing.TB, text string, kind dpkgKind, budget int) ([]string, error) {
	var got []string
	err := readDpkg(context.Background(), strings.NewReader(text), kind, &budget, func(s dpkgStanza) error {
		if s.Installed {
			e := s.Package + " " + s.Version
			if s.Source != "" {
				e += " " + s.Source
				if s.SourceVersion != "" {
					e += "(" + s.SourceVersion + ")"
				}
			}
			got = append(got, e)
		}
		return nil
	})
	return got, err
}

// The expectations are dpkg 1.21's (dpkg-query --admindir=DIR -W on the same status file; the
// integration test runs it): which packages it lists, and where it refuses the database.
func TestReadDpkg(t *testing.T) {
	const ok = "install ok installed"
	st := func(pkg, status, version string, more ...string) string {
		s := "Package: " + pkg + "\n"
		if status != "" {
			s += "Status: " + status + "\n"
		}
		if version != "" {
			s += "Version: " + version + "\n"
		}
		for _, m := range more {
			s += m + "\n"
		}
		return s + "Maintainer: m\nDescription: d\n line two\n .\n"
	}
	tests := []struct {
		name    string
		kind    dpkgKind
		text    string
		want    string // installed packages, ";"-separated
		wantErr string // a part of the refusal
	}{
		{"two stanzas", dpkgStatus, st("a", ok, "1") + "\n" + st("b", ok, "2"), "a 1;b 2", ""},
		{"Status with two spaces and a tab", dpkgStatus, st("a", "install  ok\tinstalled", "1") + "\n" + st("apt", ok, "2.6.1"), "a 1;apt 2.6.1", ""},
		{"Status folded over lines", dpkgStatus, st("a", "install\n ok\n\tinstalled", "1"), "a 1", ""},
		{"Status in capitals", dpkgStatus, st("a", "Install OK Installed", "1"), "a 1", ""},
		{"Status with leading blanks", dpkgStatus, st("a", "  install ok installed ", "1"), "a 1", ""},
		{"field names in any case, no space after the colon", dpkgStatus, "package:a\nSTATUS:install ok installed\nversion:1\n", "a 1", ""},
		{"a space before the colon", dpkgStatus, "Package : a\nStatus: install ok installed\nVersion: 1\n", "a 1", ""},
		{"states whose files are on disk", dpkgStatus, st("a", "install ok half-configured", "1") + "\n" + st("b", "install ok unpacked", "2") + "\n" +
			st("c", "install reinstreq half-installed", "3") + "\n" + st("d", "install ok triggers-awaited", "4") + "\n" +
			st("e", "install ok triggers-pending", "5") + "\n" + st("f", "hold ok installed", "6") + "\n" + st("g", "deinstall ok installed", "7"),
			"a 1;b 2;c 3;d 4;e 5;f 6;g 7", ""},
		{"states without files", dpkgStatus, st("a", "deinstall ok config-files", "1") + "\n" + st("b", "purge ok not-installed", "") + "\n" + st("c", ok, "3"), "c 3", ""},
		{"no Status: not installed, as dpkg takes it", dpkgStatus, st("a", "", "1") + "\n" + st("b", ok, "2"), "b 2", ""},
		{"no Status in status.d: installed", dpkgStatusD, st("a", "", "1"), "a 1", ""},
		{"names lower-cased", dpkgStatus, st("LIBC6", ok, "2.36-9", "Source: GLIBC (2.36-9)"), "libc6 2.36-9 glibc(2.36-9)", ""},
		{"Source without a version", dpkgStatus, st("libc6", ok, "2.36-9", "Source:   glibc  "), "libc6 2.36-9 glibc", ""},
		{"Source without a space before its version", dpkgStatus, st("libc6", ok, "2.36-9", "Source: glibc(2.36-8)"), "libc6 2.36-9 glibc(2.36-8)", ""},
		{"a value ends at a NUL", dpkgStatus, st("a\x00junk", ok, "1\x00 2"), "a 1", ""},
		{"blank lines around", dpkgStatus, "\n\n" + st("a", ok, "1") + "\n\n\n" + st("b", ok, "2") + "\n\n", "a 1;b 2", ""},
		{"a 100 KB description line", dpkgStatus, st("a", ok, "1", "X-Long: "+strings.Repeat("x", 100000)) + "\n" + st("b", ok, "2"), "a 1;b 2", ""},
		{"opkg's flags", opkgStatus, "Package: busybox\nVersion: 1.36\nStatus: install user installed\n", "busybox 1.36", ""},
		{"an epoch", dpkgStatus, st("a", ok, "1:2.0-1"), "a 1:2.0-1", ""},
		// what dpkg refuses: the file is unread, what can be listed is
		{"a line of blanks joins two stanzas", dpkgStatus, st("a", ok, "1") + " \t \n" + st("b", ok, "2"), "a 1;b 2", "second Package"},
		{"CR LF line ends", dpkgStatus, "Package: a\r\nStatus: install ok installed\r\nVersion: 1\r\n\r\nPackage: b\r\nStatus: install ok installed\r\nVersion: 2\r\n", "a 1;b 2", "second Package"},
		{"a duplicate field", dpkgStatus, st("a", ok, "1", "Version: 2"), "a 1", "second Version"},
		{"a Status word dpkg does not know", dpkgStatus, st("a", "install ok weird", "1") + "\n" + st("b", ok, "2"), "a 1;b 2", `state "weird"`},
		{"four Status words", dpkgStatus, st("a", "install ok installed extra", "1"), "a 1", "not three words"},
		{"an unknown flag", dpkgStatus, st("a", "install hold installed", "1"), "a 1", `flag "hold"`},
		{"installed without a version", dpkgStatus, st("a", ok, "") + "\n" + st("b", ok, "2"), "b 2", "version \"\": empty"},
		{"a version with a space", dpkgStatus, st("a", ok, "1 2"), "a 1 2", "embedded spaces"},
		{"a bad epoch", dpkgStatus, st("a", ok, "x:1"), "a x:1", "epoch"},
		{"nothing after the epoch", dpkgStatus, st("a", ok, "1:"), "a 1:", "nothing after"},
		{"an empty revision", dpkgStatus, st("a", ok, "1-"), "a 1-", "revision"},
		{"a line without a colon", dpkgStatus, "Package: a\nStatus: install ok installed\nVersion: 1\nnocolon\n", "a 1", "no colon"},
		{"a field name with a hyphen first", dpkgStatus, st("a", ok, "1", "-Foo: x"), "a 1", "hyphen"},
		{"a comment", dpkgStatus, "# c\n" + st("a", ok, "1"), "a 1", "not followed by a colon"},
		{"a blank line first", dpkgStatus, " \n" + st("a", ok, "1"), "a 1", "outside a stanza"},
		{"no Package", dpkgStatus, "Status: install ok installed\nVersion: 1\n", "", "without a Package"},
		{"a bad name", dpkgStatus, st("-a", ok, "1"), "-a 1", "alphanumeric"},
		{"no final newline", dpkgStatus, "Package: a\nStatus: install ok installed\nVersion: 1", "a 1", "no newline"},
		{"no final newline in status.d", dpkgStatusD, "Package: a\nVersion: 1", "a 1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := dpkgRead(t, tt.text, tt.kind, 100)
			if strings.Join(got, ";") != tt.want {
				t.Errorf("packages %q, want %q", strings.Join(got, ";"), tt.want)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("error %v, want one with %q", err, tt.wantErr)
			}
		})
	}
}

func TestReadDpkgBounds(t *testing.T) {
	var b strings.Builder
	for i := range 20 {
		fmt.Fprintf(&b, "Package: p%d\nStatus: install ok installed\nVersion: 1\n\n", i)
	}
	got, err := dpkgRead(t, b.String(), dpkgStatus, 10)
	var bound *errDpkgBound
	if !errors.As(err, &bound) || len(got) != 10 {
		t.Errorf("past the stanza budget: %d packages, %v", len(got), err)
	}
	_, err = dpkgRead(t, "Package: a\nStatus: install ok installed\nVersion: "+strings.Repeat("1", dpkgMaxValue+1)+"\n", dpkgStatus, 10)
	if !errors.As(err, &bound) {
		t.Errorf("a version past the value bound: %v", err)
	}
	var fields strings.Builder
	fields.WriteString("Package: a\n")
	for i := range dpkgMaxFields + 1 {
		fmt.Fprintf(&fields, "X-%d: y\n", i)
	}
	if _, err = dpkgRead(t, fields.String(), dpkgStatus, 10); !errors.As(err, &bound) {
		t.Errorf("a stanza past the field bound: %v", err)
	}
}

// manyPackages streams a status file of n stanzas without holding it.
type manyPackages struct {
	n, i int
	buf  []byte
}

func (m *manyPackages) Read(p []byte) (int, error) {
	for len(m.buf) == 0 {
		if m.i == m.n {
			return 0, io.EOF
		}
		m.buf = fmt.Appendf(nil, "Package: pkg%07d\nStatus: install ok installed\nVersion: 1.0-%d\nArchitecture: amd64\nMaintainer: m\nDescription: d\n\n", m.i, m.i)
		m.i++
	}
	n := copy(p, m.buf)
	m.buf = m.buf[n:]
	return n, nil
}

// A status of a million packages is read up to the bound and no further, in bounded memory.
func TestReadDpkgMillion(t *testing.T) {
	budget := dpkgMaxStanzas
	src := &manyPackages{n: 1_000_000}
	n := 0
	err := readDpkg(context.Background(), src, dpkgStatus, &budget, func(dpkgStanza) error { n++; return nil })
	var bound *errDpkgBound
	if !errors.As(err, &bound) || n != dpkgMaxStanzas || src.i > dpkgMaxStanzas+2 {
		t.Errorf("a million stanzas: %d listed, %d generated, %v", n, src.i, err)
	}
}

// readDpkg never panics, keeps to its budget, and lists lower-case names.
func FuzzReadDpkg(f *testing.F) {
	for _, s := range []string{
		"Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStatus: install  ok\tinstalled\nVersion: 2\nSource: B (1)\n",
		"Package: a\n \nPackage: b\n", "\x00:\n", " x\n:\n-a: b\n", "Package: A\r\nStatus: install ok half-configured\r\n",
	} {
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, b []byte, kind uint8) {
		budget := 5
		n := 0
		readDpkg(context.Background(), bytes.NewReader(b), dpkgKind(kind%3), &budget, func(s dpkgStanza) error {
			n++
			if s.Package != strings.ToLower(s.Package) || s.Source != strings.ToLower(s.Source) {
				t.Fatalf("names not lower-cased: %+v", s)
			}
			return nil
		})
		if n > 5 || budget < 0 {
			t.Fatalf("%d stanzas listed, budget %d", n, budget)
		}
	})
}

func TestParseOSRelease(t *testing.T) {
	got := parseOSRelease(strings.NewReader("# comment\nID=debian\nVERSION_ID='12'\nVERSION_CODENAME=\"book\\\"worm\"\n  PRETTY_NAME=\"Debian GNU/Linux 12\" # trailing\nNAME=Debian\\ GNU\nBAD LINE\n"))
	want := map[string]string{"ID": "debian", "VERSION_ID": "12", "VERSION_CODENAME": `book"worm`, "PRETTY_NAME": "Debian GNU/Linux 12", "NAME": "Debian GNU"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for in, want := range map[string]string{"12.5\n": "12", "bookworm/sid\n": "", "11": "11"} {
		if got := debianVersion(in)["VERSION_ID"]; got != want {
			t.Errorf("debian_version %q: VERSION_ID %q, want %q", in, got, want)
		}
	}
	if got := debianVersion("trixie/sid")["VERSION_CODENAME"]; got != "trixie" {
		t.Errorf("trixie/sid: codename %q", got)
	}
}
