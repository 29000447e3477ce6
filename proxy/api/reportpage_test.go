package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

func TestPagedJSON(t *testing.T) {
	tests := []struct {
		name, in string
		lists    map[string]*pager
		want     string
		totals   map[string]int
	}{
		{"a page of nested and top-level lists", `{"digest":"d","inventory":{"packages":[1,2,3,4,5],"scanner":"s"},"findings":[{"a":1},{"b":2},{"c":[3]}],"blobs":["x"]}`,
			map[string]*pager{"inventory.packages": {skip: 2, take: 2}, "findings": {skip: 2, take: 2}},
			`{"digest":"d","inventory":{"packages":[3,4],"scanner":"s"},"findings":[{"c":[3]}],"blobs":["x"]}`,
			map[string]int{"inventory.packages": 5, "findings": 3}},
		{"past the end", `{"findings":[1,2]}`, map[string]*pager{"findings": {skip: 4, take: 2}}, `{"findings":[]}`, map[string]int{"findings": 2}},
		{"an external scan's null inventory", `{"inventory":null,"findings":[]}`, map[string]*pager{"inventory.packages": {take: 2}, "findings": {take: 2}},
			`{"inventory":null,"findings":[]}`, map[string]int{"inventory.packages": 0, "findings": 0}},
		{"an array itself", `[{"id":1},{"id":2},{"id":3}]`, map[string]*pager{"": {skip: 0, take: 2}}, `[{"id":1},{"id":2}]`, map[string]int{"": 3}},
		{"strings that look like structure", `{"findings":["]","[",",{"],"k\"ey":"v"}`, map[string]*pager{"findings": {skip: 1, take: 5}}, `{"findings":["[",",{"],"k\"ey":"v"}`, map[string]int{"findings": 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pagedJSON([]byte(tt.in), tt.lists)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
			for path, n := range tt.totals {
				if tt.lists[path].total != n {
					t.Errorf("%q: total %d, want %d", path, tt.lists[path].total, n)
				}
			}
		})
	}
	if _, err := pagedJSON([]byte(`{"findings":[1,2`), map[string]*pager{"findings": {take: 1}}); err == nil {
		t.Error("a truncated stored result was read")
	}
}

// TestReportPaged: a report holds one page of each list, says how long each is and links to the
// next page; a request for more than MaxPageSize is refused. A report of an image of 60,000
// packages costs its page, not the inventory.
func TestReportPaged(t *testing.T) {
	h, md := reportHandler(t, fakeVulnDB{})
	ctx := context.Background()
	const n = 60_000
	res := scan.Result{Digest: "sha256:x", Complete: true, Inventory: &inventory.Inventory{Secrets: []inventory.Secret{}}, Findings: []scan.Finding{}}
	for i := range n {
		res.Inventory.Packages = append(res.Inventory.Packages, inventory.Package{Ecosystem: "Debian:12", Name: fmt.Sprintf("package-%06d", i), Version: "1.0-1",
			Path: "var/lib/dpkg/status", Extractor: "os/dpkg", PURL: fmt.Sprintf("pkg:deb/debian/package-%06d@1.0-1", i)})
	}
	body, _ := json.Marshal(res)
	d := digest.FromString("many packages")
	if err := md.ScanPut(ctx, meta.Scan{Digest: d, Repo: "team/app", Scanned: time.Now(), Scanner: scan.Version, Complete: true, Result: body}); err != nil {
		t.Fatal(err)
	}
	vulns := "[" + strings.TrimSuffix(strings.Repeat(`{"id":"CVE-1"},`, 2500), ",") + "]"
	if err := md.ScanVulnsPut(ctx, d, "v1", []byte(vulns), time.Now()); err != nil {
		t.Fatal(err)
	}
	get := func(query string) (*httptest.ResponseRecorder, Report) {
		rec := request(h, "GET", "/gatehouse/v1/scans/"+d.String()+query)
		var rep Report
		if rec.Code == 200 {
			if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
				t.Fatal(err)
			}
		}
		return rec, rep
	}
	packagesOf := func(rep Report) []inventory.Package {
		var r scan.Result
		json.Unmarshal(rep.Result, &r)
		return r.Inventory.Packages
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rec, rep := get("")
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("stored result %d KiB; report %d KiB; one GET allocated %d KiB", len(body)>>10, rec.Body.Len()>>10, alloc>>10)
	if got := packagesOf(rep); len(got) != DefaultPageSize || got[0].Name != "package-000000" {
		t.Fatalf("first page: %d packages", len(got))
	}
	if rep.Page != (Page{Number: 1, Size: DefaultPageSize, Packages: n, Vulnerabilities: 2500}) {
		t.Errorf("page %+v", rep.Page)
	}
	if link := rec.Header().Get("Link"); link != `</gatehouse/v1/scans/`+d.String()+`?page=2&page_size=1000>; rel="next"` {
		t.Errorf("Link %q", link)
	}
	if rec.Body.Len() > 1<<20 {
		t.Errorf("a page of the report is %d bytes; want under 1 MiB", rec.Body.Len())
	}
	if alloc > uint64(2*len(body)+8<<20) {
		t.Errorf("one GET allocated %d KiB for a stored result of %d KiB; want it to cost the page, not copies of the whole", alloc>>10, len(body)>>10)
	}
	_, rep = get("?page=60&page_size=1000")
	if got := packagesOf(rep); len(got) != 1000 || got[999].Name != fmt.Sprintf("package-%06d", n-1) {
		t.Errorf("last page: %d packages", len(got))
	}
	if rec, _ := get("?page=61"); rec.Header().Get("Link") != "" {
		t.Errorf("a page past the end links to another: %q", rec.Header().Get("Link"))
	}
	for _, q := range []string{"?page_size=1001", "?page=0", "?page=x"} {
		if rec, _ := get(q); rec.Code != http.StatusBadRequest {
			t.Errorf("%s: status %d; want 400", q, rec.Code)
		}
	}
}
