package gatehouse_test

import rego.v1

import data.gatehouse

clean := {
	"image": {"digest": "sha256:aa", "repository": "team/app"},
	"scan": {"complete": true, "error": ""},
	"findings": [],
	"vulnerabilities": [],
	"database": {"present": true, "version": "v1", "age_hours": 2, "max_age_hours": 72},
	"provenance": {"evaluated": false},
	"settings": {"high_fix_grace_days": 30},
	"now": "2026-11-23T00:00:00Z",
}

rules(set) := {r.rule | some r in set}

test_clean_image_is_admitted if {
	gatehouse.decision.allow with input as clean
	count(gatehouse.deny) == 0 with input as clean
}

test_missing_database_fails_closed if {
	not gatehouse.allow with input as object.union(clean, {"database": {"present": false}})
	"GH-POL-DB-MISSING" in rules(gatehouse.deny) with input as object.union(clean, {"database": {"present": false}})
}

test_stale_database_fails_closed if {
	some r in gatehouse.deny with input as object.union(clean, {"database": {"present": true, "age_hours": 100.4, "max_age_hours": 72}})
	r.rule == "GH-POL-DB-STALE"
	r.message == "the vulnerability database is 100 hours old; the limit is 72 (the server updates it from vulndb.sources; or run gatehouse db update)"
}

test_incomplete_scan_is_denied if {
	"GH-POL-SCAN-INCOMPLETE" in rules(gatehouse.deny) with input as object.union(clean, {"scan": {"complete": false, "error": ""}})
}

sparse := {"kind": "layer", "id": "GH-LAYER-SPARSE", "severity": "MEDIUM", "title": "a GNU sparse entry", "path": "app/x", "layer": "sha256:11"}

incomplete_summary := {"kind": "layer", "id": "GH-LAYER-INCOMPLETE", "severity": "HIGH", "title": "the scan could not read all of the image", "path": "", "layer": ""}

test_incomplete_scan_names_what_it_could_not_read if {
	img := object.union(clean, {"scan": {"complete": false, "error": ""}, "findings": [
		sparse,
		{"kind": "layer", "id": "GH-LAYER-TOOLONG", "title": "a path of 5000 characters once cleaned", "path": "d/d/d…", "layer": "sha256:22"},
		{"kind": "layer", "id": "GH-LAYER-ESCAPE", "title": "climbs", "path": "etc/x", "layer": "sha256:22"},
		incomplete_summary,
	]})
	some r in gatehouse.deny with input as img
	r.rule == "GH-POL-SCAN-INCOMPLETE"
	r.message == "the scan could not read everything: GH-LAYER-SPARSE a GNU sparse entry at app/x (layer sha256:11); GH-LAYER-TOOLONG a path of 5000 characters once cleaned at d/d/d… (layer sha256:22)"
	count(r.evidence.findings) == 2
}

test_incomplete_scan_names_at_most_five if {
	many := [object.union(sparse, {"path": sprintf("app/%d", [i])}) | some i in numbers.range(1, 7)]
	img := object.union(clean, {"scan": {"complete": false, "error": ""}, "findings": many})
	some r in gatehouse.deny with input as img
	r.rule == "GH-POL-SCAN-INCOMPLETE"
	endswith(r.message, "; and 2 more")
	count(r.evidence.findings) == 7
}

test_unread_file_denied_even_if_scan_says_complete if {
	unread := {"kind": "scan", "id": "GH-SCAN-UNREAD", "severity": "HIGH", "title": "os/rpm: the extractor panicked: slice bounds out of range", "path": "var/lib/rpm/rpmdb.sqlite", "layer": "sha256:33"}
	img := object.union(clean, {"scan": {"complete": true, "error": ""}, "findings": [unread]})
	some r in gatehouse.deny with input as img
	r.rule == "GH-POL-SCAN-INCOMPLETE"
	r.message == "the scan could not read everything: GH-SCAN-UNREAD os/rpm: the extractor panicked: slice bounds out of range at var/lib/rpm/rpmdb.sqlite (layer sha256:33)"
	not gatehouse.allow with input as img
}

test_incomplete_scan_without_findings_still_denied if {
	some r in gatehouse.deny with input as object.union(clean, {"scan": {"complete": false, "error": ""}, "findings": [incomplete_summary]})
	r.rule == "GH-POL-SCAN-INCOMPLETE"
	startswith(r.message, "the scan stopped before the end of the image")
}

