package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
)

// reportPage is the page of a scan report's lists a request asks for (?page=N&page_size=M).
type reportPage struct{ number, size int }

func reportPageOf(q url.Values) (reportPage, error) {
	p := reportPage{number: 1, size: DefaultPageSize}
	for key, dst := range map[string]*int{"page": &p.number, "page_size": &p.size} {
		v := q.Get(key)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return reportPage{}, fmt.Errorf("%s must be a whole number from 1, got %q", key, v)
		}
		*dst = n
	}
	if p.size > MaxPageSize {
		return reportPage{}, fmt.Errorf("page_size must be at most %d, got %d", MaxPageSize, p.size)
	}
	if p.number > (1<<31)/p.size {
		return reportPage{}, fmt.Errorf("page %d is past any list", p.number)
	}
	return p, nil
}

func (p reportPage) pager() *pager { return &pager{skip: (p.number - 1) * p.size, take: p.size} }

// pager cuts one JSON array to the entries [skip, skip+take) and counts them all.
type pager struct {
	skip, take int
	total      int
}

func (p *pager) more() bool { return p.total > p.skip+p.take }

// pagedJSON copies a JSON value, cutting the arrays at the given paths ("" the value itself,
// "findings", "inventory.packages": keys of nested objects joined by dots) to their pages. It
// reads the value as a stream of tokens and copies only what it keeps, so its cost is the page.
func pagedJSON(data []byte, lists map[string]*pager) (json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var out bytes.Buffer
	if err := copyPaged(dec, &out, "", lists); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("trailing data after the stored JSON")
	}
	return out.Bytes(), nil
}

func copyPaged(dec *json.Decoder, out *bytes.Buffer, path string, lists map[string]*pager) error {
	if p, ok := lists[path]; ok {
		return copyPage(dec, out, p)
	}
	if !holdsList(path, lists) {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		out.Write(raw)
		return nil
	}
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		out.WriteString("null")
		return nil
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("%s: an object was expected, not %v", orTop(path), tok)
	}
	out.WriteByte('{')
	for first := true; dec.More(); first = false {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if !first {
			out.WriteByte(',')
		}
		k, _ := json.Marshal(key)
		out.Write(k)
		out.WriteByte(':')
		sub := key
		if path != "" {
			sub = path + "." + key
		}
		if err := copyPaged(dec, out, sub, lists); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return err
	}
	out.WriteByte('}')
	return nil
}

// holdsList says whether a list to cut is inside the object at path.
func holdsList(path string, lists map[string]*pager) bool {
	for l := range lists {
		if path == "" || strings.HasPrefix(l, path+".") {
			return true
		}
	}
	return false
}

// skipValue reads a JSON value and keeps nothing of it.
type skipValue struct{}

func (*skipValue) UnmarshalJSON([]byte) error { return nil }

func copyPage(dec *json.Decoder, out *bytes.Buffer, p *pager) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		out.WriteString("null")
		return nil
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("an array was expected, not %v", tok)
	}
	out.WriteByte('[')
	kept := 0
	for i := 0; dec.More(); i++ {
		if i < p.skip || i >= p.skip+p.take {
			if err := dec.Decode(&skipValue{}); err != nil {
				return err
			}
			p.total++
			continue
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if kept > 0 {
			out.WriteByte(',')
		}
		out.Write(raw)
		kept++
		p.total++
	}
	if _, err := dec.Token(); err != nil { // ']'
		return err
	}
	out.WriteByte(']')
	return nil
}

func orTop(path string) string {
	if path == "" {
		return "the stored value"
	}
	return path
}
