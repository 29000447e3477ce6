// Package manifest checks OCI and Docker manifests before Gatehouse stores them, whether a client
// pushed them or an upstream served them: the media type, the JSON shape, every descriptor, and
// what the index needs (referenced blobs and manifests, subject, artifact type, annotations).
package manifest
