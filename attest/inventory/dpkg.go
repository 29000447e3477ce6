package inventory

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Debian packages are read as dpkg reads its database, not as osv-scalibr's os/dpkg reads it (a
// net/textproto reader that gives up on the whole file at a Status with two spaces, counts only
// "installed", ignores the journal, and reads the file whole into memory):
//
//   - stanzas are separated by empty lines; a line that starts with a space, a tab or another
//     blank continues the field before (so a line of blanks does not end a stanza); field names
//     are case-insensitive, a value ends at a NUL as dpkg's C strings do;
//   - Status is three words separated by any blanks or line breaks, case-insensitive; a package
//     counts when its files are on disk: installed, half-installed, unpacked, half-configured,
//     triggers-awaited, triggers-pending (not config-files or not-installed; a stanza with no
//     Status is not installed, as for dpkg, except in a distroless status.d);
//   - Package is lower-cased, as dpkg does (and Source too: Debian source names are lower-case
//     by policy, and advisories name them so);
//   - the journal var/lib/dpkg/updates/NNNN (names of digits only, in order), which dpkg applies
//     over the status file whenever it opens the database, replaces the stanzas it names.
//
// Where dpkg would refuse the database (a duplicate field, a Status word it does not know, a
// version it cannot parse, a line with no colon, ...) the file is an Unread and the packages are
// still listed as far as they can be. The read is streamed: at most dpkgMaxStanzas stanzas per
// image, dpkgMaxPackages installed packages listed, dpkgMaxFile bytes per file, dpkgMaxValue bytes
// per value kept; beyond, an Unread.

const (
	dpkgExtractor = "os/gatehouse-dpkg"
	dpkgMaxFile   = 256 << 20
	// dpkgMaxStanzas bounds the stanzas of an image's package databases (status, journal and
	// status.d together). Debian's whole archive has about 70,000 binary packages per
	// architecture; a system holds a few thousand.
	dpkgMaxStanzas = 100_000
	// dpkgMaxPackages bounds the installed packages listed from them: every package listed costs
	// the rest of the scan (matching, SBOMs, policy input) some KiB, and a system holds a few
	// thousand; 10,000 keep a scan of them under the server's memory bound.
	dpkgMaxPackages = 10_000
	dpkgMaxValue    = 4 << 10
	dpkgMaxFields   = 500 // distinct fields of one stanza
)

// dpkgKind is which database a file is: each has its own rules for Status.
type dpkgKind int

const (
	dpkgStatus  dpkgKind = iota // var/lib/dpkg/status and its journal
	dpkgStatusD                 // a distroless var/lib/dpkg/status.d file: no Status means installed
	opkgStatus                  // usr/lib/opkg/status: opkg's flags in the second word
)

// dpkgStanza is one package record, as far as Gatehouse needs it.
type dpkgStanza struct {
	Package, Version, Status, Source, SourceVersion, Architecture, Maintainer string
	Installed                                                                 bool // its files are on disk
	Line                                                                      int  // where it starts
}

// dpkgReader streams the stanzas of one file.
type dpkgReader struct {
	ctx     context.Context
	r       *bufio.Reader
	kind    dpkgKind
	budget  *int // stanzas the image may still have
	line    int
	n       int64
	ended   bool  // the last line read ended with a newline
	problem error // the first thing dpkg would refuse
}

// readDpkg reads one dpkg database file, calling emit for each stanza (installed or not), and
// returns the first thing that dpkg would refuse (the stanzas are still read), a bound that
// stopped the read (errDpkgBound), or the error emit returned, which stops it too.
func readDpkg(ctx context.Context, r io.Reader, kind dpkgKind, budget *int, emit func(dpkgStanza) error) error {
	d := &dpkgReader{ctx: ctx, r: bufio.NewReaderSize(io.LimitReader(r, dpkgMaxFile+1), 64<<10), kind: kind, budget: budget}
	if err := d.read(emit); err != nil {
		return err
	}
	return d.problem
}

