package inventory

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// jsonDoc is what readJSON keeps of a document: the top-level members it was asked for, each
// occurrence in order (JSON.parse keeps the last; a reader that keeps the first disagrees).
type jsonDoc struct {
	object  bool                       // the document is an object
	members map[string][]jsonValue     // wanted top-level members by exact key
	keys    map[string]map[string]bool // the keys of wanted top-level members that are objects
}

// jsonValue is one top-level member's value: its kind, and its text if it is a string.
type jsonValue struct {
	kind byte // '"' string, '{' object, '[' array, 'n' number, 't' true or false, '0' null
	str  string
}

// Bounds of readJSON: nesting (V8 parses deeper, so beyond it the file is refused, not misread)
// and the length of a string it keeps (a key, or a wanted member's value).
const (
	jsonMaxDepth  = 10000
	jsonMaxString = 64 << 10
)

var errJSONTooLarge = errors.New("larger than the bound for this file")

// readJSON reads a JSON text with the grammar of ECMAScript's JSON.parse (RFC 8259: no comments,
// no trailing commas, no BOM inside, only space, tab, CR and LF as whitespace), streaming, at
// most max bytes. One UTF-8 byte order mark at the very start is skipped, as Node's require and
// npm do before they parse. Keys are compared after unescaping, exactly (JSON.parse is case
// sensitive; Go's encoding/json is not). Bytes that are not UTF-8 inside strings are taken as
// U+FFFD, as Node decodes the file. key, if set, sees every object key at any depth.
func readJSON(r io.Reader, max int64, want []string, key func(k string) error) (*jsonDoc, error) {
	p := &jsonParser{r: bufio.NewReaderSize(io.LimitReader(r, max+1), 64<<10), max: max, key: key,
		doc: &jsonDoc{members: map[string][]jsonValue{}, keys: map[string]map[string]bool{}}, want: map[string]bool{}}
	for _, w := range want {
		p.want[w] = true
	}
	if b, err := p.r.Peek(3); err == nil && string(b) == "\xef\xbb\xbf" {
		p.r.Discard(3)
		p.n = 3
	}
	c, err := p.skipSpace()
	if err != nil {
		return nil, p.fail(err, "an empty document")
	}
	p.doc.object = c == '{'
	if _, err := p.value(c, 0, true); err != nil {
		return nil, err
	}
	if c, err := p.skipSpace(); err == nil {
		return nil, p.errorf("%q after the top-level value", c)
	} else if !errors.Is(err, io.EOF) {
		return nil, p.fail(err, "")
	}
	return p.doc, nil
}

type jsonParser struct {
	r    *bufio.Reader
	n    int64 // bytes consumed
	max  int64
	key  func(string) error
	want map[string]bool
	doc  *jsonDoc
	in   string // the wanted top-level member being read
}

// jsonSyntaxError is a text JSON.parse refuses (Node cannot load the file either); other errors
// of readJSON are its own bounds, or the reader's.
type jsonSyntaxError struct{ msg string }

func (e *jsonSyntaxError) Error() string { return e.msg }

func (p *jsonParser) errorf(format string, args ...any) error {
	return &jsonSyntaxError{fmt.Sprintf("JSON.parse refuses it at byte %d: %s", p.n, fmt.Sprintf(format, args...))}
}

// fail turns a read error into the file's error: too large, or ended where a value was due.
func (p *jsonParser) fail(err error, what string) error {
	if errors.Is(err, errJSONTooLarge) {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if what == "" {
			what = "the text ends inside a value"
		}
		return p.errorf("%s", what)
	}
	return err
}

func (p *jsonParser) byte() (byte, error) {
	c, err := p.r.ReadByte()
	if err != nil {
		return 0, err
	}
	p.n++
	if p.n > p.max {
		return 0, errJSONTooLarge
	}
	return c, nil
}

