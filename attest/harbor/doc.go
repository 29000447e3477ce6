// Package harbor is a client of the Harbor pluggable scanner adapter API v1.1, so that an external
// scanner (a Trivy or Clair adapter) can stand in for the built-in one on a route: Gatehouse asks
// the adapter to scan an image it serves, polls for the report, and turns the report's
// vulnerabilities into findings.
//
// Spec: https://github.com/goharbor/pluggable-scanner-spec (api/spec/scanner-adapter-openapi-v1.1.yaml)
package harbor