// errDpkgBound is a bound that stopped a read (and the scan: what was not read is unknown).
type errDpkgBound struct{ msg string }

func (e *errDpkgBound) Error() string { return e.msg }

func (d *dpkgReader) refuse(format string, args ...any) {
	if d.problem == nil {
		d.problem = fmt.Errorf("line %d: %s; dpkg refuses the database", d.line, fmt.Sprintf(format, args...))
	}
}

// dpkgFields are the fields kept, by lower-case name.
var dpkgFields = map[string]bool{"package": true, "version": true, "status": true, "source": true, "architecture": true, "maintainer": true}

type dpkgStanzaState struct {
	start  int
	fields map[string]bool // seen, lower-case
	vals   map[string]*strings.Builder
	cur    string // the field whose value continues (lower-case; "" for none or not kept)
	any    bool   // a field has been read
	lead   bool   // the value of cur has only had blanks so far
}

func (d *dpkgReader) read(emit func(dpkgStanza) error) error {
	st := &dpkgStanzaState{}
	reset := func() { *st = dpkgStanzaState{fields: map[string]bool{}, vals: map[string]*strings.Builder{}} }
	reset()
	end := func() error {
		if !st.any {
			return nil
		}
		if *d.budget <= 0 {
			return &errDpkgBound{fmt.Sprintf("more than %d package stanzas in the image's package databases", dpkgMaxStanzas)}
		}
		*d.budget--
		if s, ok := d.stanza(st); ok {
			if err := emit(s); err != nil {
				return err
			}
		}
		reset()
		return nil
	}
	for {
		if d.line%1024 == 0 {
			if err := d.ctx.Err(); err != nil {
				return err
			}
		}
		head, more, err := d.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				if d.kind == dpkgStatus && d.line > 0 && !d.ended {
					d.refuse("no newline at the end of the file")
				}
				return end()
			}
			return err
		}
		d.line++
		if len(head) == 0 && !more { // an empty line ends the stanza
			if err := end(); err != nil {
				return err
			}
			continue
		}
		if dpkgBlank(head[0]) {
			if !st.any {
				d.refuse("a line starting with a blank outside a stanza (an empty field name)")
				if err := d.rest(more, nil); err != nil {
					return err
				}
				continue
			}
			if err := d.rest(more, d.appender(st, append([]byte{'\n'}, head...))); err != nil {
				return err
			}
			continue
		}
		// a field: its name runs to a blank or a colon
		i := bytes.IndexAny(head, ": \t\v\f\r")
		if i < 0 {
			d.refuse("no colon after a field name")
			if err := d.rest(more, nil); err != nil {
				return err
			}
			continue
		}
		name := head[:i]
		j := i
		for j < len(head) && dpkgBlank(head[j]) {
			j++
		}
		switch {
		case i == 0:
			d.refuse("an empty field name")
			if err := d.rest(more, nil); err != nil {
				return err
			}
			continue
		case j == len(head) || head[j] != ':':
			d.refuse("field name %q not followed by a colon", name)
			if err := d.rest(more, nil); err != nil {
				return err
			}
			continue
		case name[0] == '-':
			d.refuse("field name %q starts with a hyphen", name)
		case bytes.IndexByte(name, 0) >= 0:
			d.refuse("a NUL in a field name")
		}
		key := strings.ToLower(string(name))
		if key == "package" && st.fields["package"] {
			// two stanzas run together (a line of blanks between them is a continuation to
			// dpkg): it refuses the database; list both
			d.refuse("a second Package field in one stanza")
			if err := end(); err != nil {
				return err
			}
		}
		if st.fields[key] {
			d.refuse("a second %s field in one stanza", name)
			st.cur = ""
			if err := d.rest(more, nil); err != nil {
				return err
			}
			continue
		}
		if len(st.fields) >= dpkgMaxFields {
			return &errDpkgBound{fmt.Sprintf("line %d: a stanza of more than %d fields", d.line, dpkgMaxFields)}
		}
		if !st.any {
			st.start = d.line
		}
		st.any = true
		st.fields[key] = true
		st.cur = ""
		if dpkgFields[key] {
			st.cur = key
			st.vals[key] = &strings.Builder{}
			st.lead = true
		}
		if err := d.rest(more, d.appender(st, head[j+1:])); err != nil {
			return err
		}
	}
}

