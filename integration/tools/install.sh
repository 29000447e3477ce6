#!/usr/bin/env bash
# Installs the real servers and clients that Gatehouse's integration tests and benchmarks drive.
# Idempotent: every Go tool is built once per pinned version into $GATEHOUSE_TOOLS (default
# $HOME/.cache/gatehouse/tools/bin); Debian packages are installed only when missing.
# Usage: install.sh [test|bench|all]   (default: test). Prints the bin directory last.
set -euo pipefail

set_name=${1:-test}
TOOLS=${GATEHOUSE_TOOLS:-$HOME/.cache/gatehouse/tools}
BIN=$TOOLS/bin
mkdir -p "$BIN" "$TOOLS/stamps"
export GOFLAGS=-mod=mod
export GOBIN=$BIN
log() { printf '[tools] %s\n' "$*" >&2; }

# go_tool NAME MODULE/PATH@VERSION [env...]: go install once per version (a stamp file records it).
go_tool() {
  local name=$1 pkg=$2; shift 2
  local stamp=$TOOLS/stamps/$name
  if [ -x "$BIN/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  log "building $name from $pkg"
  local start=$SECONDS
  env "$@" go install "$pkg"
  echo "$pkg" >"$stamp"
  log "built $name in $((SECONDS - start))s"
}

apt_pkgs() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case $set_name in
  test|all)
    # podman: containers/image as CRI-O uses it (TestPodmanNoFallback drives deploy/containers/registries.conf)
    apt_pkgs skopeo ca-certificates nginx-light wrk containerd runc podman
    # the real tools of the scan evasion tests (node/npm, importlib/pip, dpkg-query); this machine's
    # nodejs package (NodeSource's) carries npm
    apt_pkgs nodejs python3 python3-pip dpkg binutils  # binutils: objcopy makes a cargo-auditable program
    go_tool crane github.com/google/go-containerregistry/cmd/crane@v0.22.1
    go_tool oras oras.land/oras/cmd/oras@v1.3.6
    go_tool registry github.com/distribution/distribution/v3/cmd/registry@v3.1.2
    go_tool conformance github.com/opencontainers/distribution-spec/conformance@v0.0.0-20260831232431-97274622c111
    go_tool cosign github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5
    ;;&
  bench|all)
    apt_pkgs nginx-light wrk debootstrap
    go_tool registry github.com/distribution/distribution/v3/cmd/registry@v3.1.2
    ;;
  test) ;;
  *) echo "usage: $0 [test|bench|all]" >&2; exit 2 ;;
esac
echo "$BIN"
