#!/usr/bin/env bash
# Chooses the cache root for the Go builds (control plane, fakelet), so that they work without
# root. Sourced by e2e/k8sbins/build.sh and e2e/fakelet/build.sh; run directly it prints the
# choice, which the harness reports (`e2e/harness/builds.py`).
#
#   MOCK_ACCEL_CACHE set         that directory, nothing else
#   /var/cache/mock-accel        when it is writable (or can be created)
#   otherwise                    ${XDG_CACHE_HOME:-~/.cache}/mock-accel for new builds; binaries
#                                already built under a readable /var/cache/mock-accel are reused
#
# Sets CACHE_ROOT (where new builds go), CACHE_REUSE (a read-only cache consulted first, or
# empty) and CACHE_REASON (one line saying why). MOCK_ACCEL_SYSTEM_CACHE replaces
# /var/cache/mock-accel, for the harness's own tests.

MOCK_ACCEL_SYSTEM_CACHE=${MOCK_ACCEL_SYSTEM_CACHE:-/var/cache/mock-accel}

_writable_dir() {
  # True when the directory exists and is writable, or can be created.
  if [ -d "$1" ]; then
    [ -w "$1" ] && [ -x "$1" ]
  else
    mkdir -p "$1" 2>/dev/null
  fi
}

CACHE_REUSE=
if [ -n "${MOCK_ACCEL_CACHE:-}" ]; then
  CACHE_ROOT=$MOCK_ACCEL_CACHE
  CACHE_REASON="MOCK_ACCEL_CACHE is set"
elif _writable_dir "$MOCK_ACCEL_SYSTEM_CACHE"; then
  CACHE_ROOT=$MOCK_ACCEL_SYSTEM_CACHE
  CACHE_REASON="the default, writable"
else
  CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/mock-accel"
  CACHE_REASON="$MOCK_ACCEL_SYSTEM_CACHE is not writable"
  if [ -d "$MOCK_ACCEL_SYSTEM_CACHE" ] && [ -r "$MOCK_ACCEL_SYSTEM_CACHE" ] && [ -x "$MOCK_ACCEL_SYSTEM_CACHE" ]; then
    CACHE_REUSE=$MOCK_ACCEL_SYSTEM_CACHE
    CACHE_REASON+="; binaries already built there are reused"
  fi
fi

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  printf 'root=%s\nreuse=%s\nreason=%s\n' "$CACHE_ROOT" "$CACHE_REUSE" "$CACHE_REASON"
fi