// appender adds first, then each piece of the rest of the line, to the value being read.
func (d *dpkgReader) appender(st *dpkgStanzaState, first []byte) func([]byte) error {
	add := func(b []byte) error {
		if st.cur == "" {
			return nil
		}
		v := st.vals[st.cur]
		if st.lead {
			b = bytes.TrimLeft(b, " \t\v\f\r")
			st.lead = len(b) == 0 && v.Len() == 0
		}
		if v.Len()+len(b) > dpkgMaxValue {
			return &errDpkgBound{fmt.Sprintf("line %d: a %s value longer than %d KiB", d.line, st.cur, dpkgMaxValue>>10)}
		}
		v.Write(b)
		return nil
	}
	pending := first
	return func(b []byte) error {
		if pending != nil {
			if err := add(pending); err != nil {
				return err
			}
			pending = nil
		}
		return add(b)
	}
}

// stanza checks a stanza as dpkg would and says whether it names a package.
func (d *dpkgReader) stanza(st *dpkgStanzaState) (dpkgStanza, bool) {
	val := func(k string) string {
		v, ok := st.vals[k]
		if !ok {
			return ""
		}
		s := v.String()
		if i := strings.IndexByte(s, 0); i >= 0 {
			s = s[:i] // dpkg's values are C strings
		}
		return strings.TrimRight(s, " \t\n\v\f\r")
	}
	line := d.line
	d.line = st.start // problems are told at the stanza's start
	defer func() { d.line = line }()
	s := dpkgStanza{Package: strings.ToLower(val("package")), Version: val("version"), Status: val("status"),
		Architecture: val("architecture"), Maintainer: val("maintainer"), Line: st.start}
	if s.Package == "" {
		d.refuse("a stanza without a Package field")
		return s, false
	}
	if msg := dpkgNameProblem(s.Package); msg != "" {
		d.refuse("package name %q %s", s.Package, msg)
	}
	s.Installed = true
	switch {
	case !st.fields["status"] && d.kind == dpkgStatusD:
	case !st.fields["status"]:
		s.Installed = false // dpkg takes a package without Status as not installed
	default:
		w := strings.Fields(strings.ToLower(s.Status))
		if len(w) != 3 {
			d.refuse("Status %q is not three words", s.Status)
			break // listed anyway: what it says cannot be told
		}
		if !dpkgWant[w[0]] {
			d.refuse("Status %q: want %q unknown", s.Status, w[0])
		}
		if d.kind != opkgStatus && w[1] != "ok" && w[1] != "reinstreq" {
			d.refuse("Status %q: flag %q unknown", s.Status, w[1])
		}
		on, known := dpkgState[w[2]]
		if !known && !(d.kind == opkgStatus && opkgState[w[2]]) {
			d.refuse("Status %q: state %q unknown", s.Status, w[2])
			break
		}
		s.Installed = on || d.kind == opkgStatus && opkgState[w[2]]
	}
	if s.Installed || st.fields["version"] {
		if msg := dpkgVersionProblem(s.Version); msg != "" {
			d.refuse("version %q: %s", s.Version, msg)
		}
	}
	if src := val("source"); src != "" {
		// dpkg-query's source:Package is the first word, source:Version what the parentheses hold
		name := src
		if i := strings.IndexAny(name, " \t\n("); i >= 0 {
			name = name[:i]
		}
		s.Source = strings.ToLower(name)
		if i := strings.IndexByte(src, '('); i >= 0 {
			if j := strings.IndexByte(src[i:], ')'); j >= 0 {
				s.SourceVersion = strings.TrimSpace(src[i+1 : i+j])
			}
		}
	}
	return s, s.Version != "" || !s.Installed
}

