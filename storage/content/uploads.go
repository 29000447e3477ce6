package content

import (
	"context"
	"errors"
	"path"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/google/uuid"
)

// UploadInfo describes an upload session as storage holds it.
type UploadInfo struct {
	Repo      string
	ID        string
	StartedAt time.Time // zero when the session's startedat file is missing or torn
	Modified  time.Time // when its bytes last changed (zero when it holds none yet)
}

// uploadDir is distribution's directory of one upload session (registry/storage/paths.go,
// uploadDataPathSpec without the "data" leaf).
func uploadDir(repo, id string) string {
	return path.Join(registryRoot, "repositories", repo, "_uploads", id)
}

func validUpload(repo, id string) error {
	if _, err := uuid.Parse(id); err != nil {
		return ErrUploadUnknown
	}
	if _, err := reference.WithName(repo); err != nil {
		return ErrUploadUnknown
	}
	return nil
}

// UploadList lists the upload sessions storage holds, in every repository: a server counts its
// open sessions from it at start, so a restart forgets none.
func (s *Store) UploadList(ctx context.Context) ([]UploadInfo, error) {
	root := path.Join(registryRoot, "repositories")
	var out []UploadInfo
	byDir := map[string]int{}
	err := s.driver.Walk(ctx, root, func(fi storagedriver.FileInfo) error {
		p := fi.Path()
		base := path.Base(p)
		if fi.IsDir() && strings.HasPrefix(base, "_") && base != "_uploads" {
			return storagedriver.ErrSkipDir // _layers, _manifests: links, not sessions
		}
		repo, rest, ok := strings.Cut(strings.TrimPrefix(p, root+"/"), "/_uploads/")
		if !ok {
			return nil
		}
		id, leaf, _ := strings.Cut(rest, "/")
		if _, err := uuid.Parse(id); err != nil {
			return nil
		}
		dir := uploadDir(repo, id)
		i, seen := byDir[dir]
		if !seen {
			i = len(out)
			byDir[dir] = i
			out = append(out, UploadInfo{Repo: repo, ID: id})
		}
		switch leaf {
		case "data":
			out[i].Modified = fi.ModTime()
		case "startedat":
			out[i].StartedAt = s.startedAt(ctx, p)
		}
		return nil
	})
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil, nil // nothing pushed yet
	}
	return out, err
}

func (s *Store) startedAt(ctx context.Context, p string) time.Time {
	b, err := s.driver.GetContent(ctx, p)
	if err != nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339, string(b))
	if err != nil {
		return time.Time{}
	}
	return t
}

// UploadStat describes one upload session; ErrUploadUnknown if storage holds none.
func (s *Store) UploadStat(ctx context.Context, repo, id string) (UploadInfo, error) {
	if err := validUpload(repo, id); err != nil {
		return UploadInfo{}, err
	}
	dir := uploadDir(repo, id)
	info := UploadInfo{Repo: repo, ID: id}
	started, err := s.driver.Stat(ctx, path.Join(dir, "startedat"))
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return UploadInfo{}, ErrUploadUnknown
	}
	if err != nil {
		return UploadInfo{}, err
	}
	info.StartedAt = s.startedAt(ctx, started.Path())
	if fi, err := s.driver.Stat(ctx, path.Join(dir, "data")); err == nil {
		info.Modified = fi.ModTime()
	}
	return info, nil
}

// UploadDelete removes an upload session and its bytes (a session closed for idling); deleting
// one that is already gone is no error.
func (s *Store) UploadDelete(ctx context.Context, repo, id string) error {
	if err := validUpload(repo, id); err != nil {
		return nil
	}
	err := s.driver.Delete(ctx, uploadDir(repo, id))
	if errors.As(err, new(storagedriver.PathNotFoundError)) {
		return nil
	}
	return err
}
