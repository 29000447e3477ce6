package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Store is a metadata store in one SQLite database file.
type Store struct {
	db *sql.DB
}

// Open opens (creating if needed) the database at path and applies pending migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(NORMAL)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("metadata: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("metadata: migrate %s: %w", path, err)
	}
	return s, nil
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return err
	}
	var have int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return err
	}
	if have > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary knows (%d); upgrade Gatehouse", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, v, time.Now().Unix())
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// SchemaVersion reports the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks that the database answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var one int
	return s.db.QueryRowContext(ctx, `SELECT 1`).Scan(&one)
}

// RepositoryPut records a repository (idempotent).
func (s *Store) RepositoryPut(ctx context.Context, repo string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO repositories (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`, repo, time.Now().Unix())
	return err
}

// RepositoryExists reports whether anything was ever written to repo.
func (s *Store) RepositoryExists(ctx context.Context, repo string) (bool, error) {
	var one int
	err := s.db.QueryRowContext(ctx, `SELECT 1 FROM repositories WHERE name = ?`, repo).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// Catalog lists repository names in lexical order.
func (s *Store) Catalog(ctx context.Context, p meta.Page) ([]string, bool, error) {
	return s.page(ctx, `SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?`, p)
}

// ManifestPut records a manifest, its repository, and points tags at it, in one transaction.
func (s *Store) ManifestPut(ctx context.Context, m meta.Manifest, tags ...string) error {
	var ann string
	if len(m.Annotations) > 0 {
		b, err := json.Marshal(m.Annotations)
		if err != nil {
			return err
		}
		ann = string(b)
	}
	created := m.Created
	if created.IsZero() {
		created = time.Now()
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		now := time.Now().Unix()
		if _, err := tx.ExecContext(ctx, `INSERT INTO repositories (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`, m.Repo, now); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO manifests (repo, digest, media_type, size, artifact_type, subject, annotations, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, digest) DO NOTHING`,
			m.Repo, m.Digest.String(), m.MediaType, m.Size, m.ArtifactType, m.Subject.String(), ann, created.UnixNano())
		if err != nil {
			return err
		}
		for _, t := range tags {
			_, err := tx.ExecContext(ctx, `INSERT INTO tags (repo, tag, digest, updated_at, checked_at) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT (repo, tag) DO UPDATE SET
					updated_at = CASE WHEN tags.digest = excluded.digest THEN tags.updated_at ELSE excluded.updated_at END,
					digest = excluded.digest, checked_at = excluded.checked_at`,
				m.Repo, t, m.Digest.String(), now, nowNano())
			if err != nil {
				return err
			}
		}
		return nil
	})
}

const manifestCols = `repo, digest, media_type, size, artifact_type, subject, annotations, created_at`

func scanManifest(sc interface{ Scan(...any) error }) (meta.Manifest, error) {
	var m meta.Manifest
	var dgst, subject, ann string
	var created int64
	if err := sc.Scan(&m.Repo, &dgst, &m.MediaType, &m.Size, &m.ArtifactType, &subject, &ann, &created); err != nil {
		return meta.Manifest{}, err
	}
	m.Digest, m.Subject = digest.Digest(dgst), digest.Digest(subject)
	m.Created = time.Unix(0, created).UTC()
	if ann != "" {
		if err := json.Unmarshal([]byte(ann), &m.Annotations); err != nil {
			return meta.Manifest{}, fmt.Errorf("annotations of %s: %w", dgst, err)
		}
	}
	return m, nil
}

// ManifestGet returns the record of one manifest in repo.
func (s *Store) ManifestGet(ctx context.Context, repo string, dgst digest.Digest) (meta.Manifest, error) {
	m, err := scanManifest(s.db.QueryRowContext(ctx, `SELECT `+manifestCols+` FROM manifests WHERE repo = ? AND digest = ?`, repo, dgst.String()))
	if errors.Is(err, sql.ErrNoRows) {
		return meta.Manifest{}, meta.ErrNotFound
	}
	return m, err
}

