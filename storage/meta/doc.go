// Package meta defines Gatehouse's metadata records — repositories, manifests with their subjects,
// and tags — and the errors every metadata store returns. Implementations live in subpackages
// (sqlite, and later postgres); metatest holds the one test suite they all pass.
package meta
