#!/usr/bin/env bash
# critest (cri-tools v1.34.0) against tessera-shim delegating to Debian's containerd 1.6 + runc, images
# from a local registry filled offline (hack/critest/). The skip list with reasons is in
# hack/critest/run.sh and runtime-shim/README.md. About a minute.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build -q -p tessera-shim
bash hack/critest/run.sh "${CARGO_TARGET_DIR:-target}/debug/tessera-shim"
