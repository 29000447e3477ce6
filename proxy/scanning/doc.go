// Package scanning runs scans and stores their evidence, once per image digest: it reads the
// config and every layer from the store (fetching a pull route's blobs through the fill, so the
// upstream is still read once), runs the built-in scanner or the route's external one in a
// bounded number of slots, records the result (or the failure), and matches the inventory
// against the vulnerability database in place (Match reads the stored result, never a layer).
// It returns evidence; what becomes of the image is admission's (proxy/admission).
package scanning
