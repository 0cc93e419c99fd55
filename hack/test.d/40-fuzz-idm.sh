#!/usr/bin/env bash
# Fuzzes the IDM frame decoder (tessera-idm, idm/fuzz) for a bounded time (FUZZ_SECONDS, default
# 60). cargo-fuzz needs nightly compiler flags (-Zsanitizer); the pinned stable toolchain accepts
# them with RUSTC_BOOTSTRAP=1. Installs cargo-fuzz if missing. A crash fails the stage and leaves
# the input under idm/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../../idm"
secs=${FUZZ_SECONDS:-60}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  t=$(date +%s)
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked   # normally done by hack/deps.sh (version pinned there)
  echo "cargo-fuzz installed in $(( $(date +%s) - t ))s"
fi
export RUSTC_BOOTSTRAP=1
t=$(date +%s)
cargo fuzz build decode_frame
echo "fuzz target built in $(( $(date +%s) - t ))s"
mkdir -p fuzz/corpus/decode_frame
cargo fuzz run decode_frame -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 25
echo "decode_frame: no crash in ${secs}s"
