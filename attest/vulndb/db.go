package vulndb

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// ErrNoDatabase means no database has been imported: nothing can be matched, and the gate must
// fail closed.
var ErrNoDatabase = errors.New("no vulnerability database is in place yet (the server fetches one from vulndb.sources; or run `gatehouse db update`)")

// Info describes an imported database.
type Info struct {
	Version  string    `json:"version"`  // changes with every import whose content differs
	Imported time.Time `json:"imported"` // when it was imported
	Newest   time.Time `json:"newest"`   // the newest record's modified time
	Records  int       `json:"records"`
	Source   string    `json:"source"`
}

// Age is how old the database is: since its newest record, or its import when records carry no
// times.
func (i Info) Age(now time.Time) time.Duration {
	if !i.Newest.IsZero() {
		return now.Sub(i.Newest)
	}
	return now.Sub(i.Imported)
}

// DB is the database at one path; it reopens the file when an import replaces it.
type DB struct {
	path string

	mu      sync.Mutex
	db      *sql.DB
	info    Info
	stat    os.FileInfo
	checked time.Time
	covered map[string]bool // release ecosystems the database in place has advisories for (covers)
}

// Open returns the database at path (it may not exist yet).
func Open(path string) *DB { return &DB{path: path} }

// Path is where the database lives.
func (d *DB) Path() string { return d.path }

// current returns an open handle on the newest file, reopening after an import.
func (d *DB) current() (*sql.DB, Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.db != nil && time.Since(d.checked) < time.Second {
		return d.db, d.info, nil
	}
	d.checked = time.Now()
	fi, err := os.Stat(d.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, Info{}, ErrNoDatabase
	}
	if err != nil {
		return nil, Info{}, err
	}
	if d.db != nil && os.SameFile(fi, d.stat) && fi.ModTime().Equal(d.stat.ModTime()) {
		return d.db, d.info, nil
	}
	db, err := sql.Open("sqlite", "file:"+d.path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, Info{}, err
	}
	info, err := readInfo(db)
	if err != nil {
		db.Close()
		return nil, Info{}, fmt.Errorf("vulnerability database %s: %w", d.path, err)
	}
	if d.db != nil {
		d.db.Close()
	}
	d.db, d.info, d.stat, d.covered = db, info, fi, map[string]bool{}
	return db, info, nil
}

// covers says whether the database in place has an advisory for an ecosystem (remembered per
// database: the affected table has no index by ecosystem).
func (d *DB) covers(ctx context.Context, db *sql.DB, eco string) (bool, error) {
	d.mu.Lock()
	ok, known := d.covered[eco]
	d.mu.Unlock()
	if known {
		return ok, nil
	}
	var one int
	err := db.QueryRowContext(ctx, `SELECT 1 FROM affected WHERE ecosystem = ? LIMIT 1`, eco).Scan(&one)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, err
	}
	ok = err == nil
	d.mu.Lock()
	if d.db == db {
		d.covered[eco] = ok
	}
	d.mu.Unlock()
	return ok, nil
}

// Info describes the database now in place.
func (d *DB) Info() (Info, error) {
	_, info, err := d.current()
	return info, err
}

// Close releases the database.
func (d *DB) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.db != nil {
		return d.db.Close()
	}
	return nil
}

func readInfo(db *sql.DB) (Info, error) {
	rows, err := db.Query(`SELECT key, value FROM info`)
	if err != nil {
		return Info{}, err
	}
	defer rows.Close()
	var info Info
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return Info{}, err
		}
		switch k {
		case "version":
			info.Version = v
		case "imported":
			info.Imported, _ = time.Parse(time.RFC3339, v)
		case "newest":
			info.Newest, _ = time.Parse(time.RFC3339, v)
		case "records":
			fmt.Sscan(v, &info.Records)
		case "source":
			info.Source = v
		}
	}
	if info.Version == "" {
		return Info{}, errors.New("it records no version (an interrupted import?)")
	}
	return info, rows.Err()
}

