// Package policies decides, in Rego, whether an image may be admitted: it embeds the default
// policy (default/*.rego, with its tests), compiles a policy bundle once into a prepared query,
// and evaluates one documented input (input.schema.json) to allow, deny with reasons, and warn.
// It does no I/O of its own beyond reading the policy files it is given.
package policies