// skipSpace returns the next byte that is not JSON whitespace.
func (p *jsonParser) skipSpace() (byte, error) {
	for {
		c, err := p.byte()
		if err != nil {
			return 0, err
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c, nil
	}
}

// value reads the value that starts with c; top says it is the document itself.
func (p *jsonParser) value(c byte, depth int, top bool) (jsonValue, error) {
	if depth > jsonMaxDepth {
		return jsonValue{}, fmt.Errorf("nested deeper than %d levels", jsonMaxDepth)
	}
	switch {
	case c == '{':
		return jsonValue{kind: '{'}, p.object(depth, top)
	case c == '[':
		return jsonValue{kind: '['}, p.array(depth)
	case c == '"':
		s, err := p.str(false)
		return jsonValue{kind: '"', str: s}, err
	case c == '-' || c >= '0' && c <= '9':
		return jsonValue{kind: 'n'}, p.number(c)
	case c == 't':
		return jsonValue{kind: 't'}, p.literal("rue")
	case c == 'f':
		return jsonValue{kind: 't'}, p.literal("alse")
	case c == 'n':
		return jsonValue{kind: '0'}, p.literal("ull")
	}
	return jsonValue{}, p.errorf("unexpected %q", c)
}

func (p *jsonParser) object(depth int, top bool) error {
	c, err := p.skipSpace()
	if err != nil {
		return p.fail(err, "")
	}
	if c == '}' {
		return nil
	}
	for {
		if c != '"' {
			return p.errorf("%q where a key was due", c)
		}
		inWanted := depth == 1 && p.in != ""
		k, err := p.str(top || inWanted || p.key != nil)
		if err != nil {
			return err
		}
		if inWanted {
			if p.doc.keys[p.in] == nil {
				p.doc.keys[p.in] = map[string]bool{}
			}
			p.doc.keys[p.in][k] = true
		}
		if p.key != nil {
			if err := p.key(k); err != nil {
				return err
			}
		}
		if c, err = p.skipSpace(); err != nil {
			return p.fail(err, "")
		}
		if c != ':' {
			return p.errorf("%q after a key", c)
		}
		if c, err = p.skipSpace(); err != nil {
			return p.fail(err, "")
		}
		keep := top && p.want[k]
		if keep && c == '"' {
			s, err := p.str(true)
			if err != nil {
				return err
			}
			p.doc.members[k] = append(p.doc.members[k], jsonValue{kind: '"', str: s})
		} else {
			if keep {
				p.in = k
			}
			v, err := p.value(c, depth+1, false)
			p.in = ""
			if err != nil {
				return err
			}
			if keep {
				p.doc.members[k] = append(p.doc.members[k], v)
			}
		}
		if c, err = p.skipSpace(); err != nil {
			return p.fail(err, "")
		}
		switch c {
		case '}':
			return nil
		case ',':
			if c, err = p.skipSpace(); err != nil {
				return p.fail(err, "")
			}
		default:
			return p.errorf("%q inside an object", c)
		}
	}
}

func (p *jsonParser) array(depth int) error {
	c, err := p.skipSpace()
	if err != nil {
		return p.fail(err, "")
	}
	if c == ']' {
		return nil
	}
	for {
		if _, err := p.value(c, depth+1, false); err != nil {
			return err
		}
		if c, err = p.skipSpace(); err != nil {
			return p.fail(err, "")
		}
		switch c {
		case ']':
			return nil
		case ',':
			if c, err = p.skipSpace(); err != nil {
				return p.fail(err, "")
			}
		default:
			return p.errorf("%q inside an array", c)
		}
	}
}

// str reads a string after its opening quote, keeping its text if keep (or if key callbacks
// want it: str is called with keep for every key).
func (p *jsonParser) str(keep bool) (string, error) {
	var b strings.Builder
	put := func(r rune) error {
		if !keep {
			return nil
		}
		if b.Len() >= jsonMaxString {
			return fmt.Errorf("a string longer than %d bytes where a key or a package's name or version is read", jsonMaxString)
		}
		b.WriteRune(r)
		return nil
	}
	var raw []byte // a run of bytes of a multi-byte character
	flush := func() error {
		for len(raw) > 0 {
			r, n := utf8.DecodeRune(raw)
			raw = raw[n:]
			if err := put(r); err != nil { // RuneError for bytes that are not UTF-8
				return err
			}
		}
		return nil
	}
	for {
		c, err := p.byte()
		if err != nil {
			return "", p.fail(err, "the text ends inside a string")
		}
		if c >= utf8.RuneSelf {
			raw = append(raw, c)
			if utf8.FullRune(raw) {
				if err := flush(); err != nil {
					return "", err
				}
			}
			continue
		}
		if err := flush(); err != nil {
			return "", err
		}
		switch {
		case c == '"':
			return b.String(), nil
		case c < 0x20:
			return "", p.errorf("control character %#x inside a string", c)
		case c != '\\':
			if err := put(rune(c)); err != nil {
				return "", err
			}
			continue
		}
		e, err := p.byte()
		if err != nil {
			return "", p.fail(err, "the text ends inside a string")
		}
		var r rune
		switch e {
		case '"', '\\', '/':
			r = rune(e)
		case 'b':
			r = '\b'
		case 'f':
			r = '\f'
		case 'n':
			r = '\n'
		case 'r':
			r = '\r'
		case 't':
			r = '\t'
		case 'u':
			if r, err = p.hex4(); err != nil {
				return "", err
			}
			if utf16.IsSurrogate(r) {
				// a high surrogate joins a following \u low surrogate; else it is U+FFFD, and
				// what follows is read on its own (as encoding/json does; a JavaScript string
				// would keep the lone surrogate, which names no package either)
				lo, ok := p.lowSurrogate()
				if r2 := utf16.DecodeRune(r, lo); ok && r2 != utf8.RuneError {
					p.r.Discard(6)
					if p.n += 6; p.n > p.max {
						return "", errJSONTooLarge
					}
					r = r2
				} else {
					r = utf8.RuneError
				}
			}
		default:
			return "", p.errorf("escape \\%c", e)
		}
		if err := put(r); err != nil {
			return "", err
		}
	}
}

// lowSurrogate looks at what follows for a \u escape of a low surrogate, without reading it.
func (p *jsonParser) lowSurrogate() (rune, bool) {
	b, err := p.r.Peek(6)
	if err != nil || b[0] != '\\' || b[1] != 'u' {
		return 0, false
	}
	var r rune
	for _, c := range b[2:] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, r >= 0xdc00 && r <= 0xdfff
}

func (p *jsonParser) hex4() (rune, error) {
	var r rune
	for range 4 {
		c, err := p.byte()
		if err != nil {
			return 0, p.fail(err, "the text ends inside a string")
		}
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, p.errorf("%q in a \\u escape", c)
		}
	}
	return r, nil
}

