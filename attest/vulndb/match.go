package vulndb

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
	gocvss30 "github.com/pandatix/go-cvss/30"
	gocvss31 "github.com/pandatix/go-cvss/31"
	gocvss40 "github.com/pandatix/go-cvss/40"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
)

// Severities, most severe first.
const (
	Critical = "CRITICAL"
	High     = "HIGH"
	Medium   = "MEDIUM"
	Low      = "LOW"
	Unknown  = "UNKNOWN"
)

var severityRank = map[string]int{Critical: 4, High: 3, Medium: 2, Low: 1, Unknown: 0}

// Finding is one vulnerability of one installed package: all the ids that name it (CVE, GHSA,
// GO-…, DSA…), merged.
type Finding struct {
	ID        string        `json:"id"`                // the preferred id: a CVE if any names it
	Aliases   []string      `json:"aliases,omitempty"` // the other ids
	Summary   string        `json:"summary,omitempty"`
	Severity  string        `json:"severity"`
	Score     float64       `json:"score,omitempty"` // the highest CVSS base score among the merged records
	Ecosystem string        `json:"ecosystem"`
	Package   string        `json:"package"`
	Installed string        `json:"installed"`
	Fixed     string        `json:"fixed,omitempty"`     // the version that fixes it, when the records say
	Published string        `json:"published,omitempty"` // the earliest publication among the merged records (RFC 3339)
	Path      string        `json:"path"`
	Layer     digest.Digest `json:"layer,omitempty"`
}

// UncoveredID is the id of the finding Match makes for the packages of a distribution release
// the database has no advisory for (Debian:99, Ubuntu:99.04, or a database imported without
// that distribution): their vulnerabilities cannot be ruled out, and the policy denies it.
const UncoveredID = "GH-VULN-UNCOVERED"

// releaseEcosystem is an ecosystem of a distribution release, whose advisories name the release:
// the image's own os-release chooses it.
func releaseEcosystem(eco string) bool {
	distro, release, ok := strings.Cut(eco, ":")
	return ok && release != "" && (distro == "Debian" || distro == "Ubuntu")
}

// Match finds the vulnerabilities of each package in the database now in place, returning the
// findings and the database's version. It reads no layer: only the stored inventory.
func (d *DB) Match(ctx context.Context, pkgs []inventory.Package) ([]Finding, Info, error) {
	db, info, err := d.current()
	if err != nil {
		return nil, Info{}, err
	}
	var out []Finding
	uncovered := map[string][]inventory.Package{}
	for _, p := range pkgs {
		if p.Version == "" {
			continue
		}
		if releaseEcosystem(p.Ecosystem) {
			ok, err := d.covers(ctx, db, p.Ecosystem)
			if err != nil {
				return nil, Info{}, err
			}
			if !ok {
				uncovered[p.Ecosystem] = append(uncovered[p.Ecosystem], p)
				continue
			}
		}
		recs, err := candidates(ctx, db, p.Name, p.Source)
		if err != nil {
			return nil, Info{}, err
		}
		var hits []hit
		for _, r := range recs {
			if r.Withdrawn != "" {
				continue
			}
			for _, a := range r.Affected {
				if a.Package.Name != p.Name && a.Package.Name != p.Source {
					continue
				}
				if !ecosystemMatches(a.Package.Ecosystem, p.Ecosystem) {
					continue
				}
				version := p.Version
				if a.Package.Name != p.Name && p.SourceVersion != "" {
					version = p.SourceVersion // an advisory of the source package: its versions are the source's
				}
				if ok, fixed := a.affects(p.Ecosystem, version); ok {
					hits = append(hits, hit{r, a, fixed})
					break
				}
			}
		}
		out = append(out, merge(p, hits)...)
	}
	for eco, ps := range uncovered {
		out = append(out, Finding{ID: UncoveredID, Severity: "UNKNOWN", Ecosystem: eco, Package: ps[0].Name, Installed: ps[0].Version, Path: ps[0].Path, Layer: ps[0].Layer,
			Summary: fmt.Sprintf("the vulnerability database has no advisory for %s, the release of %d packages (%s %s at %s, ...): their vulnerabilities cannot be ruled out (a release advisories are not published for, or a database without that distribution's advisories)",
				eco, len(ps), ps[0].Name, ps[0].Version, ps[0].Path)})
	}
	sort.SliceStable(out, func(a, b int) bool {
		if ra, rb := severityRank[out[a].Severity], severityRank[out[b].Severity]; ra != rb {
			return ra > rb
		}
		return out[a].ID < out[b].ID
	})
	return out, info, nil
}

