package main

import (
	"context"
	"errors"
	"os"

	"github.com/gatehouse-dev/gatehouse/cmd/gatehouse/config"
	"github.com/gatehouse-dev/gatehouse/policies"
)

// loadPolicies compiles the default policy (admission.policy, or the embedded one) and each
// route's own. A bundle that does not compile is returned with its error, not dropped: admission
// under it fails closed and says why.
func loadPolicies(ctx context.Context, cfg config.Config) (policies.Bundle, map[string]policies.Bundle) {
	load := func(dir string) policies.Bundle {
		if dir == "" {
			e, err := policies.Load(ctx, policies.Default())
			return policies.Bundle{Source: "embedded default", Engine: e, Err: err}
		}
		e, err := policies.Load(ctx, os.DirFS(dir))
		return policies.Bundle{Source: dir, Engine: e, Err: err}
	}
	def := load(cfg.Admission.Policy)
	routes := map[string]policies.Bundle{}
	for _, r := range cfg.Routes {
		if r.Policy != "" {
			routes[r.Prefix] = load(r.Policy)
		}
	}
	return def, routes
}

// policyErrors joins the errors of the bundles that did not compile (config check reports them).
func policyErrors(def policies.Bundle, routes map[string]policies.Bundle) error {
	var errs []error
	for _, b := range append([]policies.Bundle{def}, mapValues(routes)...) {
		if b.Err != nil {
			errs = append(errs, errors.New(b.Source+": "+b.Err.Error()))
		}
	}
	return errors.Join(errs...)
}

func mapValues(m map[string]policies.Bundle) []policies.Bundle {
	out := make([]policies.Bundle, 0, len(m))
	for _, b := range m {
		out = append(out, b)
	}
	return out
}
