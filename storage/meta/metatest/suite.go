package metatest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/opencontainers/go-digest"

	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Store is the whole contract of a metadata store, as the suite exercises it.
type Store = meta.Store

// Run runs the suite; open returns a new, empty store for each subtest.
func Run(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()
	tests := map[string]func(t *testing.T, s Store){
		"ManifestRoundTrip":      testManifestRoundTrip,
		"ManifestPutIdempotent":  testManifestPutIdempotent,
		"TagsMoveAndDelete":      testTagsMoveAndDelete,
		"ManifestDeleteDropsTag": testManifestDeleteDropsTags,
		"TagListPagination":      testTagListPagination,
		"Catalog":                testCatalog,
		"Referrers":              testReferrers,
		"RepositoriesIsolated":   testRepositoriesIsolated,
		"ConcurrentWriters":      testConcurrentWriters,
		"TagTimestamps":          testTagTimestamps,
		"Scans":                  testScans,
		"Verdicts":               testVerdicts,
		"AdmittedTags":           testAdmittedTags,
		"VerdictsServed":         testVerdictsServed,
		"VerdictRepos":           testVerdictRepos,
	}
	for name, fn := range tests {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { s.Close() })
			if err := s.Ping(ctx); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			fn(t, s)
		})
	}
}

func dg(s string) digest.Digest { return digest.FromString(s) }

func manifest(repo, content string) meta.Manifest {
	return meta.Manifest{
		Repo: repo, Digest: dg(content), MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: int64(len(content)), Created: time.Unix(1700000000, 0).UTC(),
	}
}

func mustPut(t *testing.T, s Store, m meta.Manifest, tags ...string) {
	t.Helper()
	if err := s.ManifestPut(context.Background(), m, tags...); err != nil {
		t.Fatalf("ManifestPut(%s %s): %v", m.Repo, m.Digest, err)
	}
}

func testManifestRoundTrip(t *testing.T, s Store) {
	ctx := context.Background()
	want := manifest("team/app", "m1")
	want.ArtifactType = "application/vnd.example+type"
	want.Subject = dg("subject")
	want.Annotations = map[string]string{"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
	mustPut(t, s, want, "v1")
	got, err := s.ManifestGet(ctx, "team/app", want.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("ManifestGet (-want +got):\n%s", diff)
	}
	if _, err := s.ManifestGet(ctx, "team/app", dg("other")); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("ManifestGet(unknown) err = %v, want ErrNotFound", err)
	}
	d, err := s.TagGet(ctx, "team/app", "v1")
	if err != nil || d != want.Digest {
		t.Errorf("TagGet = %s, %v; want %s", d, err, want.Digest)
	}
	ok, err := s.RepositoryExists(ctx, "team/app")
	if err != nil || !ok {
		t.Errorf("RepositoryExists = %v, %v; want true", ok, err)
	}
}

func testManifestPutIdempotent(t *testing.T, s Store) {
	ctx := context.Background()
	m := manifest("r", "m1")
	mustPut(t, s, m, "a")
	mustPut(t, s, m, "b")
	for _, tag := range []string{"a", "b"} {
		if d, err := s.TagGet(ctx, "r", tag); err != nil || d != m.Digest {
			t.Errorf("TagGet(%s) = %s, %v", tag, d, err)
		}
	}
}

func testTagsMoveAndDelete(t *testing.T, s Store) {
	ctx := context.Background()
	m1, m2 := manifest("r", "m1"), manifest("r", "m2")
	mustPut(t, s, m1, "latest")
	mustPut(t, s, m2, "latest")
	if d, _ := s.TagGet(ctx, "r", "latest"); d != m2.Digest {
		t.Errorf("tag did not move: %s, want %s", d, m2.Digest)
	}
	if err := s.TagDelete(ctx, "r", "latest"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TagGet(ctx, "r", "latest"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("TagGet after delete err = %v", err)
	}
	if err := s.TagDelete(ctx, "r", "latest"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("second TagDelete err = %v, want ErrNotFound", err)
	}
	// the manifest itself stays
	if _, err := s.ManifestGet(ctx, "r", m2.Digest); err != nil {
		t.Errorf("manifest gone with its tag: %v", err)
	}
}

func testManifestDeleteDropsTags(t *testing.T, s Store) {
	ctx := context.Background()
	m := manifest("r", "m1")
	mustPut(t, s, m, "a", "b")
	if err := s.ManifestDelete(ctx, "r", m.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ManifestGet(ctx, "r", m.Digest); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("ManifestGet after delete err = %v", err)
	}
	tags, _, err := s.TagList(ctx, "r", meta.Page{})
	if err != nil || len(tags) != 0 {
		t.Errorf("tags after manifest delete = %v, %v; want none", tags, err)
	}
	if err := s.ManifestDelete(ctx, "r", m.Digest); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("second ManifestDelete err = %v, want ErrNotFound", err)
	}
}

