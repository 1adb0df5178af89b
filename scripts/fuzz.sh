#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for SECONDS each and prints a table:
# target, seconds, executions, findings. New inputs go to a scratch directory first, so the
# committed seeds in fuzz/corpus/ stay as they are; a crash fails the run and leaves its
# input in fuzz/artifacts/TARGET/ (turn it into a regression test, see fuzz/README.md).
#
#   scripts/fuzz.sh 600                      # the 10-minute runs of docs and issue notes
#   scripts/fuzz.sh 20                       # CI: a brief run of each target
#   FUZZ_BUILD="-s none --dev" scripts/fuzz.sh 20 http_auth
#
# Needs cargo-fuzz (cargo install cargo-fuzz) and a C++ compiler (libFuzzer); works on the
# stable toolchain through RUSTC_BOOTSTRAP=1 (nightly is not required).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
if [ $# -eq 0 ]; then
  for f in fuzz_targets/*.rs; do
    t=${f#fuzz_targets/}
    set -- "$@" "${t%.rs}"
  done
fi
export RUSTC_BOOTSTRAP=1
build=${FUZZ_BUILD:-}   # several flags, split on purpose below
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
one=()
[ $# -eq 1 ] && one=("$1")   # cargo fuzz build takes one target, or builds them all
# shellcheck disable=SC2086
cargo fuzz build $build "${one[@]}" >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log"; exit 1; }
rows=()
status=0
for t in "$@"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  # shellcheck disable=SC2086
  if cargo fuzz run $build "$t" "$scratch/$t" "corpus/$t" -- -max_total_time="$secs" >"$log" 2>&1; then
    findings=0
  else
    findings=1
    status=1
    tail -40 "$log"
    echo "FUZZ FINDING in $t: input saved under fuzz/artifacts/$t/"
  fi
  execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  rows+=("$(printf '| %-16s | %7s | %12s | %8s |' "$t" "$secs" "${execs:-?}" "$findings")")
done
printf '| %-16s | %7s | %12s | %8s |\n' target seconds executions findings
printf '|%s|%s|%s|%s|\n' ------------------ --------- -------------- ----------
printf '%s\n' "${rows[@]}"
exit $status