// ManifestDelete removes a manifest and every tag that points at it.
func (s *Store) ManifestDelete(ctx context.Context, repo string, dgst digest.Digest) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM manifests WHERE repo = ? AND digest = ?`, repo, dgst.String())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return meta.ErrNotFound
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM tags WHERE repo = ? AND digest = ?`, repo, dgst.String())
		return err
	})
}

// TagGet resolves a tag to a manifest digest.
func (s *Store) TagGet(ctx context.Context, repo, tag string) (digest.Digest, error) {
	var d string
	err := s.db.QueryRowContext(ctx, `SELECT digest FROM tags WHERE repo = ? AND tag = ?`, repo, tag).Scan(&d)
	if errors.Is(err, sql.ErrNoRows) {
		return "", meta.ErrNotFound
	}
	return digest.Digest(d), err
}

// TagInfo returns a tag with its timestamps.
func (s *Store) TagInfo(ctx context.Context, repo, tag string) (meta.Tag, error) {
	var d string
	var updated, checked int64
	err := s.db.QueryRowContext(ctx, `SELECT digest, updated_at, checked_at FROM tags WHERE repo = ? AND tag = ?`, repo, tag).Scan(&d, &updated, &checked)
	if errors.Is(err, sql.ErrNoRows) {
		return meta.Tag{}, meta.ErrNotFound
	}
	if err != nil {
		return meta.Tag{}, err
	}
	return meta.Tag{Digest: digest.Digest(d), Updated: time.Unix(updated, 0).UTC(), Checked: time.Unix(0, checked).UTC()}, nil
}

// TagTouch records that a tag was confirmed to still point at dgst; ErrNotFound if it does not.
func (s *Store) TagTouch(ctx context.Context, repo, tag string, dgst digest.Digest, at time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE tags SET checked_at = ? WHERE repo = ? AND tag = ? AND digest = ?`, at.UnixNano(), repo, tag, dgst.String())
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return meta.ErrNotFound
	}
	return nil
}

func nowNano() int64 { return time.Now().UnixNano() }

// TagList lists a repository's tags in lexical order.
func (s *Store) TagList(ctx context.Context, repo string, p meta.Page) ([]string, bool, error) {
	return s.page(ctx, `SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?`, p, repo)
}

// TagDelete removes one tag; the manifest stays.
func (s *Store) TagDelete(ctx context.Context, repo, tag string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM tags WHERE repo = ? AND tag = ?`, repo, tag)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return meta.ErrNotFound
	}
	return nil
}

