#!/usr/bin/env bash
# Builds the proxy and the stand-in libcuda (release) and stages them in .gpu/vgpu/ for the GPU
# machine (which has no Rust toolchain).
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p tessera-gpu-proxy -p tessera-guest-agent
mkdir -p .gpu/vgpu
cp "$target/release/tessera-gpu-proxy" .gpu/vgpu/tessera-gpu-proxy
cp "$target/release/libtessera_guest_agent.so" .gpu/vgpu/libcuda.so.1
# The proxy session's real-driver test, to run where the GPU is (no cargo there).
exe=$(cargo test --release -p tessera-gpu-proxy --test vgpu_real_gpu --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "vgpu_real_gpu":
        print(m["executable"])')
cp "$exe" .gpu/vgpu/vgpu_real_gpu
strip --strip-debug .gpu/vgpu/tessera-gpu-proxy .gpu/vgpu/libcuda.so.1 .gpu/vgpu/vgpu_real_gpu || true
echo "staged in .gpu/vgpu ($(( $(date +%s) - t0 )) s):"
ls -la .gpu/vgpu
