package policies

// Input is the one document a policy decides on; input.schema.json describes it.
type Input struct {
	Image           Image           `json:"image"`
	Route           Route           `json:"route"`
	Scan            Scan            `json:"scan"`
	Findings        []Finding       `json:"findings"`
	Vulnerabilities []Vulnerability `json:"vulnerabilities"`
	Database        Database        `json:"database"`
	Provenance      Provenance      `json:"provenance"`
	Settings        Settings        `json:"settings"`
	Now             string          `json:"now"` // RFC 3339
}

// Image is the image decided on.
type Image struct {
	Digest      string            `json:"digest"`
	MediaType   string            `json:"media_type"`
	Repository  string            `json:"repository"`
	Size        int64             `json:"size"`
	Platform    Platform          `json:"platform"`
	User        string            `json:"user"`
	Ports       []string          `json:"exposed_ports"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// Platform is the image's os and architecture.
type Platform struct {
	OS           string `json:"os"`
	Architecture string `json:"architecture"`
}

// Route is the route the image came through.
type Route struct {
	Prefix string `json:"prefix"`
	Kind   string `json:"kind"`
}

// Scan says how the scan went.
type Scan struct {
	Scanner  string `json:"scanner"`
	Complete bool   `json:"complete"`
	Error    string `json:"error"`
}

// Finding is a scan finding other than a vulnerability (secret, malware, config, layer).
type Finding struct {
	Kind     string `json:"kind"`
	ID       string `json:"id"`
	Severity string `json:"severity"`
	Title    string `json:"title"`
	Path     string `json:"path"`
	Layer    string `json:"layer"`
	Verified bool   `json:"verified"` // secrets: confirmed live (not done yet; always false)
}

// Vulnerability is one vulnerability of an installed package.
type Vulnerability struct {
	ID        string   `json:"id"`
	Aliases   []string `json:"aliases"`
	Severity  string   `json:"severity"`
	Score     float64  `json:"score"`
	Ecosystem string   `json:"ecosystem"` // OSV's: "Debian:12", "npm", ...
	Package   string   `json:"package"`
	Installed string   `json:"installed"`
	Fixed     string   `json:"fixed"`
	Path      string   `json:"path"`
	Layer     string   `json:"layer"`
	Published string   `json:"published"` // when the advisory was published (RFC 3339), "" if unknown
}

// Database describes the vulnerability database the image was matched with.
type Database struct {
	Present     bool    `json:"present"`
	Version     string  `json:"version"`
	AgeHours    float64 `json:"age_hours"`
	MaxAgeHours float64 `json:"max_age_hours"`
}

// Provenance holds verified facts about where the image came from. Signatures and attestations
// are verified by a later release; until then Evaluated is false and Facts empty.
type Provenance struct {
	Evaluated bool  `json:"evaluated"`
	Facts     []any `json:"facts"`
}

// Settings are the policy's parameters.
type Settings struct {
	HighFixGraceDays int `json:"high_fix_grace_days"`
}
