// Package layerfs flattens an image's layers, in order, into one directory tree for the scanners,
// reading each layer as containerd's unpacking does (pkg/archive/tar.go's Apply): names cleaned
// and placed under the root before any limit applies, directories resolved through the symlinks
// the layers made (bounded to the root; an entry named through a lower layer's symlink is placed
// as the native snapshotter places it and is Ambiguous, since overlay snapshotters, which unpack
// each layer into an empty directory, hide that symlink instead), later entries replacing earlier ones, whiteouts and
// opaque directories removing what lower layers wrote. Every path keeps the layer it came from
// and its SHA-256, and every regular file each layer wrote is listed (Result.Written) even when a
// later layer removes it: the layer's blob still holds it.
//
// Layers are hostile: the tree holds no symlink while it is written, kept symlinks are made at
// the end through an os.Root, and nothing is written outside it. What the scanner cannot read as
// a runtime would — an entry containerd refuses, a sparse or unknown entry, a path still too long
// once cleaned, a file over the size limit, a whiteout readers disagree on — is an Issue whose
// Kind makes the result Incomplete. Limits on bytes, entries and time end the walk the same way.
// Callers choose which files are written at all (Options.Keep, deciding from a file's bytes on
// disk when they must) and which are shown to them as they stream by (Options.Inspect). Links
// resolve to what the runtime reads: a hard link or a path under a symlink that Keep wants gets
// the file's bytes there even when the file's own name was not wanted (read again from its
// layer if they were not kept), symlinks resolved as the kernel resolves them inside the
// container, with loops and multiplying links bounded and reported.
package layerfs
