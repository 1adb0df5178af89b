#!/usr/bin/env bash
# ckvault's test command (the one the README gives): every test target, including the
# tests on REAL CRIU checkpoints (tests/harness/, tests/support/) and the fuzz smoke test.
#
# Tests that need a real checkpoint skip with a loud "*** SKIPPED ***" notice on machines
# that cannot make one (not root, no namespaces). Under CI (CI=1 or CI=true) they must not
# skip: CKVAULT_REQUIRE_REAL_CHECKPOINT=1 turns that into a failure.
# Extra arguments go to both cargo test runs, e.g. scripts/test.sh -- --nocapture
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${CI:-}" in
  1 | true) export CKVAULT_REQUIRE_REAL_CHECKPOINT=1 CKVAULT_REQUIRE_SEAWEEDFS=1 ;;
esac

cargo test --all-targets "$@"
# --all-targets leaves out doctests; run them too.
cargo test --doc "$@"
