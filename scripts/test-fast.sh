#!/usr/bin/env bash
# ckvault's fast tier (CONTRIBUTING.md): the tests that need neither root nor a service, in
# a few minutes, on a contributor's machine. CI and the README run the full suite,
# scripts/test.sh; this is a subset of it, never a substitute.
#
# It runs the library's unit tests, the doctests and the integration tests (tests/it) except
# those named in tests/it/outside-fast-tier.txt, which need root (real CRIU checkpoints,
# containerd, PID namespaces, tmpfs mounts) or a service (SeaweedFS, moto). Those are left
# out by name: cargo counts them "filtered out", never passed, and the end says how many.
#
# CKVAULT_FAST_TIER=1 makes the tests' helpers that need root or a service refuse at once
# (tests/it/support: outside_fast_tier), on any machine, root or not: a test that reaches one
# and is missing from the list is logged, and the script fails naming it (exit 3).
#
# Extra arguments go to the test harness of each run, e.g. scripts/test-fast.sh --nocapture
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LIST=tests/it/outside-fast-tier.txt
skips=()
while read -r name _; do
  case "$name" in '' | '#'*) continue ;; esac
  skips+=(--skip "$name")
done <"$LIST"

unset CKVAULT_REQUIRE_REAL_CHECKPOINT CKVAULT_REQUIRE_SEAWEEDFS
export CKVAULT_FAST_TIER=1
CKVAULT_SKIP_LOG=$(mktemp)
export CKVAULT_SKIP_LOG
trap 'rm -f "$CKVAULT_SKIP_LOG"' EXIT

cargo test --lib -- "$@"
cargo test --doc -- "$@"
# --exact: each name on the list leaves out that one test, not every name it is part of.
cargo test --test it -- --exact "${skips[@]}" "$@"

if [ -s "$CKVAULT_SKIP_LOG" ]; then
  echo
  echo "*** $(wc -l <"$CKVAULT_SKIP_LOG") test(s) need root or a service but are not in $LIST: ***"
  sed 's/^/***   /' "$CKVAULT_SKIP_LOG"
  echo "*** they did not run (not passes): add each to $LIST, with what it needs ***"
  exit 3
fi
echo
echo "Fast tier passed. Not run: the $((${#skips[@]} / 2)) integration tests in $LIST"
echo "(they need root or a service); scripts/test.sh runs everything."
