# Gatehouse's default admission policy. Input: policies/input.schema.json. Output:
# data.gatehouse.decision = {allow, deny, warn}, each reason {rule, message, evidence}.
package gatehouse

import rego.v1

default allow := false

allow if count(deny) == 0

decision := {"allow": allow, "deny": deny, "warn": warn}

# --- fail closed: no verdict without complete evidence ---

deny contains reason("GH-POL-DB-MISSING", "no vulnerability database has been imported, so vulnerabilities cannot be ruled out (gatehouse db update --from ...)", input.database) if {
	not input.database.present
}

deny contains reason("GH-POL-DB-STALE", sprintf("the vulnerability database is %v hours old; the limit is %v (gatehouse db update --from ...)", [round(input.database.age_hours), round(input.database.max_age_hours)]), input.database) if {
	input.database.present
	input.database.age_hours > input.database.max_age_hours
}

deny contains reason("GH-POL-SCAN-FAILED", sprintf("the image could not be scanned: %s", [input.scan.error]), input.scan) if {
	input.scan.error != ""
}

deny contains reason("GH-POL-SCAN-INCOMPLETE", "the scan stopped before the end of the image (a limit or a broken layer); what it did not read is unknown", input.scan) if {
	input.scan.error == ""
	not input.scan.complete
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

warn contains reason("GH-POL-CONFIG", sprintf("%s (%s)", [f.title, f.id]), f) if {
	some f in input.findings
	f.kind == "config"
}

warn contains reason("GH-POL-PROVENANCE", "provenance is not verified yet (signatures and attestations are checked by a later release)", input.provenance) if {
	not input.provenance.evaluated
}

# --- helpers ---

reason(rule, message, evidence) := {"rule": rule, "message": message, "evidence": evidence}

vuln_message(v) := sprintf("%s (%s, fixed in %s) in %s %s at %s", [v.id, lower(v.severity), v.fixed, v.package, v.installed, v.path]) if v.fixed != ""

vuln_message(v) := sprintf("%s (%s, no fix) in %s %s at %s", [v.id, lower(v.severity), v.package, v.installed, v.path]) if v.fixed == ""

days_since(t) := floor((time.parse_rfc3339_ns(input.now) - time.parse_rfc3339_ns(t)) / (((24 * 60) * 60) * 1000000000))
