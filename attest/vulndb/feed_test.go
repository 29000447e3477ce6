package vulndb

import (
	"archive/zip"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest/inventory"
)

// bucket is a test server in OSV's bucket layout (<Ecosystem>/all.zip) that answers conditional
// requests (ETag) as OSV's bucket does and counts the archive bodies it sends.
type bucket struct {
	mu      sync.Mutex
	files   map[string][]byte           // by path
	handler map[string]http.HandlerFunc // a path's misbehaviour, instead of its file
	bodies  map[string]int              // archive bodies sent, by path
}

func (b *bucket) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	body, ok := b.files[r.URL.Path]
	h := b.handler[r.URL.Path]
	b.mu.Unlock()
	if h != nil {
		h(w, r)
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	etag := fmt.Sprintf(`"%x"`, len(body)*7919+int(body[len(body)/2]))
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	b.mu.Lock()
	b.bodies[r.URL.Path]++
	b.mu.Unlock()
	w.Write(body)
}

func (b *bucket) set(path string, body []byte, h http.HandlerFunc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if body != nil {
		b.files[path] = body
	}
	b.handler[path] = h
}

func (b *bucket) sent() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for k, v := range b.bodies {
		out[k] = v
	}
	return out
}

// zipOf is an all.zip of the named test records (and extra name: body entries).
func zipOf(t *testing.T, records []string, extra map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, name := range records {
		b, err := os.ReadFile(filepath.Join("testdata/osv", name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		w, _ := zw.Create(name + ".json")
		w.Write(b)
	}
	for name, body := range extra {
		w, _ := zw.Create(name)
		w.Write([]byte(body))
	}
	zw.Close()
	return buf.Bytes()
}

func newFeed(t *testing.T) (*Feed, *bucket) {
	t.Helper()
	b := &bucket{files: map[string][]byte{}, handler: map[string]http.HandlerFunc{}, bodies: map[string]int{}}
	b.set("/npm/all.zip", zipOf(t, []string{"GHSA-p6mc-m468-83gw"}, nil), nil)
	b.set("/Go/all.zip", zipOf(t, []string{"GO-2024-3333", "GHSA-w32m-9786-jp63"}, nil), nil)
	b.set("/Debian/all.zip", zipOf(t, []string{"DEBIAN-CVE-2011-3374"}, nil), nil)
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	return &Feed{Path: filepath.Join(dir, "vulndb.sqlite"), Cache: filepath.Join(dir, "cache"), Sources: BucketSources(srv.URL, []string{"npm", "Go", "Debian"}),
		Stall: 300 * time.Millisecond}, b
}

func statusOf(status []SourceStatus, name string) SourceStatus {
	for _, st := range status {
		if st.Name == name {
			return st
		}
	}
	return SourceStatus{}
}

func TestFeedUpdates(t *testing.T) {
	f, b := newFeed(t)
	ctx := context.Background()
	info, changed, status, err := f.Update(ctx)
	if err != nil || !changed || info.Records != 4 {
		t.Fatalf("first update: %+v changed=%v err=%v", info, changed, err)
	}
	for _, name := range []string{"npm", "Go", "Debian"} {
		if st := statusOf(status, name); st.LastError != "" || st.LastSuccess.IsZero() || st.Records == 0 {
			t.Errorf("%s: %+v", name, st)
		}
	}
	found, _, err := Open(f.Path).Match(ctx, nil)
	if err != nil || len(found) != 0 {
		t.Fatalf("the database in place cannot be read: %v", err)
	}

	// nothing changed: no archive body is sent again, and the database stays as it is
	again, changed, _, err := f.Update(ctx)
	if err != nil || changed || again.Version != info.Version {
		t.Errorf("second update: %+v changed=%v err=%v", again, changed, err)
	}
	for path, n := range b.sent() {
		if n != 1 {
			t.Errorf("%s was sent %d times, want once", path, n)
		}
	}

	// one archive changed: only it is fetched, and a new database is built from all three
	b.set("/npm/all.zip", zipOf(t, []string{"GHSA-p6mc-m468-83gw"}, map[string]string{"GHSA-test-0001.json": `{"id":"GHSA-test-0001","modified":"2026-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"npm","name":"left-pad"}}]}`}), nil)
	third, changed, status, err := f.Update(ctx)
	if err != nil || !changed || third.Version == info.Version || third.Records != 5 {
		t.Errorf("update after a change: %+v changed=%v err=%v", third, changed, err)
	}
	if sent := b.sent(); sent["/npm/all.zip"] != 2 || sent["/Go/all.zip"] != 1 || sent["/Debian/all.zip"] != 1 {
		t.Errorf("archives sent: %v", sent)
	}
	if st := statusOf(status, "npm"); st.Records != 2 {
		t.Errorf("npm: %+v", st)
	}
}

// TestFeedKeepsWhatFails: a source that serves something unusable is reported, naming it, and
// its previous archive stays in the new database.
func TestFeedKeepsWhatFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		body []byte
		want string
	}{
		{"corrupt archive", nil, []byte("PK\x03\x04 this is no zip archive at all"), "cannot be read"},
		{"not OSV JSON", nil, nil, "not an OSV record"},
		{"truncated download", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100000")
			w.Write([]byte("PK\x03\x04 the first bytes"))
		}, nil, "bytes"},
		{"server stalls", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100000")
			w.Write([]byte("PK\x03\x04"))
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}, nil, "no byte came"},
		{"server errors", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		}, nil, "503"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, b := newFeed(t)
			ctx := context.Background()
			first, _, _, err := f.Update(ctx)
			if err != nil {
				t.Fatal(err)
			}
			body := tc.body
			if tc.name == "not OSV JSON" {
				body = zipOf(t, []string{"GO-2024-3333"}, map[string]string{"x.json": `{"schema":"not osv","affected":[]}`})
			}
			if body != nil {
				b.set("/Go/all.zip", body, nil)
			} else {
				b.set("/Go/all.zip", nil, tc.h)
			}
			start := time.Now()
			info, _, status, err := f.Update(ctx)
			if err != nil {
				t.Fatalf("update with one bad source: %v", err)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("the update took %s", time.Since(start))
			}
			st := statusOf(status, "Go")
			if !strings.Contains(st.LastError, tc.want) || !strings.Contains(st.LastError, "/Go/all.zip") {
				t.Errorf("Go's error %q, want it to name the source and say %q", st.LastError, tc.want)
			}
			if info.Records != first.Records || st.Records != 2 {
				t.Errorf("records %d (Go %d), want %d with Go's previous archive", info.Records, st.Records, first.Records)
			}
			if other := statusOf(status, "npm"); other.LastError != "" {
				t.Errorf("npm reported: %q", other.LastError)
			}
			// the state survives: a later update with the source mended picks it up
			b.set("/Go/all.zip", zipOf(t, []string{"GO-2024-3333"}, nil), nil)
			mended, _, status, err := f.Update(ctx)
			if err != nil || statusOf(status, "Go").LastError != "" || mended.Records != first.Records-1 {
				t.Errorf("after the source was mended: %+v %+v %v", mended, statusOf(status, "Go"), err)
			}
		})
	}
}

