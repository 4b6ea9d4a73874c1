#!/usr/bin/env bash
# Builds the fakelet (the end-to-end suite's fake kubelet) into a cache directory outside the
# repository, keyed by a hash of the Go version, the build flags, go.mod, go.sum and the
# non-test .go sources: a rebuild happens only when one of them changes.
#
# Usage: e2e/fakelet/build.sh                 builds if needed; the binary path is the last
#                                             line of stdout, progress goes to stderr
#        MOCK_ACCEL_CACHE=/path ...           cache root (default: /var/cache/mock-accel when
#                                             writable, else ${XDG_CACHE_HOME:-~/.cache}/mock-accel;
#                                             see e2e/cache.sh)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../cache.sh
source "$HERE/../cache.sh"
export GOTOOLCHAIN=local CGO_ENABLED=0
BUILD_FLAGS=(-trimpath -mod=readonly -ldflags "-s -w")

log() { printf '[fakelet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cd "$HERE"
sources=$(find . -maxdepth 1 -name '*.go' ! -name '*_test.go' | LC_ALL=C sort)
# shellcheck disable=SC2086 # one file name per word; the names have no spaces
key=$({
  go env GOVERSION
  printf '%s\n' "${BUILD_FLAGS[@]}"
  for f in go.mod go.sum $sources; do
    printf '== %s\n' "$f"
    cat "$f"
  done
} | sha256sum | cut -c1-16)
out_dir="$CACHE_ROOT/fakelet/$key"
bin="$out_dir/fakelet"

log "cache $CACHE_ROOT ($CACHE_REASON)"
for cached in ${CACHE_REUSE:+"$CACHE_REUSE/fakelet/$key/fakelet"} "$bin"; do
  if [ -x "$cached" ]; then
    log "cached build $cached"
    echo "$cached"
    exit 0
  fi
done

if ! mkdir -p "$out_dir"; then
  log "cannot create $out_dir: point MOCK_ACCEL_CACHE at a writable directory"
  exit 1
fi
log "building fakelet ($key) with $(go env GOVERSION); a cold build takes a few minutes"
( while sleep 60; do log "still building"; done ) &
beat=$!
trap 'kill $beat 2>/dev/null || true' EXIT
tmp="$bin.tmp.$$"
if ! go build "${BUILD_FLAGS[@]}" -o "$tmp" .; then
  rm -f "$tmp"
  log "build failed"
  exit 1
fi
mv "$tmp" "$bin"
log "built $bin"
echo "$bin"
