// Package pull fills the local store from a pull route's upstream, so that each manifest and blob
// is read from the upstream once: manifests by digest are immutable once fetched; tags are
// revalidated with a HEAD after the route's TTL and, while the upstream cannot answer, served
// from the cache for at most the route's max staleness; a blob is streamed to the first client
// and to storage together, verified against its digest before its last byte is released, and
// concurrent requests for it wait for that one read. The signatures, attestations and SBOMs the
// upstream holds for a manifest (cosign's tags and OCI referrers) are fetched with it.
package pull
