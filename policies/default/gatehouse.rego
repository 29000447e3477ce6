# Gatehouse's default admission policy. Input: policies/input.schema.json. Output:
# data.gatehouse.decision = {allow, deny, warn}, each reason {rule, message, evidence}.
package gatehouse

import rego.v1

default allow := false

allow if count(deny) == 0

decision := {"allow": allow, "deny": deny, "warn": warn}

# --- fail closed: no verdict without complete evidence ---

deny contains reason("GH-POL-DB-MISSING", "no vulnerability database has been imported, so vulnerabilities cannot be ruled out (the server updates it from vulndb.sources; or run gatehouse db update)", input.database) if {
	not input.database.present
}

deny contains reason("GH-POL-DB-STALE", sprintf("the vulnerability database is %v hours old; the limit is %v (the server updates it from vulndb.sources; or run gatehouse db update)", [round(input.database.age_hours), round(input.database.max_age_hours)]), input.database) if {
	input.database.present
	input.database.age_hours > input.database.max_age_hours
}

deny contains reason("GH-POL-SCAN-FAILED", sprintf("the image could not be scanned: %s", [input.scan.error]), input.scan) if {
	input.scan.error != ""
}

# An incomplete scan names what it could not read: the layer findings that made it incomplete.
deny contains reason("GH-POL-SCAN-INCOMPLETE", sprintf("the scan could not read everything: %s", [unread_summary]), {"scan": input.scan, "findings": unread_list}) if {
	input.scan.error == ""
	incomplete
	count(unread_list) > 0
}

deny contains reason("GH-POL-SCAN-INCOMPLETE", "the scan stopped before the end of the image (a limit or a broken layer); what it did not read is unknown", input.scan) if {
	input.scan.error == ""
	not input.scan.complete
	count(unread_list) == 0
}

# --- what the scan found ---

deny contains reason("GH-POL-MALWARE", sprintf("%s at %s", [f.title, f.path]), f) if {
	some f in input.findings
	f.kind == "malware"
}

deny contains reason("GH-POL-HOSTILE-LAYER", sprintf("%s: %s", [f.path, f.title]), f) if {
	some f in input.findings
	f.kind == "layer"
	f.id in {"GH-LAYER-ESCAPE", "GH-LAYER-LOOP"}
}

# A private key is a secret whether or not it is in use; other secrets are denied once verified
# live, and warned about until then.
deny contains reason("GH-POL-SECRET", sprintf("%s in %s", [f.id, f.path]), f) if {
	some f in input.findings
	f.kind == "secret"
	f.id == "GH-SECRET-PRIVATEKEY"
}

deny contains reason("GH-POL-SECRET", sprintf("a verified %s in %s", [f.id, f.path]), f) if {
	some f in input.findings
	f.kind == "secret"
	f.verified
}

warn contains reason("GH-POL-SECRET-UNVERIFIED", sprintf("%s in %s (not verified live)", [f.id, f.path]), f) if {
	some f in input.findings
	f.kind == "secret"
	f.id != "GH-SECRET-PRIVATEKEY"
	not f.verified
}

# The image's os-release names a release no advisory of the database covers (Debian:99, or a
# database imported without that distribution): its packages' vulnerabilities cannot be ruled out.
deny contains reason("GH-POL-RELEASE-UNCOVERED", sprintf("the vulnerability database has no advisory for %s, the release of %s %s at %s and the image's other packages of it: their vulnerabilities cannot be ruled out", [v.ecosystem, v["package"], v.installed, v.path]), v) if {
	some v in input.vulnerabilities
	v.id == "GH-VULN-UNCOVERED"
}

deny contains reason("GH-POL-CRITICAL-FIXABLE", vuln_message(v), v) if {
	some v in input.vulnerabilities
	v.severity == "CRITICAL"
	v.fixed != ""
}

# A high-severity vulnerability is denied once its fix has been out longer than the grace period.
deny contains reason("GH-POL-HIGH-FIXABLE", sprintf("%s; the fix has been available for %d days (grace: %d)", [vuln_message(v), days_since(v.published), input.settings.high_fix_grace_days]), v) if {
	some v in input.vulnerabilities
	v.severity == "HIGH"
	v.fixed != ""
	v.published != ""
	days_since(v.published) > input.settings.high_fix_grace_days
}

warn contains reason("GH-POL-LAYER", sprintf("%s: %s (%s)", [f.path, f.title, f.id]), f) if {
	some f in input.findings
	f.kind == "layer"
	f.id == "GH-LAYER-SPECIAL"
}

warn contains reason("GH-POL-CONFIG", sprintf("%s (%s)", [f.title, f.id]), f) if {
	some f in input.findings
	f.kind == "config"
}

warn contains reason("GH-POL-PROVENANCE", "provenance is not verified yet (signatures and attestations are checked by a later release)", input.provenance) if {
	not input.provenance.evaluated
}

# --- helpers ---

# The layer findings that mean part of the image was not read as a runtime reads it (attest/layerfs
# issue kinds that make a scan incomplete); the others (GH-LAYER-ESCAPE, GH-LAYER-SPECIAL) are
# judged above, and GH-LAYER-INCOMPLETE only says that the scan was cut short. Every "scan"
# finding (GH-SCAN-UNREAD: a file the inventory could not read) is one too.
unread_ids := {
	"GH-LAYER-LIMIT", "GH-LAYER-TRUNCATED", "GH-LAYER-UNREADABLE", "GH-LAYER-TOOLONG", "GH-LAYER-SPARSE",
	"GH-LAYER-UNSUPPORTED", "GH-LAYER-LOOP", "GH-LAYER-INVALID", "GH-LAYER-AMBIGUOUS", "GH-LAYER-UNWRITABLE",
	"GH-LAYER-UNCHECKED",
}

# A scan is incomplete when it says so, or when it names a file it could not read (whatever it says).
incomplete if not input.scan.complete

incomplete if {
	some f in input.findings
	f.kind == "scan"
}

unread_list := array.concat(
	[f | some f in input.findings; f.kind == "layer"; f.id in unread_ids],
	[f | some f in input.findings; f.kind == "scan"],
)

# At most five are named; the evidence holds them all.
unread_named := sort([describe(f) | some f in unread_list])

unread_summary := concat("; ", unread_named) if count(unread_named) <= 5

unread_summary := sprintf("%s; and %d more", [concat("; ", array.slice(unread_named, 0, 5)), count(unread_named) - 5]) if count(unread_named) > 5

describe(f) := sprintf("%s %s%s%s", [f.id, object.get(f, "title", ""), at_path(f), in_layer(f)])

at_path(f) := sprintf(" at %s", [f.path]) if object.get(f, "path", "") != ""

at_path(f) := "" if object.get(f, "path", "") == ""

in_layer(f) := sprintf(" (layer %s)", [f.layer]) if object.get(f, "layer", "") != ""

in_layer(f) := "" if object.get(f, "layer", "") == ""

reason(rule, message, evidence) := {"rule": rule, "message": message, "evidence": evidence}

vuln_message(v) := sprintf("%s (%s, fixed in %s) in %s %s at %s", [v.id, lower(v.severity), v.fixed, v.package, v.installed, v.path]) if v.fixed != ""

vuln_message(v) := sprintf("%s (%s, no fix) in %s %s at %s", [v.id, lower(v.severity), v.package, v.installed, v.path]) if v.fixed == ""

days_since(t) := floor((time.parse_rfc3339_ns(input.now) - time.parse_rfc3339_ns(t)) / (((24 * 60) * 60) * 1000000000))
