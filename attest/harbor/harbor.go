package harbor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
)

// Media types of the adapter API.
const (
	scanRequestType = "application/vnd.scanner.adapter.scan.request+json; version=1.0"
	reportType      = "application/vnd.security.vulnerability.report; version=1.1"
)

// Client talks to one scanner adapter.
type Client struct {
	URL           string        // the adapter's base URL
	Authorization string        // sent to the adapter as the Authorization header ("" for none)
	HTTP          *http.Client  // default: 30 s timeout
	MaxWait       time.Duration // how long to wait for a report (default 10m)
}

// Scanner describes the adapter's scanner.
type Scanner struct {
	Name    string `json:"name"`
	Vendor  string `json:"vendor"`
	Version string `json:"version"`
}

// Metadata is what GET /api/v1/metadata answers.
type Metadata struct {
	Scanner      Scanner `json:"scanner"`
	Capabilities []struct {
		ConsumesMimeTypes []string `json:"consumes_mime_types"`
		ProducesMimeTypes []string `json:"produces_mime_types"`
	} `json:"capabilities"`
}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 30 * time.Second}
}

func (c *Client) do(ctx context.Context, method, path, contentType, accept string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if c.Authorization != "" {
		req.Header.Set("Authorization", c.Authorization)
	}
	// The report endpoint answers 302 while the scan runs: that is an answer, not a redirect.
	client := *c.http()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return client.Do(req)
}

func adapterError(what string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	msg := strings.TrimSpace(string(b))
	if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
	}
	return fmt.Errorf("scanner adapter: %s: %s: %s", what, resp.Status, msg)
}

// Metadata asks the adapter what it is.
func (c *Client) Metadata(ctx context.Context) (Metadata, error) {
	resp, err := c.do(ctx, http.MethodGet, "/api/v1/metadata", "", "application/vnd.scanner.adapter.metadata+json; version=1.0", nil)
	if err != nil {
		return Metadata{}, fmt.Errorf("scanner adapter: metadata: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Metadata{}, adapterError("metadata", resp)
	}
	var m Metadata
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return Metadata{}, fmt.Errorf("scanner adapter: metadata: %w", err)
	}
	return m, nil
}

// Image names what the adapter is to scan: where the registry is, how to authenticate to it,
// and the image.
type Image struct {
	RegistryURL   string // as the adapter reaches Gatehouse
	Authorization string // for the adapter's pulls from Gatehouse ("" for none)
	Repository    string
	Digest        digest.Digest
	MediaType     string
}

type report struct {
	Scanner         Scanner `json:"scanner"`
	Vulnerabilities []struct {
		ID          string   `json:"id"`
		Package     string   `json:"package"`
		Version     string   `json:"version"`
		FixVersion  string   `json:"fix_version"`
		Severity    string   `json:"severity"`
		Description string   `json:"description"`
		Links       []string `json:"links"`
	} `json:"vulnerabilities"`
}

// Scan asks the adapter to scan img, waits for the report, and returns its vulnerabilities as
// findings and the scanner's name.
func (c *Client) Scan(ctx context.Context, img Image) ([]vulndb.Finding, string, error) {
	req := map[string]any{
		"registry": map[string]string{"url": img.RegistryURL, "authorization": img.Authorization},
		"artifact": map[string]string{"repository": img.Repository, "digest": img.Digest.String(), "mime_type": img.MediaType},
	}
	body, _ := json.Marshal(req)
	resp, err := c.do(ctx, http.MethodPost, "/api/v1/scan", scanRequestType, "application/vnd.scanner.adapter.scan.response+json; version=1.0", body)
	if err != nil {
		return nil, "", fmt.Errorf("scanner adapter: scan request: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		defer resp.Body.Close()
		return nil, "", adapterError("scan request", resp)
	}
	var accepted struct {
		ID string `json:"id"`
	}
	err = json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	if err != nil || accepted.ID == "" {
		return nil, "", fmt.Errorf("scanner adapter: scan request: no scan id in the answer (%v)", err)
	}
	wait := c.MaxWait
	if wait == 0 {
		wait = 10 * time.Minute
	}
	deadline := time.Now().Add(wait)
	for {
		resp, err := c.do(ctx, http.MethodGet, "/api/v1/scan/"+accepted.ID+"/report", "", reportType, nil)
		if err != nil {
			return nil, "", fmt.Errorf("scanner adapter: report: %w", err)
		}
		switch resp.StatusCode {
		case http.StatusOK:
			var r report
			err := json.NewDecoder(resp.Body).Decode(&r)
			resp.Body.Close()
			if err != nil {
				return nil, "", fmt.Errorf("scanner adapter: report: %w", err)
			}
			return findings(r), r.Scanner.Name + " " + r.Scanner.Version, nil
		case http.StatusFound:
			resp.Body.Close()
			after := 2 * time.Second
			if s, err := strconv.Atoi(resp.Header.Get("Refresh-After")); err == nil && s > 0 {
				after = time.Duration(s) * time.Second
			}
			if time.Now().Add(after).After(deadline) {
				return nil, "", fmt.Errorf("scanner adapter: no report for %s after %s", img.Digest, wait)
			}
			select {
			case <-ctx.Done():
				return nil, "", ctx.Err()
			case <-time.After(after):
			}
		default:
			defer resp.Body.Close()
			return nil, "", adapterError("report", resp)
		}
	}
}

func findings(r report) []vulndb.Finding {
	out := make([]vulndb.Finding, 0, len(r.Vulnerabilities))
	for _, v := range r.Vulnerabilities {
		out = append(out, vulndb.Finding{ID: v.ID, Summary: v.Description, Severity: severity(v.Severity),
			Package: v.Package, Installed: v.Version, Fixed: v.FixVersion})
	}
	return out
}

// severity maps the adapter's scale (Unknown, Negligible, Low, Medium, High, Critical) to ours.
func severity(s string) string {
	switch strings.ToLower(s) {
	case "critical":
		return vulndb.Critical
	case "high":
		return vulndb.High
	case "medium":
		return vulndb.Medium
	case "low", "negligible":
		return vulndb.Low
	}
	return vulndb.Unknown
}
