package content

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/google/uuid"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors callers tell apart.
var (
	ErrBlobUnknown   = errors.New("blob unknown")
	ErrUploadUnknown = errors.New("upload unknown")
	ErrNotMounted    = errors.New("blob not mountable")
	ErrCorrupt       = errors.New("stored content does not match its digest")
)

// Store is the content store.
type Store struct {
	driver   storagedriver.StorageDriver
	ns       distribution.Namespace
	redirect bool
}

// Option configures a Store.
type Option func(*options)

type options struct {
	delete, redirect bool
}

// WithDelete allows blob deletion (otherwise BlobDelete returns distribution.ErrUnsupported).
func WithDelete(on bool) Option { return func(o *options) { o.delete = on } }

// WithRedirect makes BlobRedirectURL hand out the driver's direct URLs (S3, GCS, Azure, CDN).
func WithRedirect(on bool) Option { return func(o *options) { o.redirect = on } }

// New returns a content store over a storage driver.
func New(ctx context.Context, driver storagedriver.StorageDriver, opts ...Option) (*Store, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var regOpts []storage.RegistryOption
	if o.delete {
		regOpts = append(regOpts, storage.EnableDelete)
	}
	ns, err := storage.NewRegistry(ctx, driver, regOpts...)
	if err != nil {
		return nil, fmt.Errorf("content store: %w", err)
	}
	return &Store{driver: driver, ns: ns, redirect: o.redirect}, nil
}

// Ping checks that the storage backend answers.
func (s *Store) Ping(ctx context.Context) error {
	_, err := s.driver.Stat(ctx, "/")
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil // an empty store is a reachable store
	}
	return err
}

func (s *Store) blobs(ctx context.Context, repo string) (distribution.BlobStore, error) {
	named, err := reference.WithName(repo)
	if err != nil {
		return nil, fmt.Errorf("repository name %q: %w", repo, err)
	}
	r, err := s.ns.Repository(ctx, named)
	if err != nil {
		return nil, err
	}
	return r.Blobs(ctx), nil
}

func mapBlobErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, distribution.ErrBlobUnknown):
		return ErrBlobUnknown
	case errors.Is(err, distribution.ErrBlobUploadUnknown):
		return ErrUploadUnknown
	}
	var nf storagedriver.PathNotFoundError
	if errors.As(err, &nf) {
		return ErrBlobUnknown
	}
	return err
}

// BlobStat returns the canonical descriptor of a blob linked into repo. dgst may use any accepted
// algorithm; the returned descriptor names the canonical (sha256) digest the bytes are kept under.
func (s *Store) BlobStat(ctx context.Context, repo string, dgst digest.Digest) (v1.Descriptor, error) {
	bs, err := s.blobs(ctx, repo)
	if err != nil {
		return v1.Descriptor{}, err
	}
	desc, err := bs.Stat(ctx, dgst)
	return desc, mapBlobErr(err)
}

// BlobReader opens the bytes of a blob whose canonical descriptor came from BlobStat. For the
// filesystem driver the reader is the *os.File itself, so net/http can send it with sendfile.
func (s *Store) BlobReader(ctx context.Context, canonical v1.Descriptor) (io.ReadSeekCloser, error) {
	rc, err := s.driver.Reader(ctx, blobDataPath(canonical.Digest), 0)
	if err != nil {
		return nil, mapBlobErr(err)
	}
	if rsc, ok := rc.(io.ReadSeekCloser); ok {
		return rsc, nil
	}
	rc.Close()
	// Drivers whose readers cannot seek (object stores) go through distribution's buffered,
	// seekable reader.
	return &lazyReader{ctx: ctx, driver: s.driver, path: blobDataPath(canonical.Digest), size: canonical.Size}, nil
}

// BlobOpen opens the bytes of a blob linked into repo, and says how many there are.
func (s *Store) BlobOpen(ctx context.Context, repo string, dgst digest.Digest) (io.ReadSeekCloser, int64, error) {
	desc, err := s.BlobStat(ctx, repo, dgst)
	if err != nil {
		return nil, 0, err
	}
	rc, err := s.BlobReader(ctx, desc)
	if err != nil {
		return nil, 0, err
	}
	return rc, desc.Size, nil
}

// BlobRedirectURL returns a URL the client may fetch the blob from directly, or "" when the
// driver offers none or redirects are off.
func (s *Store) BlobRedirectURL(r *http.Request, canonical v1.Descriptor) (string, error) {
	if !s.redirect {
		return "", nil
	}
	return s.driver.RedirectURL(r, blobDataPath(canonical.Digest))
}

// BlobDelete unlinks a blob from repo (the bytes stay until garbage collection).
func (s *Store) BlobDelete(ctx context.Context, repo string, dgst digest.Digest) error {
	bs, err := s.blobs(ctx, repo)
	if err != nil {
		return err
	}
	return mapBlobErr(bs.Delete(ctx, dgst))
}

