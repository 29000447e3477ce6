package inventory

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestNpmIdentity(t *testing.T) {
	tests := []struct {
		path, want string
		ok         bool
	}{
		{"app/node_modules/lodash/package.json", "lodash", true},
		{"node_modules/lodash/package.json", "lodash", true},
		{"app/node_modules/@types/node/package.json", "@types/node", true},
		{"app/node_modules/a/node_modules/lodash/package.json", "lodash", true},
		{"app/node_modules/.pnpm/lodash@4.17.15/node_modules/lodash/package.json", "lodash", true},
		{"app/node_modules/Lodash/package.json", "Lodash", true},     // require('lodash') does not find it; require('Lodash') does
		{"root/.node_modules/lodash/package.json", "lodash", true},   // $HOME/.node_modules, a global folder
		{"root/.node_libraries/@s/pkg/package.json", "@s/pkg", true}, // $HOME/.node_libraries
		{"opt/deps/lodash/package.json", "", false},                  // a module directory only if something makes it one
		{"root/.node_modules/.bin/package.json", "", false},
		{"app/package.json", "", false},
		{"app/node_modules/lodash/fp/package.json", "", false},
		{"app/node_modules/.bin/package.json", "", false},
		{"app/node_modules/@types/package.json", "", false},
		{"app/node_modules/@/x/package.json", "", false},
		{"app/node_modules/lodash/index.js", "", false},
	}
	for _, tt := range tests {
		got, ok := npmIdentity(tt.path)
		if got != tt.want || ok != tt.ok {
			t.Errorf("npmIdentity(%q) = %q, %v; want %q, %v", tt.path, got, ok, tt.want, tt.ok)
		}
	}
}

