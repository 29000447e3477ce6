package meta

import (
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

// Verdict states (DESIGN.md "Verdict states").
const (
	Pending     = "pending"
	Admitted    = "admitted"
	Quarantined = "quarantined"
	Released    = "released"
	Rejected    = "rejected"
)

// Verdict is the admission decision on one manifest digest in one repository.
type Verdict struct {
	Repo         string
	Digest       digest.Digest
	State        string
	Decision     []byte // the policy's decision (JSON: allow, deny, warn)
	PolicyDigest string // the policy bundle it was decided under
	DBVersion    string // the vulnerability database it was decided under
	Decided      time.Time
}

// Audit is one recorded transition of a verdict.
type Audit struct {
	Time   time.Time
	Repo   string
	Digest digest.Digest
	Actor  string // "gatehouse" for policy decisions, a person for reviews
	From   string // "" for the first verdict
	To     string
	Reason string
}
