#!/usr/bin/env bash
# Builds what `make bench-peer` runs, from Go modules through the module proxy, into a cache
# directory outside the repository (the same cache root as the e2e control plane):
#
#   peer     the Kubernetes DRA test driver (k8s.io/kubernetes/test/e2e/dra/test-driver, its
#            `kubelet-plugin` mode) at K8S_VERSION, into <cache>/peer/<version>-<go version>/.
#            testdriver/ holds the module that imports it: k8s.io/kubernetes at that version,
#            every staging module replaced by its published v0.Y.Z twin (a module download has
#            no ./staging). Any release other than the committed one gets a module of its own
#            beside its binary, so the committed go.mod and go.sum never change.
#   driver   the bench driver (driver/, on the kubelet's generated DRA v1 client), into
#            <cache>/peerbench/<hash>/, keyed by the Go version, go.mod, go.sum and its sources.
#
# Usage: bench/peer/build.sh peer|driver     builds if missing; the binary path is the last
#                                            line of stdout, progress goes to stderr
#        K8S_VERSION=v1.37.2 ...             the peer's release (default: the e2e control plane's)
#        MOCK_ACCEL_CACHE=/path ...          cache root (see e2e/cache.sh)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../e2e/cache.sh
source "$HERE/../../e2e/cache.sh"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
GOVER=$(go env GOVERSION)
export GOTOOLCHAIN=local CGO_ENABLED=0
BUILD_FLAGS=(-trimpath -ldflags "-s -w")

what=${1:-}
log() { printf '[bench-peer %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# hash_of FILE...: a short key over the Go version, the build flags and the files.
hash_of() {
  { echo "$GOVER"; printf '%s\n' "${BUILD_FLAGS[@]}"; for f in "$@"; do printf '== %s\n' "$f"; cat "$f"; done; } |
    sha256sum | cut -c1-16
}

# build_into DIR BIN PACKAGE: go build with a heartbeat, atomically into DIR/BIN.
build_into() {
  local dir=$1 bin=$2 pkg=$3 beat
  mkdir -p "$dir" || { log "cannot create $dir: point MOCK_ACCEL_CACHE at a writable directory"; exit 1; }
  ( while sleep 60; do log "still building $bin"; done ) &
  beat=$!
  local tmp="$dir/$bin.tmp.$$"
  if ! go build "${BUILD_FLAGS[@]}" "${@:4}" -o "$tmp" "$pkg"; then
    kill "$beat" 2>/dev/null || true
    rm -f "$tmp"
    log "building $bin failed"
    exit 1
  fi
  kill "$beat" 2>/dev/null || true
  mv "$tmp" "$dir/$bin"
}

build_peer() {
  local staging="v0.${K8S_VERSION#v1.}" out_dir="$CACHE_ROOT/peer/$K8S_VERSION-$GOVER" mod_dir
  log "cache $CACHE_ROOT ($CACHE_REASON)"
  if grep -qE "k8s.io/kubernetes $K8S_VERSION( |$)" "$HERE/testdriver/go.mod"; then
    mod_dir="$HERE/testdriver"
  else
    # Another release: a module of its own beside the binary, made from the committed main.go.
    mod_dir="$out_dir/module"
    mkdir -p "$mod_dir"
    cp "$HERE/testdriver/main.go" "$mod_dir/main.go"
    if ! grep -qE "k8s.io/kubernetes $K8S_VERSION( |$)" "$mod_dir/go.mod" 2>/dev/null; then
      log "creating the module for Kubernetes $K8S_VERSION in $mod_dir"
      rm -f "$mod_dir/go.mod" "$mod_dir/go.sum"
      (
        cd "$mod_dir"
        go mod init mock-accel.example.com/bench/peer/testdriver >/dev/null 2>&1
        gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
          python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
        go mod edit -go="$(awk '/^go [0-9]/{print $2; exit}' "$gomod")"
        godebug=$(awk '/^godebug default=/{print $2; exit}' "$gomod")
        [ -n "$godebug" ] && go mod edit -godebug="$godebug"
        for m in $(awk '/=> \.\/staging\/src\//{print $1}' "$gomod" | sort -u); do
          go mod edit -replace="$m=$m@$staging"
        done
        go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
        log "resolving modules through the proxy"
        GOFLAGS=-mod=mod go mod tidy
      )
    fi
  fi
  local key
  key=$(hash_of "$mod_dir/go.mod" "$mod_dir/go.sum" "$mod_dir/main.go")
  for dir in ${CACHE_REUSE:+"$CACHE_REUSE/peer/$K8S_VERSION-$GOVER"} "$out_dir"; do
    if [ -x "$dir/dra-test-driver" ] && [ "$(cat "$dir/key" 2>/dev/null)" = "$key" ]; then
      log "cached DRA test driver $K8S_VERSION in $dir"
      echo "$dir/dra-test-driver"
      return
    fi
  done
  log "building the DRA test driver of Kubernetes $K8S_VERSION with $GOVER (cold: several minutes)"
  (cd "$mod_dir" && build_into "$out_dir" dra-test-driver . -mod=readonly)
  echo "$key" >"$out_dir/key"
  log "built $out_dir/dra-test-driver"
  echo "$out_dir/dra-test-driver"
}

build_driver() {
  cd "$HERE/driver"
  local sources key out_dir
  sources=$(find . -maxdepth 1 -name '*.go' ! -name '*_test.go' | LC_ALL=C sort)
  # shellcheck disable=SC2086 # one file name per word; the names have no spaces
  key=$(hash_of go.mod go.sum $sources)
  out_dir="$CACHE_ROOT/peerbench/$key"
  for dir in ${CACHE_REUSE:+"$CACHE_REUSE/peerbench/$key"} "$out_dir"; do
    if [ -x "$dir/peerbench" ]; then
      log "cached bench driver $dir/peerbench"
      echo "$dir/peerbench"
      return
    fi
  done
  log "building the bench driver ($key)"
  build_into "$out_dir" peerbench . -mod=readonly
  log "built $out_dir/peerbench"
  echo "$out_dir/peerbench"
}

case "$what" in
  peer) build_peer ;;
  driver) build_driver ;;
  *) echo "usage: $0 peer|driver" >&2; exit 2 ;;
esac