// BlobMount links a blob that repository from holds into repo without copying bytes. Digests of
// a non-canonical algorithm (sha512) are copied through an upload instead, because distribution
// links a mount under the requested digest only, and the bytes are kept under sha256.
func (s *Store) BlobMount(ctx context.Context, repo, from string, dgst digest.Digest) (v1.Descriptor, error) {
	src, err := s.blobs(ctx, from)
	if err != nil {
		return v1.Descriptor{}, err
	}
	srcDesc, err := src.Stat(ctx, dgst)
	if err != nil {
		return v1.Descriptor{}, mapBlobErr(err)
	}
	dst, err := s.blobs(ctx, repo)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if dgst.Algorithm() != digest.Canonical {
		return s.copyBlob(ctx, src, dst, dgst, srcDesc.Size)
	}
	named, _ := reference.WithName(from)
	canonicalRef, err := reference.WithDigest(named, dgst)
	if err != nil {
		return v1.Descriptor{}, err
	}
	_, err = dst.Create(ctx, storage.WithMountFrom(canonicalRef))
	var mounted distribution.ErrBlobMounted
	if errors.As(err, &mounted) {
		return mounted.Descriptor, nil
	}
	if err == nil {
		return v1.Descriptor{}, fmt.Errorf("mount of %s from %s started an upload instead", dgst, from)
	}
	return v1.Descriptor{}, mapBlobErr(err)
}

func (s *Store) copyBlob(ctx context.Context, src, dst distribution.BlobStore, dgst digest.Digest, size int64) (v1.Descriptor, error) {
	rc, err := src.Open(ctx, dgst)
	if err != nil {
		return v1.Descriptor{}, mapBlobErr(err)
	}
	defer rc.Close()
	return s.copyInto(ctx, dst, rc, dgst, size)
}

// copyInto uploads r into dst and commits it under dgst (re-verifying the bytes).
func (s *Store) copyInto(ctx context.Context, dst distribution.BlobStore, r io.Reader, dgst digest.Digest, size int64) (v1.Descriptor, error) {
	bw, err := dst.Create(ctx)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if _, err := io.Copy(bw, r); err != nil {
		bw.Cancel(ctx)
		return v1.Descriptor{}, err
	}
	if _, err := bw.Commit(ctx, v1.Descriptor{Digest: dgst, Size: size}); err != nil {
		bw.Cancel(ctx)
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: "application/octet-stream", Digest: dgst, Size: size}, nil
}

// BlobMountAnywhere links a blob into repo from wherever it was pushed, without a source
// repository (the OCI 1.1 mount without "from"). Canonical digests are linked in place; other
// algorithms are found through the alias recorded at their commit and copied through an upload,
// which re-verifies the digest. ErrBlobUnknown means the caller should upload the blob.
func (s *Store) BlobMountAnywhere(ctx context.Context, repo string, dgst digest.Digest) (v1.Descriptor, error) {
	canonical := dgst
	if dgst.Algorithm() != digest.Canonical {
		b, err := s.driver.GetContent(ctx, aliasPath(dgst))
		if err != nil {
			return v1.Descriptor{}, mapBlobErr(err)
		}
		if canonical, err = digest.Parse(string(b)); err != nil {
			return v1.Descriptor{}, ErrBlobUnknown // a torn alias is as good as none
		}
	}
	desc, err := s.ns.BlobStatter().Stat(ctx, canonical)
	if err != nil {
		return v1.Descriptor{}, mapBlobErr(err)
	}
	dst, err := s.blobs(ctx, repo)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if dgst != canonical {
		rc, err := s.driver.Reader(ctx, blobDataPath(canonical), 0)
		if err != nil {
			return v1.Descriptor{}, mapBlobErr(err)
		}
		defer rc.Close()
		return s.copyInto(ctx, dst, rc, dgst, desc.Size)
	}
	named, _ := reference.WithName(repo)
	ref, err := reference.WithDigest(named, canonical)
	if err != nil {
		return v1.Descriptor{}, err
	}
	// WithMountFrom with a precomputed Stat skips the source lookup and only links.
	_, err = dst.Create(ctx, createOption(func(o *distribution.CreateOptions) {
		o.Mount.ShouldMount, o.Mount.From, o.Mount.Stat = true, ref, &desc
	}))
	var mounted distribution.ErrBlobMounted
	if errors.As(err, &mounted) {
		return mounted.Descriptor, nil
	}
	if err == nil {
		return v1.Descriptor{}, fmt.Errorf("link of %s started an upload instead", canonical)
	}
	return v1.Descriptor{}, err
}

// BlobCommit finishes an upload under the client's digest. For a non-canonical digest it records
// which canonical digest holds the bytes, so BlobMountAnywhere can find them later.
func (s *Store) BlobCommit(ctx context.Context, u Upload, dgst digest.Digest) (v1.Descriptor, error) {
	desc, err := u.Commit(ctx, v1.Descriptor{Digest: dgst})
	if err != nil {
		return v1.Descriptor{}, err
	}
	if dgst.Algorithm() != digest.Canonical && desc.Digest != dgst {
		if err := s.driver.PutContent(ctx, aliasPath(dgst), []byte(desc.Digest.String())); err != nil {
			return v1.Descriptor{}, fmt.Errorf("recording %s as an alias of %s: %w", dgst, desc.Digest, err)
		}
	}
	return desc, nil
}