// Referrers lists the manifests in repo whose subject is the given digest, optionally only those
// of one artifact type.
func (s *Store) Referrers(ctx context.Context, repo string, subject digest.Digest, artifactType string) ([]meta.Manifest, error) {
	q := `SELECT ` + manifestCols + ` FROM manifests WHERE repo = ? AND subject = ?`
	args := []any{repo, subject.String()}
	if artifactType != "" {
		q += ` AND artifact_type = ?`
		args = append(args, artifactType)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY created_at, digest`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []meta.Manifest
	for rows.Next() {
		m, err := scanManifest(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// page runs a listing query whose last two parameters are "after" and "limit", fetching one row
// more than asked to learn whether another page follows.
func (s *Store) page(ctx context.Context, q string, p meta.Page, args ...any) ([]string, bool, error) {
	limit := -1
	if p.N > 0 {
		limit = p.N + 1
	}
	rows, err := s.db.QueryContext(ctx, q, append(args, p.Last, limit)...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, false, err
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	if p.N > 0 && len(out) > p.N {
		return out[:p.N], true, nil
	}
	return out, false, nil
}

// ScanPut records a scan (replacing an earlier one of the same digest, matches included).
func (s *Store) ScanPut(ctx context.Context, sc meta.Scan) error {
	complete := 0
	if sc.Complete {
		complete = 1
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO scans (digest, repo, scanned_at, scanner, duration_ns, complete, error, result, db_version, vulns, matched_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (digest) DO UPDATE SET repo = excluded.repo, scanned_at = excluded.scanned_at, scanner = excluded.scanner,
			duration_ns = excluded.duration_ns, complete = excluded.complete, error = excluded.error, result = excluded.result,
			db_version = excluded.db_version, vulns = excluded.vulns, matched_at = excluded.matched_at`,
		sc.Digest.String(), sc.Repo, sc.Scanned.UnixNano(), sc.Scanner, int64(sc.Duration), complete, sc.Error, sc.Result,
		sc.DBVersion, sc.Vulns, unixNano(sc.Matched))
	return err
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// ScanGet returns the scan of an image.
func (s *Store) ScanGet(ctx context.Context, d digest.Digest) (meta.Scan, error) {
	var sc meta.Scan
	var dg string
	var scanned, dur, matched int64
	var complete int
	err := s.db.QueryRowContext(ctx, `SELECT digest, repo, scanned_at, scanner, duration_ns, complete, error, result, db_version, vulns, matched_at
		FROM scans WHERE digest = ?`, d.String()).Scan(&dg, &sc.Repo, &scanned, &sc.Scanner, &dur, &complete, &sc.Error, &sc.Result, &sc.DBVersion, &sc.Vulns, &matched)
	if errors.Is(err, sql.ErrNoRows) {
		return meta.Scan{}, meta.ErrNotFound
	}
	if err != nil {
		return meta.Scan{}, err
	}
	sc.Digest, sc.Scanned, sc.Duration, sc.Complete = digest.Digest(dg), time.Unix(0, scanned).UTC(), time.Duration(dur), complete == 1
	if matched != 0 {
		sc.Matched = time.Unix(0, matched).UTC()
	}
	return sc, nil
}

// ScanVulnsPut records the vulnerabilities of a scanned image as matched with dbVersion.
func (s *Store) ScanVulnsPut(ctx context.Context, d digest.Digest, dbVersion string, vulns []byte, at time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE scans SET db_version = ?, vulns = ?, matched_at = ? WHERE digest = ?`, dbVersion, vulns, at.UnixNano(), d.String())
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return meta.ErrNotFound
	}
	return nil
}

// ScansToMatch lists successfully scanned images not yet matched with dbVersion.
func (s *Store) ScansToMatch(ctx context.Context, dbVersion string, limit int) ([]digest.Digest, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT digest FROM scans WHERE error = '' AND db_version <> ? ORDER BY scanned_at LIMIT ?`, dbVersion, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []digest.Digest
	for rows.Next() {
		var d string
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, digest.Digest(d))
	}
	return out, rows.Err()
}

// VerdictGet returns the verdict on a manifest of a repository.
func (s *Store) VerdictGet(ctx context.Context, repo string, d digest.Digest) (meta.Verdict, error) {
	v := meta.Verdict{Repo: repo, Digest: d}
	var decided int64
	err := s.db.QueryRowContext(ctx, `SELECT state, decision, policy_digest, db_version, decided_at FROM verdicts WHERE repo = ? AND digest = ?`,
		repo, d.String()).Scan(&v.State, &v.Decision, &v.PolicyDigest, &v.DBVersion, &decided)
	if errors.Is(err, sql.ErrNoRows) {
		return meta.Verdict{}, meta.ErrNotFound
	}
	if err != nil {
		return meta.Verdict{}, err
	}
	v.Decided = time.Unix(0, decided).UTC()
	return v, nil
}