func testTagListPagination(t *testing.T, s Store) {
	ctx := context.Background()
	m := manifest("r", "m")
	mustPut(t, s, m, "c", "a", "b", "e", "d")
	tests := []struct {
		page     meta.Page
		want     []string
		wantMore bool
	}{
		{meta.Page{}, []string{"a", "b", "c", "d", "e"}, false},
		{meta.Page{N: 2}, []string{"a", "b"}, true},
		{meta.Page{N: 2, Last: "b"}, []string{"c", "d"}, true},
		{meta.Page{N: 2, Last: "d"}, []string{"e"}, false},
		{meta.Page{N: 5}, []string{"a", "b", "c", "d", "e"}, false},
		{meta.Page{Last: "e"}, nil, false},
	}
	for _, tt := range tests {
		got, more, err := s.TagList(ctx, "r", tt.page)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" || more != tt.wantMore {
			t.Errorf("TagList(%+v) = %v more=%v; want %v more=%v", tt.page, got, more, tt.want, tt.wantMore)
		}
	}
}

func testCatalog(t *testing.T, s Store) {
	ctx := context.Background()
	for _, r := range []string{"b/x", "a", "c"} {
		if err := s.RepositoryPut(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RepositoryPut(ctx, "a"); err != nil {
		t.Fatalf("RepositoryPut twice: %v", err)
	}
	got, more, err := s.Catalog(ctx, meta.Page{N: 2})
	if err != nil || more != true || !cmp.Equal(got, []string{"a", "b/x"}) {
		t.Errorf("Catalog(n=2) = %v %v %v", got, more, err)
	}
	got, more, err = s.Catalog(ctx, meta.Page{N: 2, Last: "b/x"})
	if err != nil || more || !cmp.Equal(got, []string{"c"}) {
		t.Errorf("Catalog(last=b/x) = %v %v %v", got, more, err)
	}
	if ok, _ := s.RepositoryExists(ctx, "zzz"); ok {
		t.Error("RepositoryExists(zzz) = true")
	}
}

func testReferrers(t *testing.T, s Store) {
	ctx := context.Background()
	subject := dg("image")
	sig := manifest("r", "sig")
	sig.Subject, sig.ArtifactType = subject, "application/vnd.dev.cosign.artifact.sig.v1+json"
	sbom := manifest("r", "sbom")
	sbom.Subject, sbom.ArtifactType = subject, "application/spdx+json"
	sbom.Annotations = map[string]string{"k": "v"}
	other := manifest("r", "unrelated")
	elsewhere := manifest("r2", "sig-in-other-repo")
	elsewhere.Subject = subject
	for _, m := range []meta.Manifest{sig, sbom, other, elsewhere} {
		mustPut(t, s, m)
	}
	got, err := s.Referrers(ctx, "r", subject, "")
	if err != nil {
		t.Fatal(err)
	}
	byDigest := cmpopts.SortSlices(func(a, b meta.Manifest) bool { return a.Digest < b.Digest })
	if diff := cmp.Diff([]meta.Manifest{sig, sbom}, got, byDigest, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Referrers (-want +got):\n%s", diff)
	}
	got, err = s.Referrers(ctx, "r", subject, "application/spdx+json")
	if err != nil || len(got) != 1 || got[0].Digest != sbom.Digest {
		t.Errorf("Referrers(filter) = %v, %v", got, err)
	}
	if err := s.ManifestDelete(ctx, "r", sig.Digest); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Referrers(ctx, "r", subject, "")
	if len(got) != 1 {
		t.Errorf("Referrers after deleting one = %d entries, want 1", len(got))
	}
	if got, _ := s.Referrers(ctx, "r", dg("nothing"), ""); len(got) != 0 {
		t.Errorf("Referrers(unknown subject) = %v", got)
	}
}

func testRepositoriesIsolated(t *testing.T, s Store) {
	ctx := context.Background()
	m := manifest("a", "m")
	mustPut(t, s, m, "t")
	if _, err := s.ManifestGet(ctx, "b", m.Digest); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("manifest of repo a visible in b: %v", err)
	}
	if _, err := s.TagGet(ctx, "b", "t"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("tag of repo a visible in b: %v", err)
	}
	if _, err := s.TagGet(ctx, "a/sub", "t"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("tag of repo a visible in a/sub: %v", err)
	}
}

func testConcurrentWriters(t *testing.T, s Store) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 4 {
				m := manifest("r", fmt.Sprintf("m-%d-%d", i, j))
				if err := s.ManifestPut(ctx, m, fmt.Sprintf("t%d", i)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent ManifestPut: %v", err)
	}
	tags, _, err := s.TagList(ctx, "r", meta.Page{})
	if err != nil || len(tags) != 16 {
		t.Errorf("after concurrent writes: %d tags, %v; want 16", len(tags), err)
	}
}

func testTagTimestamps(t *testing.T, s Store) {
	ctx := context.Background()
	m1, m2 := manifest("r", "m1"), manifest("r", "m2")
	before := time.Now().Add(-time.Second)
	mustPut(t, s, m1, "latest")
	info, err := s.TagInfo(ctx, "r", "latest")
	if err != nil || info.Digest != m1.Digest || info.Checked.Before(before) || info.Updated.Before(before.Truncate(time.Second)) {
		t.Fatalf("TagInfo = %+v, %v", info, err)
	}
	at := time.Now().Add(time.Hour)
	if err := s.TagTouch(ctx, "r", "latest", m1.Digest, at); err != nil {
		t.Fatal(err)
	}
	info, _ = s.TagInfo(ctx, "r", "latest")
	if !info.Checked.Equal(at.UTC().Truncate(time.Nanosecond)) && info.Checked.Sub(at).Abs() > time.Millisecond {
		t.Errorf("Checked = %s, want %s", info.Checked, at)
	}
	// touching with a digest the tag no longer has must not confirm it
	if err := s.TagTouch(ctx, "r", "latest", m2.Digest, at); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("TagTouch(wrong digest) = %v, want ErrNotFound", err)
	}
	if _, err := s.TagInfo(ctx, "r", "nope"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("TagInfo(unknown) = %v", err)
	}
}

