#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 from the containerd Go module through the
# module proxy (no git clone, no registry), into a cache directory outside the repository.
# CGO off and the snapshotters that need C libraries or kernel modules left out: the real-kubelet
# node (e2e/realnode) uses the overlayfs or native snapshotter only.
#
# Usage: e2e/realnode/build-containerd.sh      builds if missing, prints the bin directory last
#        CONTAINERD_VERSION=v2.4.2 ...          pin another release
#        MOCK_ACCEL_CACHE=/path ...             cache root (default /var/cache/mock-accel)
set -euo pipefail

CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
CACHE_ROOT=${MOCK_ACCEL_CACHE:-/var/cache/mock-accel}
GOVER=$(go env GOVERSION)
ROOT="$CACHE_ROOT/containerd/$CONTAINERD_VERSION-$GOVER"
BIN_DIR="$ROOT/bin"
MOD="github.com/containerd/containerd/v2"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf '[containerd %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

want=(containerd ctr containerd-shim-runc-v2)
missing=0
for b in "${want[@]}"; do [ -x "$BIN_DIR/$b" ] || missing=1; done
if [ "$missing" = 0 ]; then
  log "cached containerd $CONTAINERD_VERSION in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

# A wrapper module: `go install pkg@version` refuses modules with replace directives, and the
# wrapper copies containerd's own replaces so the build resolves what its release resolves.
mkdir -p "$BIN_DIR" "$ROOT/module"
cd "$ROOT/module"
if ! grep -qE "$MOD $CONTAINERD_VERSION( |$)" go.mod 2>/dev/null; then
  log "creating the wrapper module for containerd $CONTAINERD_VERSION"
  rm -f go.mod go.sum
  go mod init mock-accel.example.com/e2e/containerd >/dev/null 2>&1
  gomod=$(go mod download -json "$MOD@$CONTAINERD_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  go_line=$(awk '/^go [0-9]/{print $2; exit}' "$gomod")
  go mod edit -go="$go_line"
  awk '/^replace [^(]/{sub(/^replace /,""); print} /^replace \(/{f=1; next} f&&/^\)/{f=0} f{print}' "$gomod" |
    while read -r from _arrow to ver; do
      [ -n "$from" ] || continue
      case "$to" in ./*|../*) continue ;; esac
      go mod edit -replace="$from=$to${ver:+@$ver}"
    done
  for c in "${want[@]}"; do go get -tool "$MOD/cmd/$c@$CONTAINERD_VERSION"; done
  go mod tidy
fi

( while sleep 60; do log "still building ($(ls "$BIN_DIR" | wc -l) of ${#want[@]} binaries done)"; done ) &
beat=$!
trap 'kill $beat 2>/dev/null || true' EXIT

ldflags="-s -w -X $MOD/version.Version=$CONTAINERD_VERSION -X $MOD/version.Package=$MOD"
for c in "${want[@]}"; do
  if [ ! -x "$BIN_DIR/$c" ]; then
    log "building $c $CONTAINERD_VERSION"
    go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldflags" -o "$BIN_DIR/$c.tmp" "$MOD/cmd/$c"
    mv "$BIN_DIR/$c.tmp" "$BIN_DIR/$c"
  fi
done
"$BIN_DIR/containerd" --version >&2
log "done: $BIN_DIR"
echo "$BIN_DIR"
