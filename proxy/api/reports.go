package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/proxy/apierr"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// ReportSource is what scan reports read of the metadata store (storage/meta/sqlite implements it).
type ReportSource interface {
	ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error)
	VerdictGet(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error)
}

// VulnDB is the vulnerability database a scan report describes (attest/vulndb implements it).
type VulnDB interface {
	Info() (vulndb.Info, error)
}

// Sources says how the vulnerability database's sources stand (attest/vulndb.Feed implements it).
type Sources interface {
	State() []vulndb.SourceStatus
}

// reports is what WithReports configures.
type reports struct {
	src     ReportSource
	db      VulnDB
	maxAge  time.Duration
	sources Sources // nil: no feed
}

// VulnDBStatus is what GET /gatehouse/v1/vulndb answers: the database in place and its sources.
type VulnDBStatus struct {
	Database *DBStatus      `json:"database"`
	Records  int            `json:"records"`
	Newest   time.Time      `json:"newest,omitzero"`
	Imported time.Time      `json:"imported,omitzero"`
	Sources  []SourceStatus `json:"sources"`
}

// SourceStatus is one source of the database, as the management API shows it.
type SourceStatus struct {
	Name        string    `json:"name"`
	URL         string    `json:"url"`
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	Records     int       `json:"records"`
}

// Report is what GET /gatehouse/v1/scans/<digest> answers: the scan's summary and one page of
// each of its lists (packages, secrets, files not read, findings, vulnerabilities).
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
	Page      Page            `json:"page"`
}

// Page says which page of the lists a report holds and how long each list is: the report holds
// entries (Number-1)*Size to Number*Size-1 of each. A Link header (rel="next") names the next
// page while any list goes on.
type Page struct {
	Number          int `json:"number"`
	Size            int `json:"size"`
	Packages        int `json:"packages"`
	Secrets         int `json:"secrets"`
	Unread          int `json:"unread"`
	Findings        int `json:"findings"`
	Vulnerabilities int `json:"vulnerabilities"`
}

// Page sizes of a scan report: ?page_size= may ask for fewer, never more, so that a report stays
// bounded whatever the image holds (an image listing 1M packages made one of 362 MiB).
const (
	DefaultPageSize = 1000
	MaxPageSize     = 1000
)

// Verdict is the verdict recorded on the image in the repository it was scanned in.
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

// scanReport serves Gatehouse's management API, GET /gatehouse/v1/scans/<digest>[?page=N&page_size=M]
// (pages as Harbor's API numbers them: from 1, page_size at most MaxPageSize); any other path
// or method under /gatehouse/v1/ is 404 UNSUPPORTED. The stored result is read as a stream and
// only the page is copied, so a report costs its page, not the image's whole inventory.
func (h *Handler) scanReport(w http.ResponseWriter, r *http.Request, _ Target) error {
	rp := h.opts.reports
	if r.URL.Path == "/gatehouse/v1/vulndb" && r.Method == http.MethodGet {
		return h.vulndbStatus(w)
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/gatehouse/v1/scans/")
	if !ok || r.Method != http.MethodGet {
		return apierr.New(apierr.Unsupported, "no such endpoint: the management API answers GET /gatehouse/v1/scans/<digest> and GET /gatehouse/v1/vulndb").WithStatus(http.StatusNotFound)
	}
	d, err := digest.Parse(rest)
	if err != nil {
		return apierr.New(apierr.DigestInvalid, "%q is not a digest", rest)
	}
	pg, err := reportPageOf(r.URL.Query())
	if err != nil {
		return apierr.New(apierr.Unsupported, "%v", err).WithStatus(http.StatusBadRequest)
	}
	sc, err := rp.src.ScanGet(r.Context(), d)
	if errors.Is(err, meta.ErrNotFound) {
		return apierr.New(apierr.ManifestUnknown, "image %s has not been scanned (yet)", d)
	}
	if err != nil {
		return apierr.Unavailablef(err, "the metadata store did not answer")
	}
	rep := Report{Digest: sc.Digest, Repo: sc.Repo, Scanned: sc.Scanned, Scanner: sc.Scanner, Duration: sc.Duration.Round(time.Millisecond).String(),
		Complete: sc.Complete, Error: sc.Error, DBVersion: sc.DBVersion, Database: rp.dbStatus(), Page: Page{Number: pg.number, Size: pg.size}}
	more := false
	if len(sc.Result) > 0 {
		lists := map[string]*pager{"inventory.packages": pg.pager(), "inventory.secrets": pg.pager(), "inventory.unread": pg.pager(), "findings": pg.pager()}
		if rep.Result, err = pagedJSON(sc.Result, lists); err != nil {
			return apierr.Unavailablef(err, "the stored scan result cannot be read")
		}
		rep.Page.Packages, rep.Page.Secrets, rep.Page.Unread, rep.Page.Findings = lists["inventory.packages"].total, lists["inventory.secrets"].total, lists["inventory.unread"].total, lists["findings"].total
		for _, l := range lists {
			more = more || l.more()
		}
	}
	if len(sc.Vulns) > 0 {
		vulns := map[string]*pager{"": pg.pager()}
		if rep.Vulns, err = pagedJSON(sc.Vulns, vulns); err != nil {
			return apierr.Unavailablef(err, "the stored vulnerabilities cannot be read")
		}
		rep.Page.Vulnerabilities = vulns[""].total
		more = more || vulns[""].more()
	}
	if v, err := rp.src.VerdictGet(r.Context(), sc.Repo, d); err == nil {
		rep.Verdict = &Verdict{State: string(v.State), Decided: v.Decided, Policy: v.PolicyDigest, Decision: v.Decision}
	}
	if more {
		next := url.Values{"page": {strconv.Itoa(pg.number + 1)}, "page_size": {strconv.Itoa(pg.size)}}
		w.Header().Set("Link", fmt.Sprintf(`<%s?%s>; rel="next"`, r.URL.Path, next.Encode()))
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rep) // the status is sent: a client gone mid-body is not an error to answer
	return nil
}

// vulndbStatus serves GET /gatehouse/v1/vulndb: the database in place and each source's state.
func (h *Handler) vulndbStatus(w http.ResponseWriter) error {
	rp := h.opts.reports
	st := VulnDBStatus{Database: rp.dbStatus(), Sources: []SourceStatus{}}
	if info, err := rp.db.Info(); err == nil {
		st.Records, st.Newest, st.Imported = info.Records, info.Newest, info.Imported
	}
	if rp.sources != nil {
		for _, s := range rp.sources.State() {
			st.Sources = append(st.Sources, SourceStatus{Name: s.Name, URL: s.URL, LastAttempt: s.LastAttempt, LastSuccess: s.LastSuccess, LastError: s.LastError, Records: s.Records})
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(st)
}

// dbStatus describes the database in place; older than maxAge is stale.
func (rp *reports) dbStatus() *DBStatus {
	info, err := rp.db.Info()
	if err != nil {
		msg := err.Error()
		if errors.Is(err, vulndb.ErrNoDatabase) {
			msg = vulndb.ErrNoDatabase.Error()
		}
		return &DBStatus{Stale: true, Error: msg}
	}
	age := info.Age(time.Now())
	return &DBStatus{Version: info.Version, Age: age.Round(time.Second).String(), Stale: age > rp.maxAge}
}
