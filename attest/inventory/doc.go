// Package inventory lists what is inside a flattened image: OS packages (dpkg, apk, rpm) and
// language packages (Go binaries, npm, Python, Java, Cargo, RubyGems, Composer, .NET), each with
// the path and layer it came from, and secrets, each with a fingerprint keyed by the
// installation (Fingerprinter) in place of its value. Extraction is osv-scalibr's, run over the
// tree layerfs built and read only through an os.Root, so an image's symlinks never reach the
// host's files; executables are kept for it only when their (boundedly read) ELF sections show
// Go build info or cargo-auditable data.
package inventory
