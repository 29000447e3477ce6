// Package api is Gatehouse's HTTP face for the OCI Distribution Specification v1.1: it routes
// /v2/ requests (gorilla/mux over the pure ParsePath), checks every input against the spec's
// grammars and the configured limits, and keeps content in a content store and its index in a
// metadata store. Handlers return errors; one wrapper turns them into OCI error bodies, logs
// them with the request ID and counts them in Prometheus metrics.
//
// Spec: https://github.com/opencontainers/distribution-spec/blob/v1.1.1/spec.md
package api
