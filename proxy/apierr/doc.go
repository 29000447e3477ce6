// Package apierr turns Gatehouse's refusals into OCI Distribution error bodies.
//
// The codes and their default HTTP statuses come from one registry, distribution/v3's errcode
// package (STYLE.md §4); this package adds what that registry lacks: a per-error status override
// (413 for an oversized manifest, 416 for an out-of-order chunk) and one Write function that every
// handler's returned error passes through at the edge.
package apierr