// candidates returns the records that name a package.
func candidates(ctx context.Context, db *sql.DB, names ...string) ([]Record, error) {
	var out []Record
	seen := map[string]bool{}
	for _, name := range names {
		if name == "" {
			continue
		}
		rows, err := db.QueryContext(ctx, `SELECT DISTINCT r.id, r.body FROM affected a JOIN records r ON r.id = a.id WHERE a.name = ?`, name)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id string
			var body []byte
			if err := rows.Scan(&id, &body); err != nil {
				rows.Close()
				return nil, err
			}
			if seen[id] {
				continue
			}
			seen[id] = true
			var r Record
			if err := json.Unmarshal(body, &r); err != nil {
				rows.Close()
				return nil, fmt.Errorf("record %s: %w", id, err)
			}
			out = append(out, r)
		}
		rows.Close()
	}
	return out, nil
}

// Import builds a new database from an OSV source — an http(s) URL of a zip, a zip file, a JSON
// file, or a directory of either — and moves it into place at path in one rename, so readers
// see the old database or the new one, never half of one. A zip that is a Gatehouse export (see
// Export) is checked against its manifest and put in place as it is. progress, if set, gets a
// progress bar.
func Import(ctx context.Context, path, from string, progress io.Writer) (Info, error) {
	if progress == nil {
		progress = io.Discard
	}
	src := from
	if u, err := url.Parse(from); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		f, err := download(ctx, from, progress)
		if err != nil {
			return Info{}, err
		}
		defer os.Remove(f)
		src = f
	}
	if zr, err := zip.OpenReader(src); err == nil {
		m, dbf, ok, err := readExport(&zr.Reader)
		if ok {
			defer zr.Close()
			if err != nil {
				return Info{}, fmt.Errorf("importing %s: it is a Gatehouse export, but %w", from, err)
			}
			info, err := importExport(ctx, path, m, dbf)
			if err != nil {
				return Info{}, fmt.Errorf("importing %s: %w", from, err)
			}
			fmt.Fprintf(progress, "imported the export of %s (%d records, exported %s): version %s\n", m.Database.Source, info.Records, m.Exported.Format(time.RFC3339), info.Version)
			return info, nil
		}
		zr.Close()
	}
	b, err := newBuilder(ctx, path, progress)
	if err != nil {
		return Info{}, err
	}
	defer b.abort()
	if _, err := b.add(src); err != nil {
		return Info{}, fmt.Errorf("importing %s: %w", from, err)
	}
	return b.finish(from)
}

// builder writes a new database beside path, one source at a time, and moves it into place.
type builder struct {
	ctx      context.Context
	path     string
	tmp      string
	db       *sql.DB
	tx       *sql.Tx
	ins      *inserter
	progress io.Writer
}

