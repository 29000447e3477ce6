package content

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestUploadListStatDelete(t *testing.T) {
	for name, d := range drivers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s, err := New(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := s.UploadList(ctx); err != nil || len(got) != 0 {
				t.Fatalf("empty store lists %v, %v", got, err)
			}
			// a committed blob leaves links, not sessions
			push(t, s, "a/b", []byte("layer"), digest.FromString("layer"))
			before := time.Now().Add(-time.Minute)
			var ids []string
			for _, repo := range []string{"a/b", "a/b", "c"} {
				u, err := s.UploadCreate(ctx, repo)
				if err != nil {
					t.Fatal(err)
				}
				u.Write([]byte("partial"))
				u.Close()
				ids = append(ids, repo+" "+u.ID())
			}
			empty, _ := s.UploadCreate(ctx, "c")
			empty.Close()
			ids = append(ids, "c "+empty.ID())
			done, _ := s.UploadCreate(ctx, "c")
			done.Write([]byte("x"))
			if _, err := done.Commit(ctx, v1.Descriptor{Digest: digest.FromString("x")}); err != nil {
				t.Fatal(err)
			}

			list, err := s.UploadList(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, u := range list {
				got = append(got, u.Repo+" "+u.ID)
				if u.StartedAt.Before(before) {
					t.Errorf("%s %s: started at %v", u.Repo, u.ID, u.StartedAt)
				}
			}
			slices.Sort(got)
			slices.Sort(ids)
			if !slices.Equal(got, ids) {
				t.Fatalf("UploadList = %v, want %v", got, ids)
			}

			repo, id, _ := strings.Cut(ids[0], " ")
			info, err := s.UploadStat(ctx, repo, id)
			if err != nil || info.StartedAt.Before(before) {
				t.Fatalf("UploadStat = %+v, %v", info, err)
			}
			if err := s.UploadDelete(ctx, repo, id); err != nil {
				t.Fatal(err)
			}
			if _, err := s.UploadStat(ctx, repo, id); !errors.Is(err, ErrUploadUnknown) {
				t.Errorf("stat after delete: %v", err)
			}
			if _, err := s.UploadResume(ctx, repo, id); !errors.Is(err, ErrUploadUnknown) {
				t.Errorf("resume after delete: %v", err)
			}
			if err := s.UploadDelete(ctx, repo, id); err != nil {
				t.Errorf("second delete: %v", err)
			}
			if err := s.UploadDelete(ctx, "a/b", "../../blobs"); err != nil {
				t.Errorf("delete of a path is refused quietly, got %v", err)
			}
			if list, _ := s.UploadList(ctx); len(list) != len(ids)-1 {
				t.Errorf("after delete: %d sessions, want %d", len(list), len(ids)-1)
			}
		})
	}
}
