package route

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/gatehouse-dev/gatehouse/attest/harbor"
	"github.com/gatehouse-dev/gatehouse/attest/vulndb"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/storage/meta"
)

// Kind is what a route does with the names it serves.
type Kind string

const (
	Pull Kind = "pull" // read-only pull-through cache of an upstream registry
	Push Kind = "push" // hosted repositories that clients push to
)

// Route is one configured route.
type Route struct {
	Prefix string // path prefix, and the ?ns= value that selects a pull route; "" matches every name
	Kind   Kind
	// Upstream is the registry a pull route caches, e.g. https://registry-1.docker.io.
	Upstream string
	// LibraryNamespace maps one-component names to library/<name> upstream (Docker Hub's
	// official images), so docker.io/alpine and docker.io/library/alpine share one cache.
	LibraryNamespace bool
	// Allow and Deny are globs over the upstream repository path ("*" within a path component,
	// "**" across components). An empty Allow allows everything; Deny wins over Allow.
	Allow, Deny []string
	TagTTL      time.Duration // how long a cached tag is served before it is revalidated upstream
	MaxStale    time.Duration // how long a cached tag may be served while the upstream cannot answer
	// Admission is how the route's images are admitted and served.
	Admission Admission

	allow, deny []*regexp.Regexp
}

// Mode is how a route treats verdicts.
type Mode string

const (
	Enforce Mode = "enforce" // serve only what is admitted or released (also the zero Mode's meaning)
	Audit   Mode = "audit"   // admit and record verdicts, but serve everything
)

// Admission is a route's admission settings, so that one resolution of a name gives them all.
type Admission struct {
	Mode Mode
	// TagFallback: a tag whose new digest is under admission or refused keeps serving the digest
	// it last served admitted (tag_fallback: last-admitted).
	TagFallback bool
	// Policy is the bundle the route's images are evaluated under (the route's own or the
	// default); nil or one that did not compile admits nothing new.
	Policy *policies.Bundle
	// Scanner, when set, scans the route's images instead of the built-in scanner (a Harbor
	// scanner adapter, which pulls the image through Gatehouse itself).
	Scanner ExternalScanner
}

// Enforced says whether requests are served only when admitted (anything but audit: fail closed).
func (a Admission) Enforced() bool { return a.Mode != Audit }

// Stands says whether a stored verdict still holds on this route: a reviewer's always does;
// policy's while it was reached under the route's current policy on the database the image's
// stored scan was last matched with (matched). While the policy does not compile nothing can be
// evaluated again, so what was recorded stands. An index's verdict follows its children and is
// judged again from them: it never stands on its own.
func (a Admission) Stands(v meta.Verdict, matched string) bool {
	switch {
	case v.State.Reviewed():
		return true
	case v.State == meta.Pending || v.PolicyDigest == meta.IndexPolicy:
		return false
	case a.Policy == nil || a.Policy.Err != nil || a.Policy.Engine == nil:
		return true
	}
	return v.PolicyDigest == a.Policy.Engine.Digest() && v.DBVersion == matched
}

// ExternalScanner is a scanner outside Gatehouse (attest/harbor's client): it returns the
// vulnerabilities it found and its own name.
type ExternalScanner interface {
	Scan(ctx context.Context, img harbor.Image) ([]vulndb.Finding, string, error)
}

var _ ExternalScanner = (*harbor.Client)(nil)

// Resolved is a name resolved to its route.
type Resolved struct {
	Route *Route
	// Name is the local repository name: where content is kept and how it is listed
	// (prefix/remote for pull routes, canonicalised for Docker Hub's library namespace).
	Name string
	// Remote is the repository path on the upstream (pull routes only).
	Remote string
}

// Table is the closed set of routes.
type Table struct {
	routes []*Route // longest prefix first
	byNS   map[string]*Route
}

// Errors a resolution returns; callers turn them into OCI errors.
type (
	// NoRouteError: no route claims the name (or the ns value names no pull route).
	NoRouteError struct{ Name, NS string }
	// NotAllowedError: the route's allow/deny lists refuse the repository.
	NotAllowedError struct {
		Prefix, Remote string
	}
)

func (e *NoRouteError) Error() string {
	if e.NS != "" {
		return fmt.Sprintf("ns=%s names no pull route configured here; configured pull routes are the only upstreams this registry reaches", e.NS)
	}
	return fmt.Sprintf("no route serves %q; names must start with a configured route prefix", e.Name)
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("repository %q is not allowed through route %q (its allow/deny lists)", e.Remote, e.Prefix)
}