func TestFeedWithNothingFetched(t *testing.T) {
	f, b := newFeed(t)
	for _, p := range []string{"/npm/all.zip", "/Go/all.zip", "/Debian/all.zip"} {
		b.set(p, nil, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "gone", http.StatusNotFound) })
	}
	_, _, status, err := f.Update(context.Background())
	if err == nil || !strings.Contains(err.Error(), "npm: fetching") || !strings.Contains(err.Error(), "404") {
		t.Errorf("no source works: %v", err)
	}
	if len(status) != 3 || statusOf(status, "Debian").LastError == "" {
		t.Errorf("status %+v", status)
	}
	if _, err := Open(f.Path).Info(); err == nil {
		t.Errorf("a database was put in place from nothing")
	}
}

func TestFeedLocalSource(t *testing.T) {
	dir := t.TempDir()
	f := &Feed{Path: filepath.Join(dir, "db.sqlite"), Cache: filepath.Join(dir, "cache"), Sources: []Source{{Name: "local", URL: "testdata/osv"}}}
	first, changed, _, err := f.Update(context.Background())
	if err != nil || !changed || first.Records != 4 {
		t.Fatalf("local source: %+v %v %v", first, changed, err)
	}
	again, changed, _, err := f.Update(context.Background())
	if err != nil || changed || again.Version != first.Version {
		t.Errorf("an unchanged local source rebuilt the database: %+v %v %v", again, changed, err)
	}
	if _, err := os.Stat("testdata/osv/GO-2024-3333.json"); err != nil {
		t.Errorf("the local source was touched: %v", err)
	}
}

