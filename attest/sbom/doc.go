// Package sbom writes an image's inventory as a CycloneDX 1.6 JSON SBOM, the document Gatehouse
// attaches to every scanned image as an OCI 1.1 referrer (artifactType
// application/vnd.cyclonedx+json).
package sbom
