package meta

import (
	"context"
	"errors"
	"time"

	"github.com/opencontainers/go-digest"
)

// ErrNotFound is returned when a repository, manifest or tag is not recorded.
var ErrNotFound = errors.New("not found")

// Manifest is what the metadata store knows of one manifest in one repository. Its bytes live in
// the content store; this is the index over them (tag resolution, referrers, listing).
type Manifest struct {
	Repo         string
	Digest       digest.Digest
	MediaType    string
	Size         int64
	ArtifactType string            // the manifest's artifactType, else its config media type (image manifests)
	Subject      digest.Digest     // "" when the manifest names no subject
	Annotations  map[string]string // copied into referrers responses
	Created      time.Time
}

// Page asks for one page of a lexically ordered listing: entries after Last, at most N (N <= 0: all).
type Page struct {
	Last string
	N    int
}

// Tag is a tag and when it was last written and last confirmed (for pull routes: by the upstream).
type Tag struct {
	Digest  digest.Digest
	Updated time.Time // when the tag last pointed somewhere new
	Checked time.Time // when the tag's digest was last written or confirmed
}

// Scan is the stored result of scanning one image (by manifest digest, whichever repository it
// came through): the scanner's output as it wrote it, and the vulnerabilities matched against a
// database version.
type Scan struct {
	Digest    digest.Digest
	Repo      string // the repository it was first scanned in (where its SBOM is attached)
	Scanned   time.Time
	Scanner   string
	Duration  time.Duration
	Complete  bool
	Error     string // non-empty: the scan failed, and why
	Result    []byte // the scanner's JSON (inventory, findings)
	DBVersion string // the vulnerability database Vulns were matched with; "" before any match
	Vulns     []byte // JSON
	Matched   time.Time
}

// State is where a verdict stands (DESIGN.md "Verdict states").
type State string

// The verdict states. Policy records Admitted or Quarantined; a reviewer Released or Rejected;
// Pending is a digest sent back to admission (it is admitted again when next asked for).
const (
	Pending     State = "pending"
	Admitted    State = "admitted"
	Quarantined State = "quarantined"
	Released    State = "released"
	Rejected    State = "rejected"
)

// Serves says whether a digest in this state may be served: admitted by policy or released by a
// reviewer.
func (s State) Serves() bool { return s == Admitted || s == Released }

// Reviewed says whether a person decided this state (policy never overrides it).
func (s State) Reviewed() bool { return s == Released || s == Rejected }

// Verdict is the admission decision on one manifest digest in one repository.
type Verdict struct {
	Repo         string
	Digest       digest.Digest
	State        State
	Decision     []byte // the policy's decision (JSON: allow, deny, warn)
	PolicyDigest string // the policy bundle it was reached under (IndexPolicy for an index)
	DBVersion    string // the vulnerability database it was decided under
	Decided      time.Time
}

// IndexPolicy is the policy digest recorded on an index's verdict: an index follows its children.
const IndexPolicy = "index: judged by its children"

// Audit is one recorded transition of a verdict.
type Audit struct {
	Time   time.Time
	Repo   string
	Digest digest.Digest
	Actor  string // "gatehouse" for policy decisions, a person for reviews
	From   State  // "" for the first verdict
	To     State
	Reason string
}

// The contract of a metadata store, by concern (storage/meta/sqlite implements it, and
// storage/meta/metatest checks every method of it). Consumers declare the few methods they use;
// these name the whole. Upload sessions are not here: their bytes and state live in the content
// store.
type (
	// Manifests indexes repositories, manifests, tags and referrers.
	Manifests interface {
		RepositoryPut(ctx context.Context, repo string) error
		RepositoryExists(ctx context.Context, repo string) (bool, error)
		Catalog(ctx context.Context, p Page) (repos []string, more bool, err error)
		ManifestPut(ctx context.Context, m Manifest, tags ...string) error
		ManifestGet(ctx context.Context, repo string, dgst digest.Digest) (Manifest, error)
		ManifestDelete(ctx context.Context, repo string, dgst digest.Digest) error
		TagGet(ctx context.Context, repo, tag string) (digest.Digest, error)
		TagList(ctx context.Context, repo string, p Page) (tags []string, more bool, err error)
		TagDelete(ctx context.Context, repo, tag string) error
		TagInfo(ctx context.Context, repo, tag string) (Tag, error)
		TagTouch(ctx context.Context, repo, tag string, dgst digest.Digest, at time.Time) error
		Referrers(ctx context.Context, repo string, subject digest.Digest, artifactType string) ([]Manifest, error)
	}
	// Scans keeps scan results (one per image digest) and their matched vulnerabilities.
	Scans interface {
		ScanPut(ctx context.Context, sc Scan) error
		ScanGet(ctx context.Context, d digest.Digest) (Scan, error)
		ScanVulnsPut(ctx context.Context, d digest.Digest, dbVersion string, vulns []byte, at time.Time) error
		ScansToMatch(ctx context.Context, dbVersion string, limit int) ([]digest.Digest, error)
	}
	// Verdicts keeps verdicts (one per repository and digest), the audit record of their
	// transitions, and the digest each fallback tag last served admitted.
	Verdicts interface {
		VerdictGet(ctx context.Context, repo string, d digest.Digest) (Verdict, error)
		VerdictSet(ctx context.Context, v Verdict, actor, reason string) error
		AuditList(ctx context.Context, repo string, d digest.Digest) ([]Audit, error)
		VerdictsStale(ctx context.Context, policyDigest, dbVersion string, limit int) ([]Verdict, error)
		VerdictsServed(ctx context.Context, repo string) ([]Verdict, error)
		VerdictRepos(ctx context.Context, d digest.Digest) ([]string, error)
		AdmittedTagSet(ctx context.Context, repo, tag string, d digest.Digest) error
		AdmittedTagGet(ctx context.Context, repo, tag string) (digest.Digest, error)
	}
	// Store is all of it.
	Store interface {
		Ping(ctx context.Context) error
		Close() error
		Manifests
		Scans
		Verdicts
	}
)
