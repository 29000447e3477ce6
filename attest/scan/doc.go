// Package scan is Gatehouse's built-in scanner: for one image it flattens the layers (layerfs),
// lists packages and secrets (inventory), checks the image config and every file against the
// rules below, and produces findings; vulnerability matching runs separately over the stored
// inventory (vulndb), so a database update re-matches an image without reading its layers again.
//
// Finding ids: GH-CFG-ROOT (runs as root), GH-CFG-REMOTE-SHELL (ssh, telnet, RDP or VNC port
// exposed), GH-CFG-ENV-SECRET (a secret in ENV), GH-CFG-SETUID (a setuid/setgid file),
// GH-CFG-PKG-MANAGER (a package manager left in the image), GH-SECRET-<DETECTOR> (a secret in a
// file, a label or the history, e.g. GH-SECRET-PRIVATEKEY, GH-SECRET-AWSACCESSKEY), GH-MALWARE (a file whose SHA-256 is on the known-bad list),
// GH-LAYER-<kind> (a hostile or over-limit layer entry; GH-LAYER-INCOMPLETE when the scan stopped).
package scan
