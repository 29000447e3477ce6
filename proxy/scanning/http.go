package scanning

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Report is what GET /gatehouse/v1/scans/<digest> answers.
type Report struct {
	Digest    digest.Digest   `json:"digest"`
	Repo      string          `json:"repository"`
	Scanned   time.Time       `json:"scanned"`
	Scanner   string          `json:"scanner"`
	Duration  string          `json:"duration"`
	Complete  bool            `json:"complete"`
	Error     string          `json:"error,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"` // inventory and findings
	Vulns     json.RawMessage `json:"vulnerabilities,omitempty"`
	DBVersion string          `json:"database_version,omitempty"`
	Database  *DBStatus       `json:"database"`
	Verdict   *Verdict        `json:"verdict,omitempty"`
}

// Verdict is the admission decision recorded for the image in the repository it was scanned in.
type Verdict struct {
	State    string          `json:"state"`
	Decided  time.Time       `json:"decided"`
	Policy   string          `json:"policy"`
	Decision json.RawMessage `json:"decision"`
}

// DBStatus describes the vulnerability database in place.
type DBStatus struct {
	Version string `json:"version,omitempty"`
	Age     string `json:"age,omitempty"`
	Stale   bool   `json:"stale"`
	Error   string `json:"error,omitempty"`
}

// Handler serves scan reports under /gatehouse/v1/scans/<digest>; maxAge marks the database stale.
func (s *Service) Handler(maxAge time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/gatehouse/v1/scans/")
		if !ok || r.Method != http.MethodGet {
			apierr.Write(w, r, apierr.New(apierr.Unsupported, "no such endpoint: the management API answers GET /gatehouse/v1/scans/<digest>").WithStatus(http.StatusNotFound))
			return
		}
		d, err := digest.Parse(rest)
		if err != nil {
			apierr.Write(w, r, apierr.New(apierr.DigestInvalid, "%q is not a digest", rest))
			return
		}
		sc, err := s.meta.ScanGet(r.Context(), d)
		if errors.Is(err, meta.ErrNotFound) {
			apierr.Write(w, r, apierr.New(apierr.ManifestUnknown, "image %s has not been scanned (yet)", d))
			return
		}
		if err != nil {
			apierr.Write(w, r, apierr.Unavailablef(err, "the metadata store did not answer"))
			return
		}
		rep := Report{Digest: sc.Digest, Repo: sc.Repo, Scanned: sc.Scanned, Scanner: sc.Scanner, Duration: sc.Duration.Round(time.Millisecond).String(),
			Complete: sc.Complete, Error: sc.Error, Result: sc.Result, Vulns: sc.Vulns, DBVersion: sc.DBVersion, Database: s.dbStatus(maxAge)}
		if v, err := s.meta.VerdictGet(r.Context(), sc.Repo, d); err == nil {
			rep.Verdict = &Verdict{State: v.State, Decided: v.Decided, Policy: v.PolicyDigest, Decision: v.Decision}
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	})
}

func (s *Service) dbStatus(maxAge time.Duration) *DBStatus {
	info, err := s.db.Info()
	if err != nil {
		msg := err.Error()
		if errors.Is(err, vulndb.ErrNoDatabase) {
			msg = vulndb.ErrNoDatabase.Error()
		}
		return &DBStatus{Stale: true, Error: msg}
	}
	age := info.Age(time.Now())
	return &DBStatus{Version: info.Version, Age: age.Round(time.Second).String(), Stale: age > maxAge}
}
