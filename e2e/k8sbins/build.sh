#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the
# Kubernetes Go modules through the module proxy, into a cache directory outside the repository.
#
# The wrapper module (go.mod in this directory) requires k8s.io/kubernetes and replaces every
# staging module with its published v0.Y.Z twin, because k8s.io/kubernetes's own go.mod points
# them at ./staging, which a module download does not contain.
#
# Usage: e2e/k8sbins/build.sh            builds if missing, prints the bin directory last
#        K8S_VERSION=v1.37.2 ...          pin another release
#        MOCK_ACCEL_CACHE=/path ...       cache root (default: /var/cache/mock-accel when writable,
#                                         else ${XDG_CACHE_HOME:-~/.cache}/mock-accel; see e2e/cache.sh)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../cache.sh
source "$HERE/../cache.sh"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
GOVER=$(go env GOVERSION)
BIN_SUBDIR="k8s/$K8S_VERSION-$GOVER/bin"
BIN_DIR="$CACHE_ROOT/$BIN_SUBDIR"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf '[k8sbins %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

want=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
complete() { local b; for b in "${want[@]}"; do [ -x "$1/$b" ] || return 1; done; }
log "cache $CACHE_ROOT ($CACHE_REASON)"
for dir in ${CACHE_REUSE:+"$CACHE_REUSE/$BIN_SUBDIR"} "$BIN_DIR"; do
  if complete "$dir"; then
    log "cached binaries for Kubernetes $K8S_VERSION in $dir"
    echo "$dir"
    exit 0
  fi
done

if ! mkdir -p "$BIN_DIR"; then
  log "cannot create $BIN_DIR: point MOCK_ACCEL_CACHE at a writable directory"
  exit 1
fi
# The committed wrapper module pins the default release (go.sum reviewed in git); any other
# release gets a wrapper module of its own beside its binaries, so that building it never
# rewrites the committed files.
if grep -qE "k8s.io/kubernetes $K8S_VERSION( |$)" "$HERE/go.mod" 2>/dev/null; then
  cd "$HERE"
else
  mod_dir="$CACHE_ROOT/k8s/$K8S_VERSION-$GOVER/module"
  mkdir -p "$mod_dir"
  cd "$mod_dir"
  log "wrapper module for $K8S_VERSION in $mod_dir"
fi

if ! grep -qE "k8s.io/kubernetes $K8S_VERSION( |$)" go.mod 2>/dev/null; then
  log "creating the wrapper module for $K8S_VERSION"
  rm -f go.mod go.sum
  go mod init mock-accel.example.com/e2e/k8sbins >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  go_line=$(awk '/^go [0-9]/{print $2; exit}' "$gomod")
  godebug=$(awk '/^godebug default=/{print $2; exit}' "$gomod")
  go mod edit -go="$go_line"
  [ -n "$godebug" ] && go mod edit -godebug="$godebug"
  for m in $(awk '/=> \.\/staging\/src\//{print $1}' "$gomod" | sort -u); do
    go mod edit -replace="$m=$m@$STAGING_VERSION"
  done
  log "resolving modules (first run downloads ~1 GB through the proxy)"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    go get -tool "k8s.io/kubernetes/cmd/$c@$K8S_VERSION"
  done
  etcd_ver=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
  go get -tool "go.etcd.io/etcd/server/v3@$etcd_ver"
  go mod tidy
fi

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

# Progress: the cold build runs 25-40 minutes on 2 cores; print a heartbeat so it never looks hung.
( while sleep 60; do log "still building ($(ls "$BIN_DIR" | wc -l) of ${#want[@]} binaries done)"; done ) &
beat=$!
trap 'kill $beat 2>/dev/null || true' EXIT

for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  if [ ! -x "$BIN_DIR/$c" ]; then
    log "building $c $K8S_VERSION"
    go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$BIN_DIR/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$BIN_DIR/$c.tmp" "$BIN_DIR/$c"
  fi
done
if [ ! -x "$BIN_DIR/etcd" ]; then
  log "building etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
  go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
fi
"$BIN_DIR/kube-apiserver" --version >&2
"$BIN_DIR/etcd" --version | head -n 1 >&2
log "done: $BIN_DIR"
echo "$BIN_DIR"
