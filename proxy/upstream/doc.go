// Package upstream is Gatehouse's client for one upstream registry: manifests by tag or digest
// (HEAD and GET), blobs as streams, tag lists and referrers. Authentication — anonymous and
// bearer-token challenges, basic auth, credentials from a file or a Docker config.json — is
// go-containerregistry's transport; this package adds per-upstream timeouts, a typed error that
// tells "not there" from "cannot answer now" in its own words (never the upstream's), honours
// 429 with Retry-After by not asking again until it has passed, and bounds where an upstream
// can send it (egress.go): token realms on the registry's host or listed, no connection inside
// the network but to the upstream's own host:port, no credentials on a redirect elsewhere.
package upstream
