// Package vulndb is Gatehouse's local vulnerability database: OSV records imported atomically
// from osv.dev's per-ecosystem all.zip archives or any directory of OSV JSON, indexed by
// ecosystem and package, and matched against stored inventories with each ecosystem's version
// rules (osv-scalibr's semantic package), CVSS-derived severity (go-cvss), fixed versions, and
// aliases (CVE, GHSA, GO-…) merged into one finding.
package vulndb
