#!/usr/bin/env bash
# Formatting and licence policy; cheap, so they run first.
set -euo pipefail
cargo fmt --all -- --check
echo "cargo fmt: clean"
cargo deny --log-level error check licenses
echo "cargo deny licenses: ok"
find hack e2e -name "*.sh" -not -path "*/target/*" -print0 | xargs -0 shellcheck -S warning .ci/run
echo "shellcheck: clean"
cargo run -q -p tessera-crds --bin crdgen -- --check --out charts/tessera/crds
echo "CRD manifests: current"