// VerdictSet records a verdict and, when its state changes, an audit record of the transition,
// in one transaction.
func (s *Store) VerdictSet(ctx context.Context, v meta.Verdict, actor, reason string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		var from string
		err := tx.QueryRowContext(ctx, `SELECT state FROM verdicts WHERE repo = ? AND digest = ?`, v.Repo, v.Digest.String()).Scan(&from)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO verdicts (repo, digest, state, decision, policy_digest, db_version, decided_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (repo, digest) DO UPDATE SET state = excluded.state, decision = excluded.decision,
				policy_digest = excluded.policy_digest, db_version = excluded.db_version, decided_at = excluded.decided_at`,
			v.Repo, v.Digest.String(), v.State, v.Decision, v.PolicyDigest, v.DBVersion, v.Decided.UnixNano())
		if err != nil || from == string(v.State) {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO audit (at, repo, digest, actor, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			v.Decided.UnixNano(), v.Repo, v.Digest.String(), actor, from, v.State, reason)
		return err
	})
}

// AuditList returns the transitions of a verdict, oldest first.
func (s *Store) AuditList(ctx context.Context, repo string, d digest.Digest) ([]meta.Audit, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT at, actor, from_state, to_state, reason FROM audit WHERE repo = ? AND digest = ? ORDER BY id`, repo, d.String())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []meta.Audit
	for rows.Next() {
		a := meta.Audit{Repo: repo, Digest: d}
		var at int64
		if err := rows.Scan(&at, &a.Actor, &a.From, &a.To, &a.Reason); err != nil {
			return nil, err
		}
		a.Time = time.Unix(0, at).UTC()
		out = append(out, a)
	}
	return out, rows.Err()
}

// VerdictsServed lists the verdicts of a repository that let a digest be served (admitted, released).
func (s *Store) VerdictsServed(ctx context.Context, repo string) ([]meta.Verdict, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT digest, state, decision, policy_digest, db_version, decided_at FROM verdicts
		WHERE repo = ? AND state IN (?, ?) ORDER BY digest`, repo, meta.Admitted, meta.Released)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []meta.Verdict
	for rows.Next() {
		v := meta.Verdict{Repo: repo}
		var d string
		var decided int64
		if err := rows.Scan(&d, &v.State, &v.Decision, &v.PolicyDigest, &v.DBVersion, &decided); err != nil {
			return nil, err
		}
		v.Digest, v.Decided = digest.Digest(d), time.Unix(0, decided).UTC()
		out = append(out, v)
	}
	return out, rows.Err()
}

// AdmittedTagSet records that a tag served an admitted digest.
func (s *Store) AdmittedTagSet(ctx context.Context, repo, tag string, d digest.Digest) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO admitted_tags (repo, tag, digest, served_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, served_at = excluded.served_at`, repo, tag, d.String(), time.Now().UnixNano())
	return err
}

// AdmittedTagGet returns the digest a tag last served admitted.
func (s *Store) AdmittedTagGet(ctx context.Context, repo, tag string) (digest.Digest, error) {
	var d string
	err := s.db.QueryRowContext(ctx, `SELECT digest FROM admitted_tags WHERE repo = ? AND tag = ?`, repo, tag).Scan(&d)
	if errors.Is(err, sql.ErrNoRows) {
		return "", meta.ErrNotFound
	}
	return digest.Digest(d), err
}

// VerdictRepos lists the repositories that hold a verdict on manifest d: scans are per digest,
// verdicts per repository, so a new scan or match of d is decided again in each.
func (s *Store) VerdictRepos(ctx context.Context, d digest.Digest) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT repo FROM verdicts WHERE digest = ? ORDER BY repo`, d.String())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// VerdictsStale lists the verdicts not decided under this policy and database (re-evaluation).
func (s *Store) VerdictsStale(ctx context.Context, policyDigest, dbVersion string, limit int) ([]meta.Verdict, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT repo, digest, state, decision, policy_digest, db_version, decided_at FROM verdicts
		WHERE policy_digest <> ? OR db_version <> ? ORDER BY decided_at LIMIT ?`, policyDigest, dbVersion, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []meta.Verdict
	for rows.Next() {
		var v meta.Verdict
		var d string
		var decided int64
		if err := rows.Scan(&v.Repo, &d, &v.State, &v.Decision, &v.PolicyDigest, &v.DBVersion, &decided); err != nil {
			return nil, err
		}
		v.Digest, v.Decided = digest.Digest(d), time.Unix(0, decided).UTC()
		out = append(out, v)
	}
	return out, rows.Err()
}
