// Package admission decides whether an image may be served: it gathers the stored evidence for
// one manifest digest (the image config, the scan's findings and vulnerabilities, the database it
// was matched with, the route), evaluates the policy on it, and records the verdict with an audit
// record of every transition. The gate that holds requests for it and enforces it on every path
// builds on this (issue 5).
package admission