test_special_files_warn if {
	img := object.union(clean, {"findings": [{"kind": "layer", "id": "GH-LAYER-SPECIAL", "title": "a block device", "path": "dev/sda", "layer": "sha256:11"}]})
	gatehouse.allow with input as img
	"GH-POL-LAYER" in rules(gatehouse.warn) with input as img
}

test_failed_scan_is_denied if {
	"GH-POL-SCAN-FAILED" in rules(gatehouse.deny) with input as object.union(clean, {"scan": {"complete": false, "error": "layer unreadable"}})
}

test_malware_is_denied if {
	img := object.union(clean, {"findings": [{"kind": "malware", "id": "GH-MALWARE", "title": "known-bad file: EICAR test file", "path": "app/eicar.com"}]})
	"GH-POL-MALWARE" in rules(gatehouse.deny) with input as img
}

test_private_key_is_denied_other_secrets_warned if {
	img := object.union(clean, {"findings": [
		{"kind": "secret", "id": "GH-SECRET-PRIVATEKEY", "path": "root/.ssh/id_ed25519", "verified": false},
		{"kind": "secret", "id": "GH-SECRET-AWSACCESSKEY", "path": "app/.env", "verified": false},
	]})
	"GH-POL-SECRET" in rules(gatehouse.deny) with input as img
	"GH-POL-SECRET-UNVERIFIED" in rules(gatehouse.warn) with input as img
	count(gatehouse.deny) == 1 with input as img
}

test_verified_secret_is_denied if {
	img := object.union(clean, {"findings": [{"kind": "secret", "id": "GH-SECRET-AWSACCESSKEY", "path": "app/.env", "verified": true}]})
	"GH-POL-SECRET" in rules(gatehouse.deny) with input as img
}

critical := {"id": "CVE-2024-45338", "severity": "CRITICAL", "package": "golang.org/x/net", "installed": "0.30.0", "fixed": "0.33.0", "path": "app/server", "published": "2024-12-18T20:22:26Z"}

test_critical_with_fix_is_denied_and_named if {
	img := object.union(clean, {"vulnerabilities": [critical]})
	some r in gatehouse.deny with input as img
	r.rule == "GH-POL-CRITICAL-FIXABLE"
	r.message == "CVE-2024-45338 (critical, fixed in 0.33.0) in golang.org/x/net 0.30.0 at app/server"
}

test_critical_without_fix_is_not_denied if {
	img := object.union(clean, {"vulnerabilities": [object.union(critical, {"fixed": ""})]})
	gatehouse.allow with input as img
}

test_high_with_old_fix_is_denied if {
	img := object.union(clean, {"vulnerabilities": [object.union(critical, {"severity": "HIGH"})]})
	"GH-POL-HIGH-FIXABLE" in rules(gatehouse.deny) with input as img
}

test_high_with_recent_fix_is_allowed if {
	img := object.union(clean, {"vulnerabilities": [object.union(critical, {"severity": "HIGH", "published": "2026-11-20T00:00:00Z"})]})
	gatehouse.allow with input as img
}

test_config_findings_warn if {
	img := object.union(clean, {"findings": [{"kind": "config", "id": "GH-CFG-ROOT", "title": "the image runs as root", "path": "config:User"}]})
	gatehouse.allow with input as img
	"GH-POL-CONFIG" in rules(gatehouse.warn) with input as img
}

test_hostile_layer_is_denied if {
	img := object.union(clean, {"findings": [{"kind": "layer", "id": "GH-LAYER-ESCAPE", "title": "the path climbs out", "path": "../../x"}]})
	"GH-POL-HOSTILE-LAYER" in rules(gatehouse.deny) with input as img
}

test_uncovered_release_is_denied if {
	img := object.union(clean, {"vulnerabilities": [{"id": "GH-VULN-UNCOVERED", "severity": "UNKNOWN", "ecosystem": "Debian:99", "package": "libc6", "installed": "2.36-9+deb12u1", "fixed": "", "path": "var/lib/dpkg/status"}]})
	some r in gatehouse.deny with input as img
	r.rule == "GH-POL-RELEASE-UNCOVERED"
	contains(r.message, "no advisory for Debian:99")
}
