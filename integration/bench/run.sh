#!/usr/bin/env bash
# The benchmark command: installs distribution's registry, nginx and wrk (idempotent), then runs
# the comparison and prints the table. Extra arguments go to the benchmark
# (e.g. -blob-size 512MiB -duration 10s -connections 32 -streams 32).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(bash integration/tools/install.sh bench | tail -n 1)
export GATEHOUSE_TOOLS_BIN=$bin
exec go run ./integration/bench "$@"
