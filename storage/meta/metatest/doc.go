// Package metatest is the contract every metadata store implementation must pass: one suite,
// run by each implementation's own test against a fresh store.
package metatest
