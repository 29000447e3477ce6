// Package gate answers, on every manifest and blob request, whether Gatehouse may serve it: only
// what admission admitted (or a reviewer released). It has admission (proxy/admission, through
// the one-method Admitter) run once per digest however many requests wait on it, holds first
// requests until the verdict (up to a limit), and keeps verdicts in memory so a cached admitted
// pull touches no database. Words as in proxy/admission's package doc.
package gate