type hit struct {
	rec   Record
	aff   Affected
	fixed string
}

// merge joins the hits of one package whose ids or aliases overlap into single findings.
func merge(p inventory.Package, hits []hit) []Finding {
	parent := make([]int, len(hits))
	for i := range parent {
		parent[i] = i
	}
	find := func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	owner := map[string]int{}
	for i, h := range hits {
		for _, id := range append([]string{h.rec.ID}, h.rec.Aliases...) {
			if j, ok := owner[id]; ok {
				parent[find(i)] = find(j)
			} else {
				owner[id] = i
			}
		}
	}
	groups := map[int][]hit{}
	var order []int
	for i, h := range hits {
		r := find(i)
		if _, ok := groups[r]; !ok {
			order = append(order, r)
		}
		groups[r] = append(groups[r], h)
	}
	var out []Finding
	for _, r := range order {
		g := groups[r]
		ids := map[string]bool{}
		f := Finding{Severity: Unknown, Ecosystem: p.Ecosystem, Package: p.Name, Installed: p.Version, Path: p.Path, Layer: p.Layer}
		for _, h := range g {
			ids[h.rec.ID] = true
			for _, a := range h.rec.Aliases {
				ids[a] = true
			}
			if f.Summary == "" {
				f.Summary = h.rec.Summary
			}
			if f.Fixed == "" {
				f.Fixed = h.fixed
			}
			if p := h.rec.Published; p != "" && (f.Published == "" || p < f.Published) {
				f.Published = p
			}
			sev, score := severity(h.rec, h.aff)
			if severityRank[sev] > severityRank[f.Severity] {
				f.Severity = sev
			}
			f.Score = max(f.Score, score)
		}
		all := make([]string, 0, len(ids))
		for id := range ids {
			all = append(all, id)
		}
		sort.Slice(all, func(a, b int) bool {
			if pa, pb := idRank(all[a]), idRank(all[b]); pa != pb {
				return pa < pb
			}
			return all[a] < all[b]
		})
		f.ID, f.Aliases = all[0], all[1:]
		out = append(out, f)
	}
	return out
}

// idRank prefers CVE ids, then GHSA, then the rest.
func idRank(id string) int {
	switch {
	case strings.HasPrefix(id, "CVE-"):
		return 0
	case strings.HasPrefix(id, "GHSA-"):
		return 1
	}
	return 2
}

// severity rates a record: from its CVSS vectors (the affected entry's, then the record's), else
// from the rating the database gives.
func severity(r Record, a Affected) (string, float64) {
	best, bestScore := "", 0.0
	for _, s := range append(append([]Severity{}, a.Severity...), r.Severity...) {
		score, ok := cvssScore(s)
		if ok && (best == "" || score > bestScore) {
			best, bestScore = rating(score), score
		}
	}
	if best != "" {
		return best, bestScore
	}
	for _, s := range []string{a.EcosystemSpecific.Severity, a.EcosystemSpecific.Urgency, a.DBSpecific.Severity, r.DBSpecific.Severity} {
		switch strings.ToUpper(s) {
		case "CRITICAL":
			return Critical, 0
		case "HIGH", "IMPORTANT":
			return High, 0
		case "MODERATE", "MEDIUM":
			return Medium, 0
		case "LOW", "NEGLIGIBLE", "UNIMPORTANT":
			return Low, 0
		}
	}
	return Unknown, 0
}

func cvssScore(s Severity) (float64, bool) {
	switch {
	case strings.HasPrefix(s.Score, "CVSS:3.1/"):
		v, err := gocvss31.ParseVector(s.Score)
		if err == nil {
			return v.BaseScore(), true
		}
	case strings.HasPrefix(s.Score, "CVSS:3.0/"):
		v, err := gocvss30.ParseVector(s.Score)
		if err == nil {
			return v.BaseScore(), true
		}
	case strings.HasPrefix(s.Score, "CVSS:4.0/"):
		v, err := gocvss40.ParseVector(s.Score)
		if err == nil {
			return v.Score(), true
		}
	}
	return 0, false
}

func rating(score float64) string {
	switch {
	case score >= 9:
		return Critical
	case score >= 7:
		return High
	case score >= 4:
		return Medium
	case score > 0:
		return Low
	}
	return Unknown
}