// NewTable validates routes and builds the table.
func NewTable(routes []Route) (*Table, error) {
	t := &Table{byNS: map[string]*Route{}}
	seen := map[string]bool{}
	for i := range routes {
		r := routes[i]
		if seen[r.Prefix] {
			return nil, fmt.Errorf("routes[%d]: prefix %q is configured twice", i, r.Prefix)
		}
		seen[r.Prefix] = true
		if r.Prefix != "" && (strings.HasPrefix(r.Prefix, "/") || strings.HasSuffix(r.Prefix, "/") || strings.Contains(r.Prefix, "//")) {
			return nil, fmt.Errorf("routes[%d]: prefix %q must not start or end with '/'", i, r.Prefix)
		}
		switch r.Kind {
		case Pull:
			if r.Upstream == "" {
				return nil, fmt.Errorf("routes[%d] (%s): a pull route needs an upstream", i, r.Prefix)
			}
			if r.Prefix == "" {
				return nil, fmt.Errorf("routes[%d]: a pull route needs a prefix (a catch-all pull route would send every name upstream)", i)
			}
		case Push:
			if r.Upstream != "" {
				return nil, fmt.Errorf("routes[%d] (%s): a push route has no upstream", i, r.Prefix)
			}
		default:
			return nil, fmt.Errorf("routes[%d] (%s): kind %q is not pull or push", i, r.Prefix, r.Kind)
		}
		for _, g := range r.Allow {
			r.allow = append(r.allow, globRegexp(g))
		}
		for _, g := range r.Deny {
			r.deny = append(r.deny, globRegexp(g))
		}
		rp := &r
		t.routes = append(t.routes, rp)
		if r.Kind == Pull {
			t.byNS[r.Prefix] = rp
		}
	}
	sort.SliceStable(t.routes, func(a, b int) bool { return len(t.routes[a].Prefix) > len(t.routes[b].Prefix) })
	return t, nil
}

// Routes lists the routes, longest prefix first.
func (t *Table) Routes() []*Route { return t.routes }

// Resolve finds the route for a repository name as the client sent it, and the ns parameter
// (containerd's registry-mirror mode; "" when absent).
func (t *Table) Resolve(name, ns string) (Resolved, error) {
	if ns != "" {
		r, ok := t.byNS[ns]
		if !ok {
			return Resolved{}, &NoRouteError{Name: name, NS: ns}
		}
		// A client that already put the prefix in the path (pulling docker.io/library/x from a
		// mirror of docker.io) is not sent upstream as docker.io/docker.io/library/x.
		remote := strings.TrimPrefix(name, r.Prefix+"/")
		return r.resolve(remote)
	}
	for _, r := range t.routes {
		if r.Prefix == "" {
			return Resolved{Route: r, Name: name}, nil
		}
		if rest, ok := strings.CutPrefix(name, r.Prefix+"/"); ok {
			if r.Kind == Push {
				return Resolved{Route: r, Name: name}, nil
			}
			return r.resolve(rest)
		}
		if name == r.Prefix {
			if r.Kind == Push {
				return Resolved{Route: r, Name: name}, nil
			}
			return Resolved{}, &NoRouteError{Name: name} // a pull prefix alone names no repository
		}
	}
	return Resolved{}, &NoRouteError{Name: name}
}

func (r *Route) resolve(remote string) (Resolved, error) {
	if remote == "" {
		return Resolved{}, &NoRouteError{Name: r.Prefix}
	}
	if r.LibraryNamespace && !strings.Contains(remote, "/") {
		remote = "library/" + remote
	}
	if !r.Allowed(remote) {
		return Resolved{}, &NotAllowedError{Prefix: r.Prefix, Remote: remote}
	}
	return Resolved{Route: r, Name: r.Prefix + "/" + remote, Remote: remote}, nil
}

// Allowed applies the route's allow and deny lists to an upstream repository path.
func (r *Route) Allowed(remote string) bool {
	for _, d := range r.deny {
		if d.MatchString(remote) {
			return false
		}
	}
	if len(r.allow) == 0 {
		return true
	}
	for _, a := range r.allow {
		if a.MatchString(remote) {
			return true
		}
	}
	return false
}

// globRegexp turns a repository glob into an anchored regexp: "**" crosses '/', "*" does not.
func globRegexp(g string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(g); i++ {
		switch {
		case strings.HasPrefix(g[i:], "**"):
			b.WriteString(".*")
			i++
		case g[i] == '*':
			b.WriteString("[^/]*")
		case g[i] == '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(g[i : i+1]))
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}
