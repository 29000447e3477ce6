package api

import (
	"encoding/json"
	"testing"
)

// FuzzPagedJSON: no stored value makes the report's pager panic, and what it returns is JSON.
func FuzzPagedJSON(f *testing.F) {
	for _, s := range []string{
		`{"digest":"d","inventory":{"packages":[{"name":"a"},{"name":"b"}],"secrets":[],"unread":null,"scanner":"s"},"findings":[{"id":"x"}],"blobs":["b"]}`,
		`{"inventory":null,"findings":null}`,
		`[{"id":"CVE-1"},{"id":"CVE-2"}]`,
		`{"inventory":{"packages":{"not":"a list"}}}`,
		`{"findings":["]",{"[":"}"},1e400,-0,"\u0000"]}`,
		`{"a":1}{"b":2}`,
	} {
		f.Add([]byte(s), 1, 1)
	}
	f.Fuzz(func(t *testing.T, b []byte, skip, take int) {
		if skip < 0 || take < 1 || skip > 1<<20 || take > 1<<20 {
			return
		}
		for _, lists := range []map[string]*pager{
			{"inventory.packages": {skip: skip, take: take}, "inventory.secrets": {skip: skip, take: take}, "findings": {skip: skip, take: take}},
			{"": {skip: skip, take: take}},
		} {
			out, err := pagedJSON(b, lists)
			if err != nil {
				continue
			}
			if !json.Valid(out) {
				t.Fatalf("pagedJSON(%q) = %q: not JSON", b, out)
			}
		}
	})
}