func TestSources(t *testing.T) {
	got := Sources([]string{"https://mirror.example/osv", "https://mirror.example/extra/all.zip", "/srv/osv"}, []string{"Red Hat", "npm"})
	want := []Source{
		{Name: "Red Hat", URL: "https://mirror.example/osv/Red%20Hat/all.zip"},
		{Name: "npm", URL: "https://mirror.example/osv/npm/all.zip"},
		{Name: "https://mirror.example/extra/all.zip", URL: "https://mirror.example/extra/all.zip"},
		{Name: "/srv/osv", URL: "/srv/osv"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Sources = %v, want %v", got, want)
	}
}

// TestExport: an export imported on another site puts the very same database in place, and one
// that does not match its manifest is refused, leaving the database there as it was.
func TestExport(t *testing.T) {
	f, _ := newFeed(t)
	ctx := context.Background()
	info, _, status, err := f.Update(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "export.zip")
	ef, _ := os.Create(out)
	m, err := Export(f.Path, status, ef)
	ef.Close()
	if err != nil || m.Database.Version != info.Version || len(m.Sources) != 3 || m.Sources[0].Records == 0 || m.SHA256 == "" {
		t.Fatalf("export: %+v %v", m, err)
	}
	other := filepath.Join(t.TempDir(), "vulndb.sqlite")
	got, err := Import(ctx, other, out, nil)
	if err != nil {
		t.Fatal(err)
	}
	there, _ := Open(other).Info()
	if got != info || there != info {
		t.Errorf("imported %+v (in place %+v), want %+v", got, there, info)
	}
	// tampered with: the database in the export is not the one its manifest describes
	body, _ := os.ReadFile(out)
	zr, _ := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range zr.File {
		w, _ := zw.Create(e.Name)
		rc, _ := e.Open()
		b := new(bytes.Buffer)
		b.ReadFrom(rc)
		rc.Close()
		if e.Name == exportDatabase {
			b.Bytes()[len(b.Bytes())-1] ^= 1
		}
		w.Write(b.Bytes())
	}
	zw.Close()
	bad := filepath.Join(t.TempDir(), "bad.zip")
	os.WriteFile(bad, buf.Bytes(), 0o644)
	if _, err := Import(ctx, other, bad, nil); err == nil || !strings.Contains(err.Error(), "not the one its manifest describes") {
		t.Errorf("a tampered export: %v", err)
	}
	if there, _ := Open(other).Info(); there != info {
		t.Errorf("a refused export changed the database in place: %+v", there)
	}
}

// TestFeedRecordInTwoSources: a record two sources carry is counted and matched once.
func TestFeedRecordInTwoSources(t *testing.T) {
	dir := t.TempDir()
	f := &Feed{Path: filepath.Join(dir, "db.sqlite"), Cache: filepath.Join(dir, "cache"), Sources: []Source{{Name: "a", URL: "testdata/osv"}, {Name: "b", URL: "testdata/osv"}}}
	info, _, _, err := f.Update(context.Background())
	if err != nil || info.Records != 4 {
		t.Fatalf("two sources of the same records: %+v %v", info, err)
	}
	found, _, err := Open(f.Path).Match(context.Background(), []inventory.Package{{Ecosystem: "npm", Name: "lodash", Version: "4.17.15", Path: "app/node_modules/lodash/package.json"}})
	if err != nil || len(found) != 1 {
		t.Errorf("findings %+v, %v; want one", found, err)
	}
}

// TestFeedSecondRound holds what the adversarial round on the feed found.
func TestFeedSecondRound(t *testing.T) {
	ctx := context.Background()
	t.Run("two sources with one name keep two archives", func(t *testing.T) {
		b := &bucket{files: map[string][]byte{}, handler: map[string]http.HandlerFunc{}, bodies: map[string]int{}}
		b.set("/m1/npm/all.zip", zipOf(t, []string{"GHSA-p6mc-m468-83gw"}, nil), nil)
		b.set("/m2/npm/all.zip", zipOf(t, []string{"GO-2024-3333"}, nil), nil)
		srv := httptest.NewServer(b)
		defer srv.Close()
		dir := t.TempDir()
		f := &Feed{Path: filepath.Join(dir, "db.sqlite"), Cache: filepath.Join(dir, "cache"), Sources: Sources([]string{srv.URL + "/m1", srv.URL + "/m2"}, []string{"npm"})}
		if _, _, _, err := f.Update(ctx); err != nil {
			t.Fatal(err)
		}
		b.set("/m2/npm/all.zip", zipOf(t, []string{"GO-2024-3333", "GHSA-w32m-9786-jp63"}, nil), nil)
		info, _, status, err := f.Update(ctx)
		if err != nil || info.Records != 3 || status[0].Archive == status[1].Archive {
			t.Errorf("after the second source changed: %+v %+v %v", info, status, err)
		}
	})
	t.Run("a stopped update keeps the state", func(t *testing.T) {
		f, b := newFeed(t)
		if _, _, _, err := f.Update(ctx); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(filepath.Join(f.Cache, "sources.json"))
		b.set("/Go/all.zip", zipOf(t, []string{"GO-2024-3333"}, nil), nil)
		stopped, cancel := context.WithCancel(ctx)
		cancel()
		if _, _, _, err := f.Update(stopped); err == nil {
			t.Errorf("a stopped update succeeded")
		}
		if after, _ := os.ReadFile(filepath.Join(f.Cache, "sources.json")); !bytes.Equal(before, after) {
			t.Errorf("a stopped update changed the state:\n%s\nwas:\n%s", after, before)
		}
	})
	t.Run("a source that never answers is cut", func(t *testing.T) {
		f, b := newFeed(t)
		if _, _, _, err := f.Update(ctx); err != nil {
			t.Fatal(err)
		}
		b.set("/Go/all.zip", nil, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		})
		start := time.Now()
		info, _, status, err := f.Update(ctx)
		if err != nil || time.Since(start) > 5*time.Second || statusOf(status, "Go").LastError == "" || info.Records != 4 {
			t.Errorf("a silent source: %v after %s, Go %+v, %d records", err, time.Since(start), statusOf(status, "Go"), info.Records)
		}
	})
	t.Run("an empty archive takes nothing away", func(t *testing.T) {
		f, b := newFeed(t)
		first, _, _, err := f.Update(ctx)
		if err != nil {
			t.Fatal(err)
		}
		b.set("/npm/all.zip", zipOf(t, nil, nil), nil)
		info, _, status, err := f.Update(ctx)
		if err != nil || info.Records != first.Records || !strings.Contains(statusOf(status, "npm").LastError, "holds no OSV records") {
			t.Errorf("an emptied source: %+v %+v %v", info, statusOf(status, "npm"), err)
		}
	})
	t.Run("a crafted export is refused", func(t *testing.T) {
		dir := t.TempDir()
		db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "crafted.sqlite"))
		if err != nil {
			t.Fatal(err)
		}
		db.Exec(`CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL); CREATE TABLE records (id TEXT PRIMARY KEY, modified TEXT NOT NULL, body BLOB NOT NULL);
			CREATE TABLE affected (name TEXT NOT NULL, ecosystem TEXT NOT NULL, id TEXT NOT NULL); CREATE INDEX affected_by_name ON affected (name);
			INSERT INTO info VALUES ('version','v-crafted'),('imported','2026-01-01T00:00:00Z'),('newest','2026-01-01T00:00:00Z'),('records','250000'),('source','crafted')`)
		db.Close()
		var out bytes.Buffer
		if _, err := Export(filepath.Join(dir, "crafted.sqlite"), nil, &out); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "crafted.zip"), out.Bytes(), 0o644)
		if _, err := Import(ctx, filepath.Join(dir, "db.sqlite"), filepath.Join(dir, "crafted.zip"), nil); err == nil || !strings.Contains(err.Error(), "holds 0 records but says 250000") {
			t.Errorf("an export claiming records it does not hold: %v", err)
		}
	})
	t.Run("entries are counted before a zip is read", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "many.zip")
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for i := range 1000 {
			zw.Create(fmt.Sprintf("e%d.json", i))
		}
		zw.Close()
		os.WriteFile(p, buf.Bytes(), 0o644)
		if n, err := zipEntries(p); err != nil || n != 1000 {
			t.Errorf("zipEntries = %d, %v; want 1000", n, err)
		}
	})
}
