// Package content keeps blob and manifest bytes through distribution/v3's registry/storage and its
// storage drivers (filesystem, inmemory, and by configuration s3-aws, gcs, azure). Blobs, uploads
// and cross-repository mounts use distribution's linked blob store; manifest bytes are stored
// content-addressed under Gatehouse's own prefix, because the index over them (tags, referrers,
// verdicts) lives in the metadata store.
package content