type createOption func(*distribution.CreateOptions)

func (f createOption) Apply(v any) error {
	o, ok := v.(*distribution.CreateOptions)
	if !ok {
		return fmt.Errorf("unexpected create options type %T", v)
	}
	f(o)
	return nil
}

// Upload is an upload session's writer (distribution's resumable blob writer).
type Upload = distribution.BlobWriter

// UploadCreate starts an upload session in repo.
func (s *Store) UploadCreate(ctx context.Context, repo string) (Upload, error) {
	bs, err := s.blobs(ctx, repo)
	if err != nil {
		return nil, err
	}
	return bs.Create(ctx)
}

// UploadResume reopens an upload session of repo; ErrUploadUnknown if there is none.
func (s *Store) UploadResume(ctx context.Context, repo, id string) (Upload, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, ErrUploadUnknown
	}
	bs, err := s.blobs(ctx, repo)
	if err != nil {
		return nil, err
	}
	u, err := bs.Resume(ctx, id)
	return u, mapBlobErr(err)
}

// PurgeUploads deletes upload sessions started before olderThan, returning how many files went.
func (s *Store) PurgeUploads(ctx context.Context, olderThan time.Time) (int, []error) {
	deleted, errs := storage.PurgeUploads(ctx, s.driver, olderThan, true)
	return len(deleted), errs
}

// ManifestPut stores manifest bytes under their digest. The bytes go to a temporary path first
// and are moved into place, so a crash never leaves a truncated manifest under a digest.
func (s *Store) ManifestPut(ctx context.Context, dgst digest.Digest, payload []byte) error {
	final := manifestPath(dgst)
	if fi, err := s.driver.Stat(ctx, final); err == nil && fi.Size() == int64(len(payload)) {
		return nil // content-addressed: already there
	}
	tmp := path.Join(manifestRoot, "_tmp", uuid.NewString())
	if err := s.driver.PutContent(ctx, tmp, payload); err != nil {
		return err
	}
	if err := s.driver.Move(ctx, tmp, final); err != nil {
		s.driver.Delete(ctx, tmp)
		return err
	}
	return nil
}

// ManifestGet reads manifest bytes and checks them against their digest.
func (s *Store) ManifestGet(ctx context.Context, dgst digest.Digest) ([]byte, error) {
	b, err := s.driver.GetContent(ctx, manifestPath(dgst))
	if err != nil {
		return nil, mapBlobErr(err)
	}
	if dgst.Algorithm().FromBytes(b) != dgst {
		return nil, fmt.Errorf("manifest %s: %w", dgst, ErrCorrupt)
	}
	return b, nil
}

// ManifestDelete removes manifest bytes. Several repositories may share them, so callers delete
// only what no repository references.
func (s *Store) ManifestDelete(ctx context.Context, dgst digest.Digest) error {
	return mapBlobErr(s.driver.Delete(ctx, manifestPath(dgst)))
}

const (
	registryRoot = "/docker/registry/v2"
	manifestRoot = "/gatehouse/v1/manifests"
	aliasRoot    = "/gatehouse/v1/aliases"
)

// blobDataPath is distribution's layout for blob bytes (registry/storage/paths.go, blobDataPathSpec);
// TestBlobDataPathMatchesDistribution pins it.
func blobDataPath(d digest.Digest) string {
	enc := d.Encoded()
	return path.Join(registryRoot, "blobs", d.Algorithm().String(), enc[:2], enc, "data")
}

// aliasPath records which canonical digest holds the bytes of a non-canonical digest.
func aliasPath(d digest.Digest) string {
	return path.Join(aliasRoot, d.Algorithm().String(), d.Encoded())
}

func manifestPath(d digest.Digest) string {
	enc := d.Encoded()
	return path.Join(manifestRoot, d.Algorithm().String(), enc[:2], enc)
}

// lazyReader is a seekable reader over a driver that opens a new stream at each seek target.
type lazyReader struct {
	ctx    context.Context
	driver storagedriver.StorageDriver
	path   string
	size   int64
	off    int64
	rc     io.ReadCloser
}

func (l *lazyReader) Read(p []byte) (int, error) {
	if l.off >= l.size {
		return 0, io.EOF
	}
	if l.rc == nil {
		rc, err := l.driver.Reader(l.ctx, l.path, l.off)
		if err != nil {
			return 0, err
		}
		l.rc = rc
	}
	n, err := l.rc.Read(p)
	l.off += int64(n)
	return n, err
}

func (l *lazyReader) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = l.off + offset
	case io.SeekEnd:
		abs = l.size + offset
	default:
		return 0, fmt.Errorf("seek: bad whence %d", whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("seek: negative offset %d", abs)
	}
	if abs != l.off && l.rc != nil {
		l.rc.Close()
		l.rc = nil
	}
	l.off = abs
	return abs, nil
}

func (l *lazyReader) Close() error {
	if l.rc != nil {
		return l.rc.Close()
	}
	return nil
}

var _ io.ReadSeekCloser = (*lazyReader)(nil)
