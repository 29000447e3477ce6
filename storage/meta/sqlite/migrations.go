package sqlite

// migrations are applied in order, each once, each in its own transaction. Never edit one that
// has shipped: append a new one.
var migrations = []string{
	// 1: repositories, manifests (with subject for referrers), tags.
	`CREATE TABLE repositories (
		name       TEXT PRIMARY KEY,
		created_at INTEGER NOT NULL
	);
	CREATE TABLE manifests (
		repo          TEXT NOT NULL,
		digest        TEXT NOT NULL,
		media_type    TEXT NOT NULL,
		size          INTEGER NOT NULL,
		artifact_type TEXT NOT NULL DEFAULT '',
		subject       TEXT NOT NULL DEFAULT '',
		annotations   TEXT NOT NULL DEFAULT '',
		created_at    INTEGER NOT NULL,
		PRIMARY KEY (repo, digest)
	);
	CREATE INDEX manifests_by_subject ON manifests (repo, subject) WHERE subject <> '';
	CREATE TABLE tags (
		repo       TEXT NOT NULL,
		tag        TEXT NOT NULL,
		digest     TEXT NOT NULL,
		updated_at INTEGER NOT NULL,
		PRIMARY KEY (repo, tag)
	);
	CREATE INDEX tags_by_digest ON tags (repo, digest);`,
	// 2: when a tag was last confirmed, so pull routes know when to revalidate and how stale a
	// cached tag is.
	`ALTER TABLE tags ADD COLUMN checked_at INTEGER NOT NULL DEFAULT 0;
	UPDATE tags SET checked_at = updated_at * 1000000000;`,
	// 3: scan results per image digest, and the vulnerabilities matched against a database version.
	`CREATE TABLE scans (
		digest      TEXT PRIMARY KEY,
		repo        TEXT NOT NULL,
		scanned_at  INTEGER NOT NULL,
		scanner     TEXT NOT NULL,
		duration_ns INTEGER NOT NULL,
		complete    INTEGER NOT NULL,
		error       TEXT NOT NULL DEFAULT '',
		result      BLOB,
		db_version  TEXT NOT NULL DEFAULT '',
		vulns       BLOB,
		matched_at  INTEGER NOT NULL DEFAULT 0
	);`,
	// 4: verdicts per (repository, manifest digest) and the audit trail of their transitions.
	`CREATE TABLE verdicts (
		repo          TEXT NOT NULL,
		digest        TEXT NOT NULL,
		state         TEXT NOT NULL,
		decision      BLOB,
		policy_digest TEXT NOT NULL DEFAULT '',
		db_version    TEXT NOT NULL DEFAULT '',
		decided_at    INTEGER NOT NULL,
		PRIMARY KEY (repo, digest)
	);
	CREATE TABLE audit (
		id      INTEGER PRIMARY KEY AUTOINCREMENT,
		at      INTEGER NOT NULL,
		repo    TEXT NOT NULL,
		digest  TEXT NOT NULL,
		actor   TEXT NOT NULL,
		from_state TEXT NOT NULL,
		to_state   TEXT NOT NULL,
		reason  TEXT NOT NULL
	);
	CREATE INDEX audit_by_image ON audit (repo, digest, id);`,
	// 5: the digest each tag last served admitted (routes with tag_fallback: last-admitted).
	`CREATE TABLE admitted_tags (
		repo       TEXT NOT NULL,
		tag        TEXT NOT NULL,
		digest     TEXT NOT NULL,
		served_at  INTEGER NOT NULL,
		PRIMARY KEY (repo, tag)
	);`,
}
