// Package layerfs flattens an image's layers, in order, into one directory tree for the scanners:
// whiteouts and opaque directories applied, later layers overriding earlier ones, and for every
// path the layer it came from and its SHA-256. It reads each layer once as a stream and treats
// it as hostile: writes are confined to the target directory (os.Root), and limits on expanded
// bytes, entries, file size, path length and time end the walk with an issue, never a crash or a
// write outside the tree.
package layerfs
