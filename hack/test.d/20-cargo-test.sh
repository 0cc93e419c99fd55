#!/usr/bin/env bash
# Every Rust test of the workspace: unit, property, and integration tests. Integration tests that need a
# control plane start one through tessera-e2e's harness (one per test binary). Tests that need a GPU, Xen
# or a missing tool print one `skipped: <reason>` line; the run keeps test output (--show-output) in a
# log and prints here the test binaries, every skip line, every failure, and each "test result" line,
# so that a run that executed nothing, or skipped something, is visible.
set -euo pipefail
export TESSERA_TOOLS_BIN=$HOME/.cache/tessera/bin
log=$(mktemp /tmp/tessera-cargo-test.XXXXXX)
set +e
cargo test --workspace --no-fail-fast -- --show-output >"$log" 2>&1
rc=$?
set -e
grep -E '^\s+Running |^test result:|skipped:|^error(\[|:)|FAILED|panicked' "$log" || true
if [ "$rc" != 0 ]; then
  echo "--- failures (full log: $log)"
  sed -n '/^failures:$/,/^test result:/p' "$log" | head -300
fi
echo "--- cargo test summary"
n=$(grep -cE '^test result:' "$log" || true)
[ "$n" -gt 0 ] || { echo "no cargo test result lines: nothing ran"; tail -50 "$log"; exit 1; }
grep -E '^test result:' "$log" | awk '{p+=$4; f+=$6; i+=$8} END {printf "cargo test: %d passed, %d failed, %d ignored in %d binaries\n", p, f, i, NR}'
echo "skip lines: $(grep -c 'skipped:' "$log" || true)"
[ "$rc" = 0 ] && rm -f "$log"
exit "$rc"