func testScans(t *testing.T, s Store) {
	ctx := context.Background()
	at := time.Unix(1700000000, 5).UTC()
	a := meta.Scan{Digest: dg("a"), Repo: "r", Scanned: at, Scanner: "builtin", Duration: 1500 * time.Millisecond, Complete: true, Result: []byte(`{"x":1}`)}
	b := meta.Scan{Digest: dg("b"), Repo: "r", Scanned: at.Add(time.Second), Scanner: "builtin", Complete: false, Result: []byte(`{}`)}
	failed := meta.Scan{Digest: dg("c"), Repo: "r", Scanned: at, Scanner: "builtin", Error: "layer unreadable"}
	for _, sc := range []meta.Scan{a, b, failed} {
		if err := s.ScanPut(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ScanGet(ctx, a.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(a, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("ScanGet (-want +got):\n%s", diff)
	}
	todo, err := s.ScansToMatch(ctx, "v1", 10)
	if err != nil || len(todo) != 2 || todo[0] != a.Digest {
		t.Fatalf("ScansToMatch(v1) = %v %v; want a, b (not the failed scan)", todo, err)
	}
	if err := s.ScanVulnsPut(ctx, a.Digest, "v1", []byte(`[{"id":"CVE-1"}]`), at); err != nil {
		t.Fatal(err)
	}
	todo, _ = s.ScansToMatch(ctx, "v1", 10)
	if len(todo) != 1 || todo[0] != b.Digest {
		t.Errorf("after matching a: %v", todo)
	}
	todo, _ = s.ScansToMatch(ctx, "v2", 10)
	if len(todo) != 2 {
		t.Errorf("a new database version must re-match everything: %v", todo)
	}
	got, _ = s.ScanGet(ctx, a.Digest)
	if got.DBVersion != "v1" || string(got.Vulns) != `[{"id":"CVE-1"}]` || !got.Matched.Equal(at) {
		t.Errorf("matched scan: %+v", got)
	}
	if err := s.ScanVulnsPut(ctx, dg("nope"), "v1", nil, at); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("ScanVulnsPut(unknown) = %v", err)
	}
	if _, err := s.ScanGet(ctx, dg("nope")); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("ScanGet(unknown) = %v", err)
	}
}

func testVerdicts(t *testing.T, s Store) {
	ctx := context.Background()
	d := dg("image")
	at := time.Unix(1700000000, 0).UTC()
	if _, err := s.VerdictGet(ctx, "r", d); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("VerdictGet before any verdict: %v", err)
	}
	steps := []struct {
		state  meta.State
		reason string
	}{
		{meta.Pending, "scan queued"},
		{meta.Admitted, "policy allows"},
		{meta.Admitted, "re-evaluated: still allowed"}, // same state: no transition recorded
		{meta.Quarantined, "CVE-2024-45338 (critical, fixed in 0.33.0)"},
	}
	for i, st := range steps {
		v := meta.Verdict{Repo: "r", Digest: d, State: st.state, Decision: []byte(`{"allow":false}`), PolicyDigest: "p1", DBVersion: "v1", Decided: at.Add(time.Duration(i) * time.Second)}
		if err := s.VerdictSet(ctx, v, "gatehouse", st.reason); err != nil {
			t.Fatal(err)
		}
	}
	v, err := s.VerdictGet(ctx, "r", d)
	if err != nil || v.State != meta.Quarantined || v.PolicyDigest != "p1" || !v.Decided.Equal(at.Add(3*time.Second)) {
		t.Errorf("VerdictGet = %+v %v", v, err)
	}
	if _, err := s.VerdictGet(ctx, "other", d); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("a verdict leaked to another repository: %v", err)
	}
	trail, err := s.AuditList(ctx, "r", d)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range trail {
		got = append(got, string(a.From)+">"+string(a.To)+":"+a.Reason)
	}
	want := []string{">pending:scan queued", "pending>admitted:policy allows", "admitted>quarantined:CVE-2024-45338 (critical, fixed in 0.33.0)"}
	if !cmp.Equal(got, want) {
		t.Errorf("audit trail %v, want %v", got, want)
	}
	stale, err := s.VerdictsStale(ctx, "p1", "v1", 10)
	if err != nil || len(stale) != 0 {
		t.Errorf("VerdictsStale(current) = %v %v", stale, err)
	}
	if stale, _ := s.VerdictsStale(ctx, "p1", "v2", 10); len(stale) != 1 || stale[0].Digest != d {
		t.Errorf("VerdictsStale(new db) = %v", stale)
	}
	if stale, _ := s.VerdictsStale(ctx, "p2", "v1", 10); len(stale) != 1 {
		t.Errorf("VerdictsStale(new policy) = %v", stale)
	}
}

