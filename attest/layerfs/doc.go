// Package layerfs flattens an image's layers, in order, into one directory tree for the scanners:
// whiteouts and opaque directories applied, later layers overriding earlier ones, and for every
// path the layer it came from and its SHA-256. It reads each layer once as a stream (gzip inflated
// on its own goroutine, zstd, or plain tar) and treats it as hostile: paths are cleaned and may
// not climb out, symlinks among an entry's directories are resolved lexically against what the
// layers recorded (an escape or a loop is an issue), the tree holds no symlink while it is
// written, and the kept symlinks are made at the end through an os.Root. Limits on expanded
// bytes, entries, file size, path length and time end the walk with an issue, never a crash or a
// write outside the tree. Callers choose which files are written at all (Options.Keep) and which
// are shown to them as they stream by (Options.Inspect).
package layerfs