func newBuilder(ctx context.Context, path string, progress io.Writer) (*builder, error) {
	if progress == nil {
		progress = io.Discard
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	b := &builder{ctx: ctx, path: path, tmp: fmt.Sprintf("%s.import-%d", path, time.Now().UnixNano()), progress: progress}
	db, err := sql.Open("sqlite", "file:"+b.tmp+"?_pragma=journal_mode(OFF)&_pragma=synchronous(OFF)")
	if err != nil {
		return nil, err
	}
	b.db = db
	if _, err := db.ExecContext(ctx, `CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
		CREATE TABLE records (id TEXT PRIMARY KEY, modified TEXT NOT NULL, body BLOB NOT NULL);
		CREATE TABLE affected (name TEXT NOT NULL, ecosystem TEXT NOT NULL, id TEXT NOT NULL);`); err != nil {
		b.abort()
		return nil, err
	}
	if b.tx, err = db.BeginTx(ctx, nil); err != nil {
		b.abort()
		return nil, err
	}
	b.ins = &inserter{tx: b.tx, ctx: ctx, hash: sha256.New()}
	b.ins.bar = progressbar.NewOptions(-1, progressbar.OptionSetWriter(progress), progressbar.OptionSetDescription("importing OSV records"),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	return b, nil
}

// add imports every record of src (a zip, a JSON file or a directory of them) and says how many
// there were. A source that fails part-way leaves nothing of itself in the database.
func (b *builder) add(src string) (int, error) {
	if _, err := b.tx.ExecContext(b.ctx, `SAVEPOINT source`); err != nil {
		return 0, err
	}
	before, newest := b.ins.count, b.ins.newest
	hashBefore, err := b.ins.hash.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return 0, err
	}
	if err := walkSource(src, b.ins); err != nil {
		b.ins.count, b.ins.newest = before, newest
		if herr := b.ins.hash.(encoding.BinaryUnmarshaler).UnmarshalBinary(hashBefore); herr != nil {
			return 0, herr
		}
		if _, rerr := b.tx.ExecContext(b.ctx, `ROLLBACK TO source`); rerr != nil {
			return 0, rerr
		}
		return 0, err
	}
	if b.ins.count == before {
		// a source that suddenly holds nothing would take every advisory it had away: refused
		b.ins.newest = newest
		if _, rerr := b.tx.ExecContext(b.ctx, `ROLLBACK TO source`); rerr != nil {
			return 0, rerr
		}
		return 0, errors.New("it holds no OSV records")
	}
	_, err = b.tx.ExecContext(b.ctx, `RELEASE source`)
	return b.ins.count - before, err
}

// finish indexes the database, records what it holds, and moves it into place.
func (b *builder) finish(source string) (Info, error) {
	b.ins.bar.Finish()
	if b.ins.count == 0 {
		return Info{}, fmt.Errorf("importing %s: no OSV records found", source)
	}
	if _, err := b.tx.ExecContext(b.ctx, `CREATE INDEX affected_by_name ON affected (name)`); err != nil {
		return Info{}, err
	}
	var records int // distinct: a record in two sources is kept once, from the later
	if err := b.tx.QueryRowContext(b.ctx, `SELECT COUNT(*) FROM records`).Scan(&records); err != nil {
		return Info{}, err
	}
	info := Info{
		Version:  time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b.ins.hash.Sum(nil))[:12],
		Imported: time.Now().UTC().Truncate(time.Second), // as it is stored
		Newest:   b.ins.newest,
		Records:  records,
		Source:   source,
	}
	for k, v := range map[string]string{"version": info.Version, "imported": info.Imported.Format(time.RFC3339),
		"newest": info.Newest.Format(time.RFC3339), "records": fmt.Sprint(info.Records), "source": info.Source} {
		if _, err := b.tx.ExecContext(b.ctx, `INSERT INTO info (key, value) VALUES (?, ?)`, k, v); err != nil {
			return Info{}, err
		}
	}
	if err := b.tx.Commit(); err != nil {
		return Info{}, err
	}
	if err := b.db.Close(); err != nil {
		return Info{}, err
	}
	if err := os.Rename(b.tmp, b.path); err != nil {
		return Info{}, err
	}
	fmt.Fprintf(b.progress, "imported %d OSV records from %s: version %s\n", info.Records, source, info.Version)
	return info, nil
}

// abort discards the database being built (after finish, nothing is left to discard).
func (b *builder) abort() {
	if b.tx != nil {
		b.tx.Rollback()
	}
	if b.db != nil {
		b.db.Close()
	}
	os.Remove(b.tmp)
}

type inserter struct {
	tx     *sql.Tx
	ctx    context.Context
	hash   hash.Hash // of every record in import order: the content part of the database's version
	count  int
	newest time.Time
	bar    *progressbar.ProgressBar
}

// add stores one OSV record (JSON); a file may hold one record or an array of them.
func (in *inserter) add(name string, body []byte) error {
	body = []byte(strings.TrimSpace(string(body)))
	if len(body) > 0 && body[0] == '[' {
		var many []json.RawMessage
		if err := json.Unmarshal(body, &many); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		for _, one := range many {
			if err := in.add(name, one); err != nil {
				return err
			}
		}
		return nil
	}
	var r Record
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("%s is not an OSV record: %w", name, err)
	}
	var compact bytes.Buffer // stored without the padding a record may carry
	if err := json.Compact(&compact, body); err != nil {
		return fmt.Errorf("%s is not an OSV record: %w", name, err)
	}
	body = compact.Bytes()
	if r.ID == "" {
		return fmt.Errorf("%s is not an OSV record: it has no id", name)
	}
	if _, err := in.tx.ExecContext(in.ctx, `INSERT INTO records (id, modified, body) VALUES (?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET modified = excluded.modified, body = excluded.body`, r.ID, r.Modified, body); err != nil {
		return err
	}
	for _, a := range r.Affected {
		if a.Package.Name == "" {
			continue
		}
		if _, err := in.tx.ExecContext(in.ctx, `INSERT INTO affected (name, ecosystem, id) VALUES (?, ?, ?)`, a.Package.Name, a.Package.Ecosystem, r.ID); err != nil {
			return err
		}
	}
	if t, err := time.Parse(time.RFC3339, r.Modified); err == nil && t.After(in.newest) {
		in.newest = t.UTC()
	}
	fmt.Fprintf(in.hash, "%s\x00%s\x00%x\n", r.ID, r.Modified, sha256.Sum256(body))
	in.count++
	in.bar.Add(1)
	return nil
}

