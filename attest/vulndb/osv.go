package vulndb

import (
	"strings"

	"github.com/google/osv-scalibr/semantic"
)

// Record is the part of an OSV record (https://ossf.github.io/osv-schema/) that matching uses.
type Record struct {
	ID         string     `json:"id"`
	Modified   string     `json:"modified"`
	Published  string     `json:"published,omitempty"`
	Withdrawn  string     `json:"withdrawn,omitempty"`
	Aliases    []string   `json:"aliases,omitempty"`
	Summary    string     `json:"summary,omitempty"`
	Severity   []Severity `json:"severity,omitempty"`
	Affected   []Affected `json:"affected"`
	DBSpecific struct {
		Severity string `json:"severity,omitempty"`
	} `json:"database_specific"`
}

// Severity is a scored severity (CVSS vectors).
type Severity struct {
	Type  string `json:"type"`
	Score string `json:"score"`
}

// Affected is one affected package of a record.
type Affected struct {
	Package struct {
		Ecosystem string `json:"ecosystem"`
		Name      string `json:"name"`
	} `json:"package"`
	Ranges            []Range    `json:"ranges,omitempty"`
	Versions          []string   `json:"versions,omitempty"`
	Severity          []Severity `json:"severity,omitempty"`
	EcosystemSpecific struct {
		Severity string `json:"severity,omitempty"`
		Urgency  string `json:"urgency,omitempty"` // Debian's rating
	} `json:"ecosystem_specific"`
	DBSpecific struct {
		Severity string `json:"severity,omitempty"`
	} `json:"database_specific"`
}

// Range is a list of events over versions.
type Range struct {
	Type   string  `json:"type"`
	Events []Event `json:"events"`
}

// Event is one boundary.
type Event struct {
	Introduced   string `json:"introduced,omitempty"`
	Fixed        string `json:"fixed,omitempty"`
	LastAffected string `json:"last_affected,omitempty"`
	Limit        string `json:"limit,omitempty"`
}

// ecosystemBase is "Debian" of "Debian:12".
func ecosystemBase(e string) string {
	b, _, _ := strings.Cut(e, ":")
	return b
}

// ecosystemMatches: an advisory for "Debian:12" applies to "Debian:12" packages; one for "Debian"
// to every Debian release; one for "Alpine:v3.20" to "Alpine:v3.20".
func ecosystemMatches(advisory, pkg string) bool {
	if advisory == pkg {
		return true
	}
	if !strings.Contains(advisory, ":") {
		return ecosystemBase(pkg) == advisory
	}
	return false
}

// affects reports whether the affected entry covers version (of a package in ecosystem), and
// the version that fixes it when known. This is the OSV evaluation: a listed version is affected;
// in an ECOSYSTEM or SEMVER range, with events sorted, introduced turns "affected" on, fixed (at
// or below the version) and last_affected (below it) turn it off, and a limit at or below the
// version puts it out of the range.
func (a Affected) affects(ecosystem, version string) (bool, string) {
	for _, v := range a.Versions {
		if v == version {
			return true, firstFixed(a)
		}
	}
	pv, err := semantic.Parse(version, ecosystem)
	if err != nil {
		return false, ""
	}
	// cmp compares the package's version with other; ok is false when they cannot be compared.
	cmp := func(other string) (int, bool) {
		c, err := pv.CompareStr(other)
		return c, err == nil
	}
	for _, r := range a.Ranges {
		if r.Type != "ECOSYSTEM" && r.Type != "SEMVER" {
			continue
		}
		status, limited := false, false
		for _, e := range sortedEvents(r.Events, ecosystem) {
			switch {
			case e.Introduced != "":
				if c, ok := cmp(e.Introduced); e.Introduced == "0" || ok && c >= 0 {
					status = true
				}
			case e.Fixed != "":
				if c, ok := cmp(e.Fixed); ok && c >= 0 {
					status = false
				}
			case e.LastAffected != "":
				if c, ok := cmp(e.LastAffected); ok && c > 0 {
					status = false
				}
			case e.Limit != "":
				if c, ok := cmp(e.Limit); ok && c >= 0 {
					limited = true
				}
			}
		}
		if !status || limited {
			continue
		}
		fixed := ""
		for _, e := range sortedEvents(r.Events, ecosystem) {
			if c, ok := cmp(e.Fixed); e.Fixed != "" && ok && c < 0 {
				fixed = e.Fixed
				break
			}
		}
		return true, fixed
	}
	return false, ""
}

func firstFixed(a Affected) string {
	for _, r := range a.Ranges {
		for _, e := range r.Events {
			if e.Fixed != "" {
				return e.Fixed
			}
		}
	}
	return ""
}

// sortedEvents orders events by version ("0" first), as the OSV evaluation requires.
func sortedEvents(events []Event, ecosystem string) []Event {
	out := append([]Event(nil), events...)
	key := func(e Event) string {
		for _, v := range []string{e.Introduced, e.Fixed, e.LastAffected, e.Limit} {
			if v != "" {
				return v
			}
		}
		return ""
	}
	less := func(a, b Event) bool {
		ka, kb := key(a), key(b)
		if ka == "0" {
			return kb != "0"
		}
		if kb == "0" {
			return false
		}
		va, err := semantic.Parse(ka, ecosystem)
		if err != nil {
			return ka < kb
		}
		c, err := va.CompareStr(kb)
		if err != nil {
			return ka < kb
		}
		return c < 0
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && less(out[j], out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}