var (
	dpkgWant  = map[string]bool{"unknown": true, "install": true, "hold": true, "deinstall": true, "purge": true}
	dpkgState = map[string]bool{ // the states dpkg knows, and whether the package's files are on disk
		"not-installed": false, "config-files": false, "half-installed": true, "unpacked": true,
		"half-configured": true, "triggers-awaited": true, "triggers-pending": true, "installed": true,
	}
	opkgState = map[string]bool{"post-inst-failed": true, "removal-failed": true}
)

// dpkgBlank is C's isspace without the newline: the blanks dpkg skips and continues on.
func dpkgBlank(c byte) bool {
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r'
}

// dpkgNameProblem is what dpkg's pkg_name_is_illegal says of a (lower-cased) name.
func dpkgNameProblem(n string) string {
	if !isAlnum(n[0]) {
		return "must start with an alphanumeric character"
	}
	for i := 1; i < len(n); i++ {
		if !isAlnum(n[i]) && !strings.ContainsRune("-+._", rune(n[i])) {
			return fmt.Sprintf("holds %q", n[i])
		}
	}
	return ""
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// dpkgVersionProblem is the error (not the warnings) of dpkg's parseversion.
func dpkgVersionProblem(v string) string {
	switch {
	case v == "":
		return "empty"
	case strings.ContainsAny(v, " \t"):
		return "embedded spaces"
	}
	if epoch, rest, ok := strings.Cut(v, ":"); ok {
		switch {
		case epoch == "":
			return "the epoch is empty"
		case strings.Trim(epoch, "0123456789") != "" || len(strings.TrimLeft(epoch, "0")) > 9:
			return "the epoch is not a number"
		case rest == "":
			return "nothing after the epoch"
		}
		v = rest
	}
	if strings.HasSuffix(v, "-") {
		return "the revision is empty"
	}
	if i := strings.LastIndexByte(v, '-'); i == 0 {
		return "the version number is empty"
	}
	return ""
}

// next reads the start of a line: up to the reader's buffer (64 KiB) of it, without its newline;
// more says the line goes on (rest reads the remainder).
func (d *dpkgReader) next() (head []byte, more bool, err error) {
	b, err := d.r.ReadSlice('\n')
	d.n += int64(len(b))
	if d.n > dpkgMaxFile {
		return nil, false, &errDpkgBound{fmt.Sprintf("larger than %d MiB", dpkgMaxFile>>20)}
	}
	switch {
	case err == nil:
		d.ended = true
		return b[:len(b)-1], false, nil
	case errors.Is(err, bufio.ErrBufferFull):
		d.ended = false
		return append([]byte(nil), b...), true, nil
	case errors.Is(err, io.EOF) && len(b) > 0:
		d.ended = false
		return b, false, nil
	}
	return nil, false, err
}

// rest consumes the remainder of a line that next said goes on, giving it to add (if set) in
// pieces; with more false it only hands add nothing, so that a value's first part is added.
func (d *dpkgReader) rest(more bool, add func([]byte) error) error {
	if add == nil {
		add = func([]byte) error { return nil }
	}
	if !more {
		return add(nil)
	}
	for {
		b, err := d.r.ReadSlice('\n')
		d.n += int64(len(b))
		if d.n > dpkgMaxFile {
			return &errDpkgBound{fmt.Sprintf("larger than %d MiB", dpkgMaxFile>>20)}
		}
		switch {
		case err == nil:
			d.ended = true
			return add(b[:len(b)-1])
		case errors.Is(err, bufio.ErrBufferFull):
			if err := add(b); err != nil {
				return err
			}
		case errors.Is(err, io.EOF):
			d.ended = false
			return add(b)
		default:
			return err
		}
	}
}