// walkSource feeds every record in a zip, a JSON file, or a directory tree of both.
func walkSource(src string, in *inserter) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return addFile(src, in)
	}
	var files []string
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".json") || strings.HasSuffix(p, ".zip")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, f := range files {
		if err := addFile(f, in); err != nil {
			return err
		}
	}
	return nil
}

func addFile(p string, in *inserter) error {
	if !strings.HasSuffix(p, ".zip") {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return in.add(p, b)
	}
	// archive/zip holds the whole central directory in memory (about 240 bytes an entry): count
	// the entries first, from the end record, so a zip of millions of empty entries is refused
	// before it is read
	if n, err := zipEntries(p); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	} else if n > maxArchiveEntries {
		return fmt.Errorf("%s lists %d entries; at most %d are read from one archive", p, n, maxArchiveEntries)
	}
	zr, err := zip.OpenReader(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		if !strings.HasSuffix(f.Name, ".json") {
			continue
		}
		if f.UncompressedSize64 > 64<<20 {
			return fmt.Errorf("%s: %s is %d bytes, too large for an OSV record", p, f.Name, f.UncompressedSize64)
		}
		rc, err := f.Open()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(io.LimitReader(rc, 64<<20))
		rc.Close()
		if err != nil {
			return fmt.Errorf("%s: %s: %w", p, f.Name, err)
		}
		if err := in.add(p+"!"+f.Name, b); err != nil {
			return err
		}
	}
	return nil
}

// maxArchiveEntries bounds the entries read from one zip (osv.dev's largest all.zip, of every
// ecosystem, lists well under one million).
const maxArchiveEntries = 2_000_000

// zipEntries reads how many entries a zip says it holds from its end of central directory record
// (or, past 65535, its zip64 end record).
func zipEntries(p string) (uint64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	tail := min(fi.Size(), 22+65535+20)
	buf := make([]byte, tail)
	if _, err := f.ReadAt(buf, fi.Size()-tail); err != nil {
		return 0, err
	}
	i := bytes.LastIndex(buf, []byte("PK\x05\x06"))
	if i < 0 || len(buf)-i < 22 {
		return 0, zip.ErrFormat
	}
	n := uint64(binary.LittleEndian.Uint16(buf[i+10:]))
	if n != 0xffff || i < 20 || !bytes.Equal(buf[i-20:i-16], []byte("PK\x06\x07")) {
		return n, nil
	}
	// zip64: the locator before the end record says where the zip64 end record is
	off := int64(binary.LittleEndian.Uint64(buf[i-20+8:]))
	rec := make([]byte, 56)
	if off < 0 || off > fi.Size()-56 {
		return 0, zip.ErrFormat
	}
	if _, err := f.ReadAt(rec, off); err != nil || !bytes.Equal(rec[:4], []byte("PK\x06\x06")) {
		return 0, zip.ErrFormat
	}
	return binary.LittleEndian.Uint64(rec[32:]), nil
}

// download fetches a URL into a temporary file, with a progress bar.
func download(ctx context.Context, from string, progress io.Writer) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, from, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("downloading %s: %w", from, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("downloading %s: %s", from, resp.Status)
	}
	f, err := os.CreateTemp("", "gatehouse-osv-*.zip")
	if err != nil {
		return "", err
	}
	bar := progressbar.NewOptions64(resp.ContentLength, progressbar.OptionSetWriter(progress), progressbar.OptionShowBytes(true),
		progressbar.OptionSetDescription("downloading "+from), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	if _, err := io.Copy(io.MultiWriter(f, bar), resp.Body); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", fmt.Errorf("downloading %s: %w", from, err)
	}
	return f.Name(), f.Close()
}
