// Package gate decides, on every manifest and blob request, whether Gatehouse may serve it: only
// what policy admitted (or a reviewer released). It runs admission once per digest however many
// requests wait on it, holds first requests until the decision (up to a limit), and keeps verdicts
// in memory so a cached admitted pull touches no database.
package gate
