// Package scan is Gatehouse's built-in scanner: for one image it flattens the layers (layerfs),
// lists packages and secrets (inventory), checks the image config and every file against the
// rules below, and produces findings; vulnerability matching runs separately over the stored
// inventory (vulndb), so a database update re-matches an image without reading its layers again.
//
// Finding ids: GH-CFG-ROOT (runs as root), GH-CFG-REMOTE-SHELL (ssh, telnet, RDP or VNC port
// exposed), GH-CFG-ENV-SECRET (a secret in ENV), GH-CFG-SETUID (a setuid/setgid file),
// GH-CFG-PKG-MANAGER (a package manager left in the image), GH-SECRET-<DETECTOR> (a secret in a
// file of any layer, a label or the history, e.g. GH-SECRET-PRIVATEKEY, GH-SECRET-AWSACCESSKEY),
// GH-MALWARE (a file whose SHA-256 is on the known-bad list, in any layer, even one a later layer
// removes: the layer's blob still holds it), GH-LAYER-<KIND> (a layerfs issue: ESCAPE and SPECIAL
// are hostile or odd entries placed as containerd places them; LIMIT, TRUNCATED, UNREADABLE,
// TOOLONG, SPARSE, UNSUPPORTED, LOOP, INVALID, AMBIGUOUS, UNWRITABLE and UNCHECKED say what could
// not be read as a runtime reads it, and make the scan incomplete, summed up by
// GH-LAYER-INCOMPLETE), GH-SCAN-UNREAD (a file the inventory could not read: an extractor's
// error, or a bound such as scan.max_metadata_file or scan.max_packages; it names the extractor)
// and GH-SCAN-LIMIT (more findings than Scanner.MaxFindings: the gravest are kept), both making
// the scan incomplete. A panic anywhere in a scan, or a scan past Limits.Timeout, fails it (an
// *inventory.PanicError, a *TimeoutError) instead of the process. Secrets' values are never
// kept: a fingerprint keyed with the installation's key (Scanner.FingerprintKey) stands for them.
package scan
