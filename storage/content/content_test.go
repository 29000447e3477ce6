package content

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func drivers(t *testing.T) map[string]storagedriver.StorageDriver {
	fs, err := filesystem.FromParameters(map[string]any{"rootdirectory": t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]storagedriver.StorageDriver{"filesystem": fs, "inmemory": inmemory.New()}
}

func push(t *testing.T, s *Store, repo string, data []byte, dgst digest.Digest) v1.Descriptor {
	t.Helper()
	ctx := context.Background()
	u, err := s.UploadCreate(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Write(data); err != nil {
		t.Fatal(err)
	}
	desc, err := u.Commit(ctx, v1.Descriptor{Digest: dgst, Size: int64(len(data))})
	if err != nil {
		t.Fatalf("commit %s: %v", dgst, err)
	}
	return desc
}

func readAll(t *testing.T, s *Store, desc v1.Descriptor) []byte {
	t.Helper()
	r, err := s.BlobReader(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBlobLifecycle(t *testing.T) {
	for name, d := range drivers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s, err := New(ctx, d, WithDelete(true))
			if err != nil {
				t.Fatal(err)
			}
			data := []byte("layer bytes")
			for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
				dgst := alg.FromBytes(data)
				push(t, s, "a", data, dgst)
				desc, err := s.BlobStat(ctx, "a", dgst)
				if err != nil {
					t.Fatalf("stat %s: %v", alg, err)
				}
				if got := readAll(t, s, desc); !bytes.Equal(got, data) {
					t.Fatalf("read %q", got)
				}
				if _, err := s.BlobStat(ctx, "b", dgst); !errors.Is(err, ErrBlobUnknown) {
					t.Errorf("blob of a visible in b: %v", err)
				}
				// mount into b: sha256 links, sha512 copies; both end up readable by that digest
				if _, err := s.BlobMount(ctx, "b", "a", dgst); err != nil {
					t.Fatalf("mount %s: %v", alg, err)
				}
				desc, err = s.BlobStat(ctx, "b", dgst)
				if err != nil {
					t.Fatalf("stat after mount %s: %v", alg, err)
				}
				if got := readAll(t, s, desc); !bytes.Equal(got, data) {
					t.Fatalf("read after mount %q", got)
				}
				if err := s.BlobDelete(ctx, "b", dgst); err != nil {
					t.Fatal(err)
				}
				if _, err := s.BlobStat(ctx, "b", dgst); !errors.Is(err, ErrBlobUnknown) {
					t.Errorf("stat after delete: %v", err)
				}
			}
			if _, err := s.BlobMount(ctx, "c", "a", digest.FromString("absent")); !errors.Is(err, ErrBlobUnknown) {
				t.Errorf("mount of absent blob: %v", err)
			}
		})
	}
}

func TestDigestMismatchRefused(t *testing.T) {
	ctx := context.Background()
	s, _ := New(ctx, inmemory.New())
	u, _ := s.UploadCreate(ctx, "a")
	u.Write([]byte("actual"))
	if _, err := u.Commit(ctx, v1.Descriptor{Digest: digest.FromString("claimed")}); err == nil {
		t.Fatal("commit with wrong digest succeeded")
	}
	if _, err := s.BlobStat(ctx, "a", digest.FromString("claimed")); !errors.Is(err, ErrBlobUnknown) {
		t.Errorf("mismatched blob is visible: %v", err)
	}
}

func TestBlobMountAnywhere(t *testing.T) {
	for name, d := range drivers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s, _ := New(ctx, d)
			data := []byte("shared")
			for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
				dgst := alg.FromBytes(data)
				u, err := s.UploadCreate(ctx, "a")
				if err != nil {
					t.Fatal(err)
				}
				u.Write(data)
				if _, err := s.BlobCommit(ctx, u, dgst); err != nil {
					t.Fatal(err)
				}
				if _, err := s.BlobMountAnywhere(ctx, "z", dgst); err != nil {
					t.Fatalf("%s: %v", alg, err)
				}
				desc, err := s.BlobStat(ctx, "z", dgst)
				if err != nil {
					t.Fatalf("%s not linked: %v", alg, err)
				}
				if got := readAll(t, s, desc); !bytes.Equal(got, data) {
					t.Errorf("%s read %q", alg, got)
				}
			}
			for _, absent := range []digest.Digest{digest.FromString("nope"), digest.SHA512.FromString("nope")} {
				if _, err := s.BlobMountAnywhere(ctx, "z", absent); !errors.Is(err, ErrBlobUnknown) {
					t.Errorf("MountAnywhere(absent %s) = %v", absent.Algorithm(), err)
				}
			}
		})
	}
}