// The versions as node-semver 7.8.5 (npm 11's) reads them: new SemVer(v, {loose: true}).version.
func TestNpmVersion(t *testing.T) {
	tests := []struct{ in, want string }{
		{"4.17.15", "4.17.15"},
		{"=4.17.15", "4.17.15"},
		{"v4.17.15", "4.17.15"},
		{" 4.17.015 ", "4.17.15"},
		{"==v=4.17.15", "4.17.15"},
		{"v 4.17.15", "4.17.15"},
		{"= 4.17.15", "4.17.15"},
		{"\t4.17.15\n", "4.17.15"},
		{"\u00a04.17.15\ufeff", "4.17.15"},
		{"04.17.15", "4.17.15"},
		{"4.17.15+build.1", "4.17.15"},
		{"4.17.15-rc.1+x", "4.17.15-rc.1"},
		{"4.17.15beta", "4.17.15-beta"},
		{"4.17.15-01", "4.17.15-1"},
		{"4.17.15.1", "4.17.1-5.1"}, // semver's loose expression, backtracking included
		{"4.17.15-", "4.17.15--"},
		{"9007199254740991.0.0", "9007199254740991.0.0"},
		{"4.17", ""},
		{"V4.17.15", ""},
		{"4.17.15 -1", ""},
		{"latest", ""},
		{"", ""},
		{"9007199254740992.0.0", ""},
		{"1.2.3-" + strings.Repeat("a", 260), ""}, // longer than 256
	}
	for _, tt := range tests {
		got, err := npmVersion(tt.in)
		if tt.want == "" {
			if err == nil {
				t.Errorf("npmVersion(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("npmVersion(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestReadNpm(t *testing.T) {
	const bom = "\xef\xbb\xbf"
	tests := []struct {
		name     string
		identity string
		file     string
		want     []npmPackage
		wantErr  string // a part of the error
	}{
		{"plain", "lodash", `{"name":"lodash","version":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"a BOM, stripped as Node and npm do", "lodash", bom + `{"name":"lodash","version":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"a capitalised Version key is another key", "lodash", `{"name":"lodash","version":"4.17.15","Version":"4.17.21"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"only a capitalised Version key", "lodash", `{"name":"lodash","Version":"4.17.21"}`, nil, `no "version"`},
		{"an escaped key is the key", "lodash", `{"name":"lodash","\u0076ersion":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"the name Lodash", "lodash", `{"name":"Lodash","version":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}, {"Lodash", "4.17.15"}}, ""},
		{"another name (an alias)", "lodash", `{"name":"lodash-x","version":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}, {"lodash-x", "4.17.15"}}, ""},
		{"a name no package could have", "lodash", `{"name":" lodash","version":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"no name", "lodash", `{"version":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"a name that is not a string", "lodash", `{"name":["lodash"],"version":"4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"version =4.17.15", "lodash", `{"name":"lodash","version":"=4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"version v4.17.15", "lodash", `{"name":"lodash","version":"v4.17.15"}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"a scoped package", "@types/node", `{"name":"@types/node","version":"20.1.0"}`, []npmPackage{{"@types/node", "20.1.0"}}, ""},
		{"duplicate keys elsewhere", "lodash", `{"name":"lodash","version":"4.17.15","scripts":{"a":"1","a":"2"}}`, []npmPackage{{"lodash", "4.17.15"}}, ""},
		{"two version keys", "lodash", `{"name":"lodash","version":"4.17.21","version":"4.17.15"}`, nil, `2 "version" keys`},
		{"two name keys", "lodash", `{"name":"x","name":"lodash","version":"4.17.15"}`, nil, `2 "name" keys`},
		{"no version", "lodash", `{"name":"lodash"}`, nil, `no "version"`},
		{"a version that is a number", "lodash", `{"name":"lodash","version":4.17}`, nil, "not a string"},
		{"a version semver cannot read", "lodash", `{"name":"lodash","version":"latest"}`, nil, "not one npm's semver can read"},
		{"a trailing comma", "lodash", `{"name":"lodash","version":"4.17.15",}`, nil, "JSON.parse refuses"},
		{"a comment", "lodash", `{"name":"lodash",/* */"version":"4.17.15"}`, nil, "JSON.parse refuses"},
		{"two BOMs", "lodash", bom + bom + `{"name":"lodash","version":"4.17.15"}`, nil, "JSON.parse refuses"},
		{"a UTF-16 file", "lodash", "\xff\xfe{\x00}\x00", nil, "JSON.parse refuses"},
		{"an array", "lodash", `[{"name":"lodash","version":"4.17.15"}]`, nil, "not a JSON object"},
		{"text after the object", "lodash", `{"name":"lodash","version":"4.17.15"} {}`, nil, "JSON.parse refuses"},
		{"empty", "lodash", ``, nil, "JSON.parse refuses"},
		{"nested too deep", "lodash", `{"name":"lodash","version":"4.17.15","x":` + strings.Repeat("[", jsonMaxDepth+2) + strings.Repeat("]", jsonMaxDepth+2) + `}`, nil, "nested deeper"},
		// not a package Node resolves by name: reported as osv-scalibr does, or not at all
		{"an application's package.json", "", `{"name":"app","version":"1.0.0"}`, []npmPackage{{"app", "1.0.0"}}, ""},
		{"an application's, two versions: JSON.parse's last", "", `{"name":"app","version":"0.1.0","version":"1.0.0"}`, []npmPackage{{"app", "1.0.0"}}, ""},
		{"an application's without a version", "", `{"name":"app"}`, nil, ""},
		{"a VS Code extension", "", `{"name":"ext","version":"1.0.0","engines":{"vscode":"^1.80.0"}}`, nil, ""},
		{"a VS Code extension by its contributes", "", `{"name":"ext","version":"1.0.0","contributes":{}}`, nil, ""},
		{"a Unity package", "", `{"name":"com.unity.x","version":"1.0.0","unity":"2021.3"}`, nil, ""},
		{"engines without vscode", "", `{"name":"app","version":"1.0.0","engines":{"node":">=18"}}`, []npmPackage{{"app", "1.0.0"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readNpm(strings.NewReader(tt.file), tt.identity)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("readNpm = %v, %v; want an error with %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("readNpm: %v", err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("readNpm = %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("readNpm = %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestReadNpmBounded(t *testing.T) {
	big := `{"name":"lodash","version":"4.17.15","x":"` + strings.Repeat("a", npmMaxPackageJSON) + `"}`
	if _, err := readNpm(strings.NewReader(big), "lodash"); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("a package.json over the bound: %v", err)
	}
	long := `{"name":"lodash","version":"` + strings.Repeat("1", jsonMaxString+1) + `"}`
	if _, err := readNpm(strings.NewReader(long), "lodash"); err == nil {
		t.Error("a version longer than the bound was read")
	}
}

func TestNpmLockCheck(t *testing.T) {
	tests := []struct {
		name, lock string
		wantErr    string
	}{
		{"a lock", `{"name":"app","lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/lodash":{"version":"4.17.15","resolved":"https://registry.npmjs.org/lodash/-/lodash-4.17.15.tgz"},"node_modules/JSONStream":{"version":"1.3.5"}}}`, ""},
		{"a v1 lock", `{"lockfileVersion":1,"dependencies":{"lodash":{"version":"4.17.15","requires":{"x":"1"}}}}`, ""},
		{"Version beside version", `{"lockfileVersion":3,"packages":{"node_modules/lodash":{"version":"4.17.15","Version":"4.17.21"}}}`, `"Version"`},
		{"VERSION alone", `{"lockfileVersion":3,"packages":{"node_modules/lodash":{"VERSION":"4.17.21"}}}`, `"VERSION"`},
		{"a long s (U+017F) folds to s", `{"lockfileVersion":3,"packages":{"node_modules/lodash":{"version":"4.17.15","ver\u017fion":"4.17.21"}}}`, `ver`},
		{"Packages", `{"lockfileVersion":3,"Packages":{}}`, `"Packages"`},
		{"a BOM", "\xef\xbb\xbf" + `{"lockfileVersion":3}`, "byte order mark"},
		{"not JSON: npm refuses it too", `{"lockfileVersion":3,}`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := npmLockCheck(strings.NewReader(tt.lock))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("npmLockCheck = %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
	// what the check stands for: encoding/json does read the capitalised key into the field
	var lock struct {
		Packages map[string]struct {
			Version string `json:"version"`
		} `json:"packages"`
	}
	json.Unmarshal([]byte(tests[2].lock), &lock)
	if v := lock.Packages["node_modules/lodash"].Version; v != "4.17.21" {
		t.Errorf("encoding/json read version %q; the check assumes it takes the capitalised key's 4.17.21", v)
	}
}

// readJSON accepts exactly what encoding/json's Valid accepts (both follow RFC 8259; Valid has
// the same 10000-level nesting bound), a leading BOM aside, and keeps the last of a repeated
// key, as JSON.parse and encoding/json's map decoding do.
func FuzzReadJSON(f *testing.F) {
	for _, s := range []string{
		`{"name":"lodash","version":"4.17.15"}`, "\xef\xbb\xbf{}", `{"name":"a","name":"b"}`, `{"name":"\ud800\udc00"}`,
		`{"name":"\ud800\ud800\udc00x"}`, `{"name":"\u00e9\xff\xe2\x82"}`, `[1,-0,0.5e+3,true,false,null,"\n"]`, `{"a":01}`,
		`{"name":"x",}`, `"\u12"`, `{"name":{"name":1}}`, ` {"version" : "1.0.0" } `, "{\"a\":\"\x01\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := readJSON(bytes.NewReader(b), 1<<20, []string{"name"}, nil)
		body := bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
		if errors.Is(err, errJSONTooLarge) || err != nil && strings.Contains(err.Error(), "nested deeper") {
			return
		}
		if valid := json.Valid(body); valid != (err == nil) {
			t.Fatalf("readJSON error %v, json.Valid %v, for %q", err, valid, b)
		}
		if err != nil || !doc.object {
			return
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(body, &m) != nil {
			return
		}
		var name string
		if json.Unmarshal(m["name"], &name) != nil {
			return
		}
		vs := doc.members["name"]
		if len(vs) == 0 || vs[len(vs)-1].kind != '"' || vs[len(vs)-1].str != name {
			t.Fatalf("name %+v, encoding/json %q, for %q", vs, name, b)
		}
	})
}

// npmCanonical is the shape of SemVer's .version: numbers without leading zeros, a prerelease,
// no build.
var npmCanonical = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)

// npmVersion gives versions in SemVer's canonical shape that npm reads as themselves again.
func FuzzNpmVersion(f *testing.F) {
	for _, s := range []string{"=4.17.15", " v4.17.015 ", "1.2.3beta", "1.2.3-01.x+b", "4.17.15.1", "", "1.2", "\ufeff1.2.3"} {
		f.Add(s)
	}
	strict := npmCanonical
	f.Fuzz(func(t *testing.T, s string) {
		v, err := npmVersion(s)
		if err != nil {
			return
		}
		if !strict.MatchString(v) {
			t.Fatalf("npmVersion(%q) = %q, not a strict semver version", s, v)
		}
		if again, err := npmVersion(v); err != nil || again != v {
			t.Fatalf("npmVersion(%q) = %q, then %q, %v", s, v, again, err)
		}
	})
}
