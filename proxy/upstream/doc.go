// Package upstream is Gatehouse's client for one upstream registry: manifests by tag or digest
// (HEAD and GET), blobs as streams, tag lists and referrers. Authentication — anonymous and
// bearer-token challenges, basic auth, credentials from a file or a Docker config.json — is
// go-containerregistry's transport; this package adds per-upstream timeouts, a typed error that
// tells "not there" from "cannot answer now", and honours 429 with Retry-After by not asking
// again until it has passed.
package upstream
