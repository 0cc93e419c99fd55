#!/usr/bin/env bash
# Every Rust test of the workspace: unit, property, and integration tests. Integration tests that need a
# control plane start one through tessera-e2e's harness (one per test binary). Tests that need a GPU or
# Xen hardware print a one-line skip reason. The closing "test result" lines are kept visible.
set -euo pipefail
export TESSERA_TOOLS_BIN=$HOME/.cache/tessera/bin
log=$(mktemp)
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "--- cargo test summary"
grep -E '^test result:' "$log" | awk '{p+=$4; f+=$6; i+=$8} END {printf "cargo test: %d passed, %d failed, %d ignored in %d binaries\n", p, f, i, NR}'
grep -cE '^test result:' "$log" >/dev/null || { echo "no cargo test result lines: nothing ran"; exit 1; }
rm -f "$log"
exit "$rc"
