package policies

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/tester"
)

//go:embed default/*.rego
var defaultFS embed.FS

// Default is the embedded default policy bundle.
func Default() fs.FS {
	sub, _ := fs.Sub(defaultFS, "default")
	return sub
}

// Reason is one rule's verdict on an image.
type Reason struct {
	Rule     string `json:"rule"`
	Message  string `json:"message"`
	Evidence any    `json:"evidence,omitempty"`
}

// Decision is what the policy says.
type Decision struct {
	Allow bool     `json:"allow"`
	Deny  []Reason `json:"deny"`
	Warn  []Reason `json:"warn"`
}

// Reasons says why the decision refuses, for a person: the first n deny messages, then how many
// more there are ("" when nothing is denied).
func (d Decision) Reasons(n int) string {
	var msgs []string
	for i, r := range d.Deny {
		if i == n {
			msgs = append(msgs, fmt.Sprintf("and %d more", len(d.Deny)-n))
			break
		}
		msgs = append(msgs, r.Message)
	}
	return strings.Join(msgs, "; ")
}

// ReasonsOf is Reasons of a recorded decision (its JSON); "" when it cannot be read.
func ReasonsOf(decision []byte, n int) string {
	var d Decision
	if json.Unmarshal(decision, &d) != nil {
		return ""
	}
	return d.Reasons(n)
}

// Engine is a compiled policy bundle.
type Engine struct {
	query   rego.PreparedEvalQuery
	modules map[string]*ast.Module
	digest  string
}

// Bundle is a loaded policy, or why it did not load (admission under it then fails closed).
type Bundle struct {
	Source string  // where it was loaded from ("embedded default" or a directory)
	Engine *Engine // nil when Err says why it did not compile
	Err    error
}

// Load compiles the .rego files of a bundle (tests included, so Test can run them) and prepares
// the decision query. A bundle that does not compile is an error: nothing can be admitted under it.
func Load(ctx context.Context, bundle fs.FS) (*Engine, error) {
	modules := map[string]*ast.Module{}
	h := sha256.New()
	var names []string
	err := fs.WalkDir(bundle, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".rego") {
			names = append(names, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	sort.Strings(names)
	opts := []func(*rego.Rego){rego.Query("data.gatehouse.decision")}
	for _, n := range names {
		src, err := fs.ReadFile(bundle, n)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		m, err := ast.ParseModuleWithOpts(n, string(src), ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			return nil, fmt.Errorf("policy does not compile: %w", err)
		}
		modules[n] = m
		fmt.Fprintf(h, "%s\x00%x\n", n, sha256.Sum256(src))
		if !strings.HasSuffix(n, "_test.rego") {
			opts = append(opts, rego.ParsedModule(m))
		}
	}
	if len(modules) == 0 {
		return nil, fmt.Errorf("policy: the bundle has no .rego files")
	}
	q, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy does not compile: %w", err)
	}
	return &Engine{query: q, modules: modules, digest: "sha256:" + hex.EncodeToString(h.Sum(nil))}, nil
}

// Digest identifies the bundle: verdicts record the policy they were decided under.
func (e *Engine) Digest() string { return e.digest }

// Eval decides on one input. A policy that produces no decision is an error (fail closed).
func (e *Engine) Eval(ctx context.Context, in Input) (Decision, error) {
	raw, err := json.Marshal(in)
	if err != nil {
		return Decision{}, err
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return Decision{}, err
	}
	rs, err := e.query.Eval(ctx, rego.EvalInput(doc))
	if err != nil {
		return Decision{}, fmt.Errorf("policy evaluation: %w", err)
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return Decision{}, fmt.Errorf("policy evaluation: data.gatehouse.decision is undefined")
	}
	out, err := json.Marshal(rs[0].Expressions[0].Value)
	if err != nil {
		return Decision{}, err
	}
	var d Decision
	if err := json.Unmarshal(out, &d); err != nil {
		return Decision{}, fmt.Errorf("policy evaluation: the decision is not {allow, deny, warn}: %w", err)
	}
	sortReasons(d.Deny)
	sortReasons(d.Warn)
	if d.Deny == nil {
		d.Deny = []Reason{}
	}
	if d.Warn == nil {
		d.Warn = []Reason{}
	}
	if d.Allow && len(d.Deny) > 0 {
		return Decision{}, fmt.Errorf("policy evaluation: the policy allows and denies at once")
	}
	return d, nil
}

func sortReasons(rs []Reason) {
	sort.SliceStable(rs, func(a, b int) bool {
		if rs[a].Rule != rs[b].Rule {
			return rs[a].Rule < rs[b].Rule
		}
		return rs[a].Message < rs[b].Message
	})
}

// TestResult is one Rego test's outcome.
type TestResult struct {
	Name   string
	Passed bool
	Error  string
}

// Test runs the bundle's Rego tests (test_ rules in *_test.rego).
func (e *Engine) Test(ctx context.Context) ([]TestResult, error) {
	ch, err := tester.NewRunner().SetModules(e.modules).RunTests(ctx, nil)
	if err != nil {
		return nil, err
	}
	var out []TestResult
	for r := range ch {
		tr := TestResult{Name: r.Package + "." + r.Name, Passed: !r.Fail && r.Error == nil}
		if r.Error != nil {
			tr.Error = r.Error.Error()
		}
		out = append(out, tr)
	}
	return out, nil
}
