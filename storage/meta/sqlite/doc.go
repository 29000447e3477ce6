// Package sqlite is the embedded metadata store: one SQLite file (pure Go, no cgo) in WAL mode,
// with versioned migrations applied at open. It suits a single replica; several replicas share a
// PostgreSQL store that passes the same metatest suite.
package sqlite
