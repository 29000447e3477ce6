// Package integration holds Gatehouse's end-to-end tests against real servers and real clients
// (the OCI conformance suite, crane, oras, skopeo, cosign, the CNCF distribution registry),
// built with the "integration" tag, and the benchmark command in ./bench. The tools are put in
// place by tools/install.sh; run.sh runs everything the README promises.
package integration