func testAdmittedTags(t *testing.T, s Store) {
	ctx := context.Background()
	if _, err := s.AdmittedTagGet(ctx, "r", "v1"); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("AdmittedTagGet before any: %v", err)
	}
	for _, d := range []digest.Digest{dg("one"), dg("two")} {
		if err := s.AdmittedTagSet(ctx, "r", "v1", d); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := s.AdmittedTagGet(ctx, "r", "v1"); err != nil || d != dg("two") {
		t.Errorf("AdmittedTagGet = %s %v, want the latest", d, err)
	}
	if _, err := s.AdmittedTagGet(ctx, "other", "v1"); !errors.Is(err, meta.ErrNotFound) {
		t.Errorf("another repository's tag: %v", err)
	}
}

func testVerdictsServed(t *testing.T, s Store) {
	ctx := context.Background()
	for name, state := range map[string]meta.State{"a": meta.Admitted, "b": meta.Quarantined, "c": meta.Released, "d": meta.Pending} {
		v := meta.Verdict{Repo: "r", Digest: dg(name), State: state, Decided: time.Unix(1700000000, 0)}
		if err := s.VerdictSet(ctx, v, "gatehouse", "test"); err != nil {
			t.Fatal(err)
		}
	}
	s.VerdictSet(ctx, meta.Verdict{Repo: "other", Digest: dg("e"), State: meta.Admitted, Decided: time.Unix(1700000000, 0)}, "gatehouse", "test")
	got, err := s.VerdictsServed(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	want := map[digest.Digest]meta.State{dg("a"): meta.Admitted, dg("c"): meta.Released}
	if len(got) != len(want) {
		t.Fatalf("VerdictsServed = %+v, want %v", got, want)
	}
	for _, v := range got {
		if want[v.Digest] != v.State || v.Repo != "r" {
			t.Errorf("VerdictsServed has %+v", v)
		}
	}
}

func testVerdictRepos(t *testing.T, s Store) {
	ctx := context.Background()
	for _, repo := range []string{"team/b", "team/a", "docker.io/library/x"} {
		if err := s.VerdictSet(ctx, meta.Verdict{Repo: repo, Digest: dg("shared"), State: meta.Admitted, Decided: time.Unix(1700000000, 0)}, "gatehouse", "test"); err != nil {
			t.Fatal(err)
		}
	}
	s.VerdictSet(ctx, meta.Verdict{Repo: "team/c", Digest: dg("other"), State: meta.Admitted, Decided: time.Unix(1700000000, 0)}, "gatehouse", "test")
	got, err := s.VerdictRepos(ctx, dg("shared"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"docker.io/library/x", "team/a", "team/b"}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("VerdictRepos = %v, want %v", got, want)
	}
	if got, err := s.VerdictRepos(ctx, dg("none")); err != nil || len(got) != 0 {
		t.Errorf("VerdictRepos of an unknown digest = %v, %v", got, err)
	}
}