// number reads -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? whose first byte is c.
func (p *jsonParser) number(c byte) error {
	digits := func(first bool) (int, error) { // how many digits follow
		n := 0
		for {
			b, err := p.r.Peek(1)
			if err != nil || b[0] < '0' || b[0] > '9' {
				if n == 0 && first {
					return 0, p.errorf("a number without digits")
				}
				return n, nil
			}
			if _, err := p.byte(); err != nil {
				return 0, p.fail(err, "")
			}
			n++
		}
	}
	if c == '-' {
		var err error
		if c, err = p.byte(); err != nil {
			return p.fail(err, "")
		}
		if c < '0' || c > '9' {
			return p.errorf("a number without digits")
		}
	}
	if c != '0' {
		if _, err := digits(false); err != nil {
			return err
		}
	} else if b, err := p.r.Peek(1); err == nil && b[0] >= '0' && b[0] <= '9' {
		return p.errorf("a number with a leading zero")
	}
	// next consumes the next byte if it is one of set
	next := func(set string) (bool, error) {
		b, err := p.r.Peek(1)
		if err != nil || !strings.ContainsRune(set, rune(b[0])) {
			return false, nil
		}
		_, err = p.byte()
		return true, p.fail(err, "")
	}
	if ok, err := next("."); err != nil {
		return err
	} else if ok {
		if _, err := digits(true); err != nil {
			return err
		}
	}
	if ok, err := next("eE"); err != nil {
		return err
	} else if ok {
		if _, err := next("+-"); err != nil {
			return err
		}
		if _, err := digits(true); err != nil {
			return err
		}
	}
	return nil
}

func (p *jsonParser) literal(rest string) error {
	for i := 0; i < len(rest); i++ {
		c, err := p.byte()
		if err != nil {
			return p.fail(err, "")
		}
		if c != rest[i] {
			return p.errorf("unexpected %q", c)
		}
	}
	return nil
}
