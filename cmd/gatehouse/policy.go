package main

import (
	"context"
	"errors"
	"os"

	"github.com/gatehouse-dev/gatehouse/cmd/gatehouse/config"
	"github.com/gatehouse-dev/gatehouse/policies"
	"github.com/gatehouse-dev/gatehouse/proxy/admission"
)

// loadPolicies compiles the default policy (admission.policy, or the embedded one) and each
// route's own. A bundle that does not compile is returned with its error, not dropped: admission
// under it fails closed and says why.
func loadPolicies(ctx context.Context, cfg config.Config) (admission.Bundle, map[string]admission.Bundle) {
	load := func(dir string) admission.Bundle {
		if dir == "" {
			e, err := policies.Load(ctx, policies.Default())
			return admission.Bundle{Source: "embedded default", Engine: e, Err: err}
		}
		e, err := policies.Load(ctx, os.DirFS(dir))
		return admission.Bundle{Source: dir, Engine: e, Err: err}
	}
	def := load(cfg.Admission.Policy)
	routes := map[string]admission.Bundle{}
	for _, r := range cfg.Routes {
		if r.Policy != "" {
			routes[r.Prefix] = load(r.Policy)
		}
	}
	return def, routes
}

// policyErrors joins the errors of the bundles that did not compile (config check reports them).
func policyErrors(def admission.Bundle, routes map[string]admission.Bundle) error {
	var errs []error
	for _, b := range append([]admission.Bundle{def}, mapValues(routes)...) {
		if b.Err != nil {
			errs = append(errs, errors.New(b.Source+": "+b.Err.Error()))
		}
	}
	return errors.Join(errs...)
}

func mapValues(m map[string]admission.Bundle) []admission.Bundle {
	out := make([]admission.Bundle, 0, len(m))
	for _, b := range m {
		out = append(out, b)
	}
	return out
}
