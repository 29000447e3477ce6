package admission

import (
	"context"
	"encoding/json"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/gatehouse-dev/gatehouse/attest/sbom"
	"github.com/gatehouse-dev/gatehouse/attest/scan"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// attachSBOM stores the image's CycloneDX and SPDX SBOMs, made from a fresh scan, as OCI 1.1
// referrers of it in repo.
func (p *Pipeline) attachSBOM(ctx context.Context, repo string, d digest.Digest, res *scan.Result) error {
	cdx, err := sbom.CycloneDX(repo, d, res.Inventory, res.Started)
	if err != nil {
		return err
	}
	if err := p.attach(ctx, repo, d, res, cdx, sbom.MediaType, "sbom.cdx.json"); err != nil {
		return err
	}
	spdxDoc, err := sbom.SPDX(repo, d, res.Inventory, res.Started)
	if err != nil {
		return err
	}
	return p.attach(ctx, repo, d, res, spdxDoc, sbom.SPDXMediaType, "sbom.spdx.json")
}

// attach stores doc as an artifact whose subject is image d.
func (p *Pipeline) attach(ctx context.Context, repo string, d digest.Digest, res *scan.Result, doc []byte, mediaType, title string) error {
	empty := []byte("{}")
	for _, b := range [][]byte{doc, empty} {
		if err := p.putBlob(ctx, repo, b); err != nil {
			return err
		}
	}
	m := v1.Manifest{
		MediaType:    v1.MediaTypeImageManifest,
		ArtifactType: mediaType,
		Config:       v1.Descriptor{MediaType: v1.MediaTypeEmptyJSON, Digest: digest.FromBytes(empty), Size: int64(len(empty))},
		Layers: []v1.Descriptor{{MediaType: mediaType, Digest: digest.FromBytes(doc), Size: int64(len(doc)),
			Annotations: map[string]string{v1.AnnotationTitle: title}}},
		Subject:     &v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: d},
		Annotations: map[string]string{v1.AnnotationCreated: res.Started.Format(time.RFC3339), "dev.gatehouse.scanner": res.Scanner},
	}
	m.SchemaVersion = 2
	if rec, err := p.Meta.ManifestGet(ctx, repo, d); err == nil {
		m.Subject.MediaType, m.Subject.Size = rec.MediaType, rec.Size
	}
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	md := digest.FromBytes(body)
	if err := p.Content.ManifestPut(ctx, md, body); err != nil {
		return err
	}
	return p.Meta.ManifestPut(ctx, meta.Manifest{Repo: repo, Digest: md, MediaType: v1.MediaTypeImageManifest, Size: int64(len(body)),
		ArtifactType: mediaType, Subject: d, Annotations: m.Annotations, Created: time.Now().UTC()})
}

func (p *Pipeline) putBlob(ctx context.Context, repo string, b []byte) error {
	d := digest.FromBytes(b)
	if _, err := p.Content.BlobStat(ctx, repo, d); err == nil {
		return nil
	}
	u, err := p.Content.UploadCreate(ctx, repo)
	if err != nil {
		return err
	}
	if _, err := u.Write(b); err != nil {
		u.Cancel(ctx)
		return err
	}
	_, err = p.Content.BlobCommit(ctx, u, d)
	return err
}
