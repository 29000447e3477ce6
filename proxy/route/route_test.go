package route

import (
	"errors"
	"testing"
)

func table(t *testing.T) *Table {
	t.Helper()
	tb, err := NewTable([]Route{
		{Prefix: "", Kind: Push},
		{Prefix: "docker.io", Kind: Pull, Upstream: "https://registry-1.docker.io", LibraryNamespace: true},
		{Prefix: "ghcr.io", Kind: Pull, Upstream: "https://ghcr.io", Deny: []string{"evil/**"}},
		{Prefix: "ghcr.io/acme", Kind: Pull, Upstream: "https://acme.example", Allow: []string{"apps/*"}},
		{Prefix: "ci", Kind: Push},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestResolve(t *testing.T) {
	tb := table(t)
	tests := []struct {
		name, ns             string
		wantPrefix, wantName string
		wantRemote           string
		wantErr              string // "noroute" | "notallowed"
	}{
		// path-prefix mode
		{"docker.io/library/alpine", "", "docker.io", "docker.io/library/alpine", "library/alpine", ""},
		{"docker.io/alpine", "", "docker.io", "docker.io/library/alpine", "library/alpine", ""},
		{"docker.io/bitnami/redis", "", "docker.io", "docker.io/bitnami/redis", "bitnami/redis", ""},
		{"ghcr.io/org/tool", "", "ghcr.io", "ghcr.io/org/tool", "org/tool", ""},
		{"ghcr.io/acme/apps/web", "", "ghcr.io/acme", "ghcr.io/acme/apps/web", "apps/web", ""}, // longest prefix wins
		{"ghcr.io/acme/secret/db", "", "", "", "", "notallowed"},
		{"ghcr.io/evil/deep/thing", "", "", "", "", "notallowed"},
		{"ci/team/app", "", "ci", "ci/team/app", "", ""},
		{"team/app", "", "", "team/app", "", ""},         // the hosted catch-all
		{"docker.io", "", "", "", "", "noroute"},         // a pull prefix alone names no repository
		{"docker.iox/a", "", "", "docker.iox/a", "", ""}, // prefixes match whole components
		// containerd mirror mode
		{"library/alpine", "docker.io", "docker.io", "docker.io/library/alpine", "library/alpine", ""},
		{"alpine", "docker.io", "docker.io", "docker.io/library/alpine", "library/alpine", ""},
		{"docker.io/library/alpine", "docker.io", "docker.io", "docker.io/library/alpine", "library/alpine", ""},
		{"org/tool", "ghcr.io", "ghcr.io", "ghcr.io/org/tool", "org/tool", ""},
		{"library/alpine", "evil.example", "", "", "", "noroute"}, // ns is a lookup key, never a host
		{"team/app", "ci", "", "", "", "noroute"},                 // ns selects pull routes only
	}
	for _, tt := range tests {
		t.Run(tt.name+"?ns="+tt.ns, func(t *testing.T) {
			got, err := tb.Resolve(tt.name, tt.ns)
			switch tt.wantErr {
			case "noroute":
				var e *NoRouteError
				if !errors.As(err, &e) {
					t.Fatalf("err = %v, want NoRouteError", err)
				}
				return
			case "notallowed":
				var e *NotAllowedError
				if !errors.As(err, &e) {
					t.Fatalf("err = %v, want NotAllowedError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Route.Prefix != tt.wantPrefix || got.Name != tt.wantName || got.Remote != tt.wantRemote {
				t.Errorf("got route %q name %q remote %q; want %q %q %q", got.Route.Prefix, got.Name, got.Remote, tt.wantPrefix, tt.wantName, tt.wantRemote)
			}
		})
	}
}

func TestNoCatchAll(t *testing.T) {
	tb, err := NewTable([]Route{{Prefix: "docker.io", Kind: Pull, Upstream: "https://registry-1.docker.io"}})
	if err != nil {
		t.Fatal(err)
	}
	var e *NoRouteError
	if _, err := tb.Resolve("team/app", ""); !errors.As(err, &e) {
		t.Errorf("unrouted name resolved: %v", err)
	}
}

func TestNewTableRefuses(t *testing.T) {
	for name, routes := range map[string][]Route{
		"duplicate prefix":      {{Prefix: "a", Kind: Push}, {Prefix: "a", Kind: Push}},
		"pull without upstream": {{Prefix: "a", Kind: Pull}},
		"catch-all pull":        {{Prefix: "", Kind: Pull, Upstream: "https://x"}},
		"push with upstream":    {{Prefix: "a", Kind: Push, Upstream: "https://x"}},
		"bad kind":              {{Prefix: "a", Kind: "mirror"}},
		"slash prefix":          {{Prefix: "a/", Kind: Push}},
	} {
		if _, err := NewTable(routes); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		glob, s string
		want    bool
	}{
		{"library/*", "library/alpine", true},
		{"library/*", "library/a/b", false},
		{"org/**", "org/a/b/c", true},
		{"*/app", "team/app", true},
		{"a.b", "axb", false},
		{"app-?", "app-1", true},
	}
	for _, tt := range tests {
		if got := globRegexp(tt.glob).MatchString(tt.s); got != tt.want {
			t.Errorf("glob %q on %q = %v", tt.glob, tt.s, got)
		}
	}
}
