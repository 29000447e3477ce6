#!/usr/bin/env bash
# The whole test suite: installs the tools the tests drive (idempotent, cached under
# $HOME/.cache/gatehouse), then runs gofmt and go vet, the unit tests with the race detector, and the
# integration tests against real servers and clients. This is the README's test command and
# what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
echo "== tools"
bin=$(bash integration/tools/install.sh test | tail -n 1)
export GATEHOUSE_TOOLS_BIN=$bin
export PATH=$bin:$PATH
echo "tools ready in $((SECONDS - start))s ($bin)"

echo "== gofmt, go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
go vet -tags integration ./integration/...

echo "== unit tests (race detector)"
go test -race -count=1 ./...

echo "== integration tests"
log=$(mktemp /tmp/gatehouse-integration.XXXXXX)
set +e
go test -tags integration -count=1 -timeout 30m -v ./integration/... >"$log" 2>&1
rc=$?
set -e
grep -E '^(--- |ok|FAIL|PASS)|OCI conformance' "$log" || true
if [ $rc -ne 0 ]; then
  echo "integration tests failed (exit $rc); the log's last lines:" >&2
  grep -vE '^(=== RUN|--- PASS)' "$log" | tail -200 >&2
  exit $rc
fi
echo "all tests passed in $((SECONDS - start))s"
