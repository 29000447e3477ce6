package vulndb

import (
	"archive/zip"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// An export carries a database to a site that cannot reach its sources: one zip holding the
// database file and a manifest that says what it is (its sources, their dates, its record count
// and the file's SHA-256). Importing it checks the manifest and puts the very same database in
// place, so `db info` says the same on both sides.

// ExportFormat names the manifest's format.
const ExportFormat = "gatehouse-vulndb-export/1"

const (
	exportManifest = "gatehouse-vulndb.json"
	exportDatabase = "vulndb.sqlite"
)

// ExportManifest describes an export.
type ExportManifest struct {
	Format   string         `json:"format"`
	Exported time.Time      `json:"exported"`
	Database Info           `json:"database"`
	SHA256   string         `json:"sha256"` // of the database file
	Size     int64          `json:"size"`
	Sources  []SourceStatus `json:"sources,omitempty"`
}

// Export writes the database at path, and the state of the sources it was built from, to out.
func Export(path string, sources []SourceStatus, out io.Writer) (ExportManifest, error) {
	info, err := Open(path).Info()
	if err != nil {
		return ExportManifest{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return ExportManifest{}, err
	}
	defer f.Close()
	zw := zip.NewWriter(out)
	w, err := zw.CreateHeader(&zip.FileHeader{Name: exportDatabase, Method: zip.Deflate, Modified: info.Imported})
	if err != nil {
		return ExportManifest{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), f)
	if err != nil {
		return ExportManifest{}, err
	}
	for i := range sources {
		sources[i].Archive, sources[i].ETag, sources[i].LastModified = "", "", "" // this site's cache, not the export's
	}
	m := ExportManifest{Format: ExportFormat, Exported: time.Now().UTC(), Database: info, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, Sources: sources}
	mw, err := zw.Create(exportManifest)
	if err != nil {
		return ExportManifest{}, err
	}
	enc := json.NewEncoder(mw)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return ExportManifest{}, err
	}
	return m, zw.Close()
}

// readExport returns the manifest of an export, or ok false when the zip is not one.
func readExport(zr *zip.Reader) (m ExportManifest, db *zip.File, ok bool, err error) {
	var mf *zip.File
	for _, f := range zr.File {
		switch f.Name {
		case exportManifest:
			mf = f
		case exportDatabase:
			db = f
		}
	}
	if mf == nil {
		return ExportManifest{}, nil, false, nil
	}
	rc, err := mf.Open()
	if err != nil {
		return ExportManifest{}, nil, true, err
	}
	defer rc.Close()
	if err := json.NewDecoder(io.LimitReader(rc, 16<<20)).Decode(&m); err != nil {
		return ExportManifest{}, nil, true, fmt.Errorf("its manifest is not readable: %w", err)
	}
	switch {
	case m.Format != ExportFormat:
		return m, nil, true, fmt.Errorf("its manifest's format is %q, not %q", m.Format, ExportFormat)
	case db == nil:
		return m, nil, true, errors.New("it holds no database")
	}
	return m, db, true, nil
}

// importExport puts the database of an export in place at path, after checking it against its
// manifest: its size and SHA-256, and that it opens and says what the manifest says.
func importExport(ctx context.Context, path string, m ExportManifest, dbf *zip.File) (Info, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return Info{}, err
	}
	tmp := fmt.Sprintf("%s.import-%d", path, time.Now().UnixNano())
	defer os.Remove(tmp)
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o640)
	if err != nil {
		return Info{}, err
	}
	rc, err := dbf.Open()
	if err != nil {
		out.Close()
		return Info{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(rc, m.Size+1))
	rc.Close()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		return Info{}, fmt.Errorf("the export's database cannot be read: %w", err)
	case n != m.Size || hex.EncodeToString(h.Sum(nil)) != m.SHA256:
		return Info{}, fmt.Errorf("the export's database is not the one its manifest describes (%d bytes, SHA-256 %s; the manifest says %d bytes, %s)", n, hex.EncodeToString(h.Sum(nil)), m.Size, m.SHA256)
	}
	db, err := sql.Open("sqlite", "file:"+tmp+"?mode=ro")
	if err != nil {
		return Info{}, err
	}
	info, err := readInfo(db)
	if err == nil {
		err = checkSchema(ctx, db, info)
	}
	db.Close()
	if err != nil {
		return Info{}, fmt.Errorf("the export's database is not one Gatehouse built: %w", err)
	}
	if info.Version != m.Database.Version || info.Records != m.Database.Records {
		return Info{}, fmt.Errorf("the export's database is version %s with %d records; its manifest says %s with %d", info.Version, info.Records, m.Database.Version, m.Database.Records)
	}
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return Info{}, err
	}
	return info, nil
}

// checkSchema checks that a database holds what Gatehouse builds and nothing else: the three
// tables and their one index (no view, no trigger standing in for them), as many records as it
// says, and an affected row for every record that names a package.
func checkSchema(ctx context.Context, db *sql.DB, info Info) error {
	want := map[string]string{"info": "table", "records": "table", "affected": "table", "affected_by_name": "index"}
	rows, err := db.QueryContext(ctx, `SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex_%'`)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for rows.Next() {
		var typ, name string
		if err := rows.Scan(&typ, &name); err != nil {
			rows.Close()
			return err
		}
		if want[name] != typ {
			rows.Close()
			return fmt.Errorf("it holds %s %q", typ, name)
		}
		seen[name] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if len(seen) != len(want) {
		return fmt.Errorf("it lacks some of %v", []string{"info", "records", "affected", "affected_by_name"})
	}
	var records, affected int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM records`).Scan(&records); err != nil {
		return err
	}
	if err := db.QueryRowContext(ctx, `SELECT COUNT(DISTINCT id) FROM affected`).Scan(&affected); err != nil {
		return err
	}
	switch {
	case records != info.Records:
		return fmt.Errorf("it holds %d records but says %d", records, info.Records)
	case records > 0 && affected == 0:
		return errors.New("none of its records names a package")
	}
	return nil
}