func TestBlobMountAnywhereDistrustsAliases(t *testing.T) {
	ctx := context.Background()
	d := inmemory.New()
	s, _ := New(ctx, d)
	other := []byte("other bytes")
	push(t, s, "a", other, digest.FromBytes(other))
	// an alias that points a sha512 digest at bytes that do not hash to it
	claimed := digest.SHA512.FromString("claimed")
	d.PutContent(ctx, aliasPath(claimed), []byte(digest.FromBytes(other).String()))
	if _, err := s.BlobMountAnywhere(ctx, "z", claimed); err == nil {
		t.Fatal("mounted bytes under a digest they do not have")
	}
	if _, err := s.BlobStat(ctx, "z", claimed); !errors.Is(err, ErrBlobUnknown) {
		t.Errorf("a lying alias linked a blob: %v", err)
	}
}

func TestUploadResumeAcrossWriters(t *testing.T) {
	ctx := context.Background()
	s, _ := New(ctx, inmemory.New())
	u, _ := s.UploadCreate(ctx, "a")
	u.Write([]byte("hello "))
	id := u.ID()
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	u, err := s.UploadResume(ctx, "a", id)
	if err != nil {
		t.Fatal(err)
	}
	if u.Size() != 6 {
		t.Errorf("resumed size %d, want 6", u.Size())
	}
	u.Write([]byte("world"))
	if _, err := u.Commit(ctx, v1.Descriptor{Digest: digest.FromString("hello world")}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UploadResume(ctx, "a", id); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("resume after commit: %v", err)
	}
	if _, err := s.UploadResume(ctx, "b", id); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("upload of a resumable in b: %v", err)
	}
	if _, err := s.UploadResume(ctx, "a", "../../etc"); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("resume of a path: %v", err)
	}
}

func TestPurgeUploads(t *testing.T) {
	ctx := context.Background()
	s, _ := New(ctx, inmemory.New())
	u, _ := s.UploadCreate(ctx, "a")
	u.Write([]byte("abandoned"))
	u.Close()
	if n, errs := s.PurgeUploads(ctx, time.Now().Add(-time.Hour)); n != 0 || len(errs) != 0 {
		t.Fatalf("purged a fresh upload: %d %v", n, errs)
	}
	if n, errs := s.PurgeUploads(ctx, time.Now().Add(time.Hour)); n == 0 || len(errs) != 0 {
		t.Fatalf("purge removed %d, errs %v", n, errs)
	}
	if _, err := s.UploadResume(ctx, "a", u.ID()); !errors.Is(err, ErrUploadUnknown) {
		t.Errorf("purged upload resumable: %v", err)
	}
}

func TestManifestBytes(t *testing.T) {
	root := t.TempDir()
	d, _ := filesystem.FromParameters(map[string]any{"rootdirectory": root})
	ctx := context.Background()
	s, _ := New(ctx, d)
	payload := []byte(`{"schemaVersion":2}`)
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		dgst := alg.FromBytes(payload)
		if err := s.ManifestPut(ctx, dgst, payload); err != nil {
			t.Fatal(err)
		}
		got, err := s.ManifestGet(ctx, dgst)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("ManifestGet = %q, %v", got, err)
		}
	}
	// corrupt the file on disk: it must be refused, not served
	dgst := digest.FromBytes(payload)
	if err := os.WriteFile(filepath.Join(root, manifestPath(dgst)), []byte(`{"schemaVersion":3}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ManifestGet(ctx, dgst); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt manifest: err = %v, want ErrCorrupt", err)
	}
	if _, err := s.ManifestGet(ctx, digest.FromString("absent")); !errors.Is(err, ErrBlobUnknown) {
		t.Errorf("absent manifest: %v", err)
	}
}

// TestBlobDataPathMatchesDistribution pins distribution's on-disk layout that BlobReader relies on
// for its zero-copy path; if distribution moves blob data, this fails rather than the server.
func TestBlobDataPathMatchesDistribution(t *testing.T) {
	root := t.TempDir()
	d, _ := filesystem.FromParameters(map[string]any{"rootdirectory": root})
	s, _ := New(context.Background(), d)
	data := []byte("pinned")
	desc := push(t, s, "a", data, digest.FromBytes(data))
	got, err := os.ReadFile(filepath.Join(root, blobDataPath(desc.Digest)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("blob not at %s: %v", blobDataPath(desc.Digest), err)
	}
	r, err := s.BlobReader(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok := r.(*os.File); !ok {
		t.Errorf("filesystem BlobReader is %T, want *os.File (sendfile path)", r)
	}
}

func TestLazyReaderSeeks(t *testing.T) {
	ctx := context.Background()
	d := inmemory.New()
	if err := d.PutContent(ctx, "/x", []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	l := &lazyReader{ctx: ctx, driver: d, path: "/x", size: 10}
	if _, err := l.Seek(4, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	if _, err := io.ReadFull(l, b); err != nil || string(b) != "456" {
		t.Fatalf("read %q %v", b, err)
	}
	if pos, _ := l.Seek(-2, io.SeekEnd); pos != 8 {
		t.Fatalf("seek end = %d", pos)
	}
	rest, _ := io.ReadAll(l)
	if string(rest) != "89" {
		t.Errorf("rest %q", rest)
	}
}
