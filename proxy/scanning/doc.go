// Package scanning scans every image manifest that enters Gatehouse, by push or by first pull,
// once per digest: it reads the config and layers from the store (fetching a pull route's layers
// through the fill, so the upstream is still read once), runs the scanner, records the result,
// matches the inventory against the vulnerability database, and attaches a CycloneDX SBOM as an
// OCI referrer of the image. When the database changes, every stored inventory is re-matched
// without reading a layer again.
package scanning
