#!/usr/bin/env bash
# ckvault's test command (the one the README gives, the one CI runs): every test target,
# including the tests on REAL CRIU checkpoints, real containerd, real SeaweedFS, real TLS
# clients, and the fuzz smoke test.
#
# On a fresh Debian machine (as root) it first installs what the tests use
# (scripts/test-deps.sh; CKVAULT_NO_INSTALL=1 skips that). Every test must then really
# run: a test that cannot (no root, no namespaces, no SeaweedFS) FAILS. To run what this
# machine can and skip the rest, set CKVAULT_ALLOW_SKIP=1: the tests that did not run are
# listed at the end, loudly, and the command exits 3 (never "all passed").
# Extra arguments go to both cargo test runs, e.g. scripts/test.sh -- --nocapture
#
# It ends with one total line, "N passed, N failed, N ignored", summed over every
# `test result:` line of the two runs (the full output is kept in target/test-output.log).
# Services: SeaweedFS, moto, nginx and the per-test containerd are started and stopped by the
# tests themselves. The real CRI runtime (containerd 2.1 in namespaces of its own, with one
# pod: tests/harness/real-cri-runtime.sh) is shared by the tests and kept between them; this
# command stops it at the end when it was not running before it started, and otherwise
# says that it keeps it and how to stop it.
# Expect 11-13 minutes on 2 cores in CI (after clippy built the dependencies), ~8 when built; disk:
# target/ ~7 GB, /var/tmp/ckvault-real-cri ~1.1 GB, /var/tmp/ckvault-ckpt ~0.5 GB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
T0=$SECONDS

if [ "${CKVAULT_NO_INSTALL:-}" != 1 ] && [ "$(id -u)" -eq 0 ]; then
  scripts/test-deps.sh
fi
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
REAL_CRI=tests/harness/real-cri-runtime.sh
REAL_CRI_CACHE=/var/tmp/ckvault-real-cri/cache
real_cri_running() { [ "$(id -u)" -eq 0 ] && bash "$REAL_CRI" status "$REAL_CRI_CACHE" >/dev/null 2>&1; }
cri_before=0
real_cri_running && cri_before=1
if [ "${CKVAULT_ALLOW_SKIP:-}" != 1 ]; then
  export CKVAULT_REQUIRE_REAL_CHECKPOINT=1 CKVAULT_REQUIRE_SEAWEEDFS=1 CKVAULT_REQUIRE_DEPLOY_TOOLS=1
fi
CKVAULT_SKIP_LOG=$(mktemp)
export CKVAULT_SKIP_LOG
trap 'rm -f "$CKVAULT_SKIP_LOG"' EXIT
mkdir -p target
LOG=target/test-output.log
: >"$LOG"

rc=0
cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee -a "$LOG" || rc=$?
# --all-targets leaves out doctests; run them too.
cargo test --doc "$@" 2>&1 | tee -a "$LOG" || rc=$((rc ? rc : $?))

# Services this run leaves: the real CRI runtime is stopped if this run started it.
if real_cri_running; then
  if [ $cri_before = 0 ]; then
    echo "== stopping the real CRI runtime the tests started ($REAL_CRI stop)"
    # Under the tests' lock: never pull it from under another run's test.
    flock -w 600 /var/tmp/ckvault-real-cri/test.lock bash "$REAL_CRI" stop "$REAL_CRI_CACHE" >/dev/null 2>&1 \
      || echo "could not stop it; stop it with: sudo bash $REAL_CRI stop $REAL_CRI_CACHE"
  else
    echo "== kept running (it was running before this run): the real CRI runtime (containerd 2.1, a shim and one pod);"
    echo "   stop it with: sudo bash $REAL_CRI stop $REAL_CRI_CACHE"
  fi
fi

# One total over every `test result:` line ("test result: ok. 5 passed; 0 failed; 1 ignored; ...").
read -r passed failed ignored binaries < <(awk '
  /^test result: / { n++; for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i; if ($(i+1) ~ /^ignored;?$/) g += $i } }
  END { print p+0, f+0, g+0, n+0 }' "$LOG")
echo
echo "== total: $passed passed, $failed failed, $ignored ignored ($binaries test binaries, $((SECONDS - T0)) s; output in $LOG)"
[ $rc -eq 0 ] || exit $rc

if [ -s "$CKVAULT_SKIP_LOG" ]; then
  echo
  echo "*** $(wc -l <"$CKVAULT_SKIP_LOG") test(s) DID NOT RUN on this machine (CKVAULT_ALLOW_SKIP=1): ***"
  sed 's/^/***   /' "$CKVAULT_SKIP_LOG"
  echo "*** they are not passes; run as root on Debian with scripts/test-deps.sh to run them ***"
  exit 3
fi
