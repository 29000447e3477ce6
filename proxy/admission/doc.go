// Package admission is Gatehouse's admission pipeline: Pipeline.Admit takes one manifest digest
// of one repository from "asked for" to a recorded verdict, in one place (pipeline.go), top to
// bottom: obtain the manifest (a pull route fetches it) → judge an index by its children → scan
// the image or reuse its stored scan → match its inventory against the vulnerability database →
// build the policy input → evaluate the route's policy → record the verdict and its audit
// record. The gate (proxy/gate) calls Admit and serves what it answers; nothing calls back.
//
// Words, each used for one thing only:
//   - admit, admission: all of the above, for one digest of one repository (Pipeline.Admit).
//   - evaluate: run the route's policy on the input; its answer is the policy's decision
//     (allow, deny, warn: policies.Decision), which the verdict keeps.
//   - verdict: the recorded outcome for one repository and digest (meta.Verdict, whose
//     meta.State is pending, admitted, quarantined, released or rejected), with an audit record
//     of every transition.
//   - serve: the gate's question, "may this manifest or blob be served now?" (Gate.Manifest,
//     Gate.Blob), answered from verdicts; the gate never evaluates.
//   - reconsider: admit again because the evidence or the policy changed (Gate.Reconsider, which
//     Pipeline.Rematch calls after a database update; Pipeline.Reevaluate after a policy change,
//     before anything is served).
package admission
