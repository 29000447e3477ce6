package admission

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/manifest"
	"github.com/gatehouse-dev/gatehouse/proxy/route"
	"github.com/gatehouse-dev/gatehouse/proxy/scanning"
)

// input gathers the policy input for an image from its evidence: the manifest record, the image
// config, the scan's findings and vulnerabilities, the database it was matched with, the route.
func (p *Pipeline) input(ctx context.Context, rt route.Resolved, d digest.Digest, m manifest.Stored, ev scanning.Evidence) (policies.Input, error) {
	repo := rt.Name
	rec, err := p.Meta.ManifestGet(ctx, repo, d)
	if err != nil {
		return policies.Input{}, fmt.Errorf("manifest %s of %s: %w", d, repo, err)
	}
	sc := ev.Scan
	in := policies.Input{
		Image:           policies.Image{Digest: d.String(), MediaType: rec.MediaType, Repository: repo, Size: rec.Size, Annotations: rec.Annotations},
		Route:           policies.Route{Prefix: rt.Route.Prefix, Kind: string(rt.Route.Kind)},
		Scan:            policies.Scan{Scanner: sc.Scanner, Complete: sc.Complete, Error: sc.Error},
		Findings:        []policies.Finding{},
		Vulnerabilities: []policies.Vulnerability{},
		Settings:        p.Settings,
		Provenance:      policies.Provenance{Evaluated: false, Facts: []any{}},
		Now:             p.now().UTC().Format(time.RFC3339),
	}
	if err := p.imageConfig(ctx, repo, d, m, &in.Image); err != nil {
		return policies.Input{}, err
	}
	res := ev.Result
	if res == nil && len(sc.Result) > 0 {
		res = &scan.Result{}
		if err := json.Unmarshal(sc.Result, res); err != nil {
			return policies.Input{}, fmt.Errorf("stored scan of %s: %w", d, err)
		}
	}
	if res != nil {
		for _, f := range res.Findings {
			in.Findings = append(in.Findings, policies.Finding{Kind: f.Kind, ID: f.ID, Severity: f.Severity, Title: f.Title, Path: f.Path, Layer: f.Layer.String()})
		}
	}
	if len(sc.Vulns) > 0 {
		var found []vulndb.Finding
		if err := json.Unmarshal(sc.Vulns, &found); err != nil {
			return policies.Input{}, fmt.Errorf("stored vulnerabilities of %s: %w", d, err)
		}
		for _, v := range found {
			in.Vulnerabilities = append(in.Vulnerabilities, policies.Vulnerability{ID: v.ID, Aliases: v.Aliases, Severity: v.Severity, Score: v.Score, Ecosystem: v.Ecosystem,
				Package: v.Package, Installed: v.Installed, Fixed: v.Fixed, Path: v.Path, Layer: v.Layer.String(), Published: v.Published})
		}
	}
	// The database counts as present only if the image was matched with it (fail closed).
	in.Database.MaxAgeHours = p.MaxAge.Hours()
	if info, err := p.DB.Info(); err == nil && sc.DBVersion != "" {
		in.Database = policies.Database{Present: true, Version: sc.DBVersion, AgeHours: info.Age(p.now()).Hours(), MaxAgeHours: p.MaxAge.Hours()}
	}
	return in, nil
}

// imageConfig fills what the image config says (platform, user, ports, labels).
func (p *Pipeline) imageConfig(ctx context.Context, repo string, d digest.Digest, m manifest.Stored, img *policies.Image) error {
	if m.Config == nil || m.Config.Digest == "" {
		return nil
	}
	rc, _, err := p.Content.BlobOpen(ctx, repo, m.Config.Digest)
	if err != nil {
		return fmt.Errorf("config %s of %s: %w", m.Config.Digest, d, err)
	}
	defer rc.Close()
	var cfg v1.Image
	if err := json.NewDecoder(io.LimitReader(rc, 4<<20)).Decode(&cfg); err != nil {
		return nil // an artifact's config: nothing to say
	}
	img.Platform = policies.Platform{OS: cfg.OS, Architecture: cfg.Architecture}
	img.User, img.Labels = cfg.Config.User, cfg.Config.Labels
	for p := range cfg.Config.ExposedPorts {
		img.Ports = append(img.Ports, p)
	}
	sort.Strings(img.Ports)
	return nil
}
