package vulndb

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzAffects: no package version an image declares (whoever built the image chose it) and no
// advisory's range makes the OSV evaluation panic. The versions are parsed with osv-scalibr's
// semantic package, per ecosystem. `go test` runs the seeds; `go test -fuzz FuzzAffects
// ./attest/vulndb/` searches further.
func FuzzAffects(f *testing.F) {
	for _, s := range []struct{ eco, version, introduced, fixed string }{
		{"Debian:12", "1:2.38.1-5+deb12u1", "0", "2.38.1-5+deb12u2"},
		{"Alpine:v3.20", "3.3.1-r0", "0", "3.3.2-r0"},
		{"npm", "4.17.15", "0", "4.17.19"},
		{"PyPI", "2.0.0rc1.post3.dev4", "1.0", "2.0.0"},
		{"Go", "v0.0.0-20200101000000-abcdefabcdef", "0", "0.17.0"},
		{"Maven", "1.2.3-SNAPSHOT", "1.0", "1.2.4"},
		{"RubyGems", "1.0.0.pre", "0", "1.0.1"},
		{"crates.io", "0.1.0-alpha.1+build", "0", "0.1.1"},
		{"Packagist", "v2.0.0-beta", "0", "2.0.1"},
		{"NuGet", "1.0.0.0", "0", "1.0.1"},
		{"Red Hat", "0:1.2.3-4.el9", "0", "0:1.2.3-5.el9"},
		{"Debian", "::::-----~~~~", "~", ":"},
		{"npm", "99999999999999999999999999.0.0", "0", "1"},
	} {
		f.Add(s.eco, s.version, s.introduced, s.fixed)
	}
	f.Fuzz(func(t *testing.T, eco, version, introduced, fixed string) {
		a := Affected{Versions: []string{fixed}, Ranges: []Range{
			{Type: "ECOSYSTEM", Events: []Event{{Introduced: introduced}, {Fixed: fixed}, {LastAffected: version}, {Limit: introduced}}},
			{Type: "SEMVER", Events: []Event{{Introduced: version}, {Fixed: introduced}}},
		}}
		a.affects(eco, version)
		sortedEvents(a.Ranges[0].Events, eco)
	})
}

// FuzzRecord: no OSV record (a database source is read whole into the store) makes the reading
// or the severity rating panic.
func FuzzRecord(f *testing.F) {
	files, _ := filepath.Glob("testdata/osv/*.json")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"id":"X","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"},{"type":"CVSS_V4","score":"CVSS:4.0/AV:N"}],"affected":[{"package":{"ecosystem":"npm","name":"x"}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		if json.Unmarshal(b, &r) != nil {
			return
		}
		for _, a := range r.Affected {
			severity(r, a)
			a.affects(a.Package.Ecosystem, "1.0.0")
		}
	})
}
