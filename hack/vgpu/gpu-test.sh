#!/usr/bin/env bash
# vGPU acceptance on a GPU machine: an unmodified cuda-python program on the real libcuda and on
# the stand-in (results must be identical), two tenants through one proxy, and benchmarks.
# Uses binaries staged by hack/vgpu/build.sh in .gpu/vgpu (builds them if cargo is here).
# Writes logs to ${OUT:-/tmp/vgpu-out}. Without a GPU it prints one "skipped:" line.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$(pwd)
out="${OUT:-/tmp/vgpu-out}"
mkdir -p "$out"
step() { echo "== $(date +%T) $*"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "skipped: no NVIDIA GPU on this machine"
  exit 0
fi
if ! python3 -c "import cuda.bindings.driver" 2>/dev/null; then
  echo "skipped: cuda-python (cuda.bindings) is not installed"
  exit 0
fi
if command -v cargo >/dev/null 2>&1; then
  bash hack/vgpu/build.sh
fi
[ -x .gpu/vgpu/tessera-gpu-proxy ] || { echo "error: .gpu/vgpu/tessera-gpu-proxy missing (run hack/vgpu/build.sh)"; exit 1; }

step "environment"
python3 -c "import cuda.bindings, numpy; print('cuda.bindings', cuda.bindings.__version__, 'numpy', numpy.__version__)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

sock=/tmp/tessera-vgpu-$$.sock
metrics=127.0.0.1:${METRICS_PORT:-19464}
export METRICS="http://$metrics/metrics"
proxy_pid=""
# shellcheck disable=SC2120  # extra serve flags may be passed by callers
start_proxy() {
  rm -f "$sock"  # a killed proxy leaves its socket; waiting on a stale one would race the new bind
  RUST_LOG=${RUST_LOG:-info} .gpu/vgpu/tessera-gpu-proxy serve --socket "$sock" --metrics "$metrics" \
    --quota "${QUOTA_MIB:-1024}MiB" "$@" >>"$out/proxy.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.1; done
  echo "error: proxy did not come up"; tail -20 "$out/proxy.log"; return 1
}
stop_proxy() { [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null; proxy_pid=""; }
trap stop_proxy EXIT
stand_in() { LD_LIBRARY_PATH="$root/.gpu/vgpu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" TESSERA_IDM_SOCKET="$sock" "$@"; }

fail=0
if [ -x .gpu/vgpu/vgpu_real_gpu ]; then
  step "0. proxy session on the real driver (gpu-proxy/tests/vgpu_real_gpu.rs)"
  .gpu/vgpu/vgpu_real_gpu --nocapture 2>&1 | tail -4 | tee "$out/real-gpu.txt"
  grep -q "test result: ok. 1 passed" "$out/real-gpu.txt" || fail=1
fi
step "1. cuda-python program on the real libcuda"
(cd hack/vgpu && python3 app.py) >"$out/app-native.txt" 2>"$out/app-native.err" || fail=1
cat "$out/app-native.txt" "$out/app-native.err"
start_proxy || exit 1
step "1. the same program on the stand-in libcuda + proxy"
(cd hack/vgpu && stand_in python3 app.py) >"$out/app-vgpu.txt" 2>"$out/app-vgpu.err" || fail=1
cat "$out/app-vgpu.txt" "$out/app-vgpu.err"
if grep -q "APP OK" "$out/app-native.txt" && diff "$out/app-native.txt" "$out/app-vgpu.txt"; then
  echo "RESULT identical-output: PASS"
else
  echo "RESULT identical-output: FAIL"; fail=1
fi
grep -q "tessera\|.gpu/vgpu" "$out/app-vgpu.err" && echo "RESULT stand-in was loaded: PASS" || { echo "RESULT stand-in was loaded: FAIL"; fail=1; }

step "2. two tenants"
(cd hack/vgpu && stand_in python3 tenants.py) 2>&1 | tee "$out/tenants.txt"
grep -q "TENANTS OK" "$out/tenants.txt" || fail=1

step "3. benchmark (native, then stand-in)"
(cd hack/vgpu && python3 bench.py) >"$out/bench-native.json" 2>"$out/bench-native.err" || fail=1
(cd hack/vgpu && stand_in python3 bench.py) >"$out/bench-vgpu.json" 2>"$out/bench-vgpu.err" || fail=1
python3 hack/vgpu/report.py "$out/bench-native.json" "$out/bench-vgpu.json" | tee "$out/bench.md"
echo "same, with synchronous launches and without busy-polling (TESSERA_ASYNC_LAUNCH=0 TESSERA_IDM_SPIN_US=0):"
(cd hack/vgpu && TESSERA_ASYNC_LAUNCH=0 TESSERA_IDM_SPIN_US=0 stand_in python3 bench.py) >"$out/bench-vgpu-plain.json" 2>>"$out/bench-vgpu.err" || fail=1
python3 hack/vgpu/report.py "$out/bench-native.json" "$out/bench-vgpu-plain.json" | tee -a "$out/bench.md"

step "4. compute share: tenant B (uid 65534) at share 0.25 against tenant A at 1.0"
stop_proxy
start_proxy --tenant "65534:${QUOTA_MIB:-1024}MiB:0.25" || exit 1
chmod 0666 "$sock"
(cd hack/vgpu && stand_in python3 share.py 4) >"$out/share-a-alone.json" 2>>"$out/share.err"
(cd hack/vgpu && stand_in setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp python3 share.py 4) >"$out/share-b-alone.json" 2>>"$out/share.err"
(cd hack/vgpu && stand_in python3 share.py 6) >"$out/share-a.json" 2>>"$out/share.err" &
a_pid=$!
(cd hack/vgpu && stand_in setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp python3 share.py 6) >"$out/share-b.json" 2>>"$out/share.err"
wait "$a_pid"
python3 - "$out" <<'PY' || true
import json, sys
o = sys.argv[1]
r = {k: json.load(open(f"{o}/share-{k}.json"))["kernels_per_s"] for k in ("a-alone", "b-alone", "a", "b")}
print(f"alone: A {r['a-alone']:.1f}/s, B(0.25) {r['b-alone']:.1f}/s -> B/A {r['b-alone'] / r['a-alone']:.2f}")
print(f"contended: A {r['a']:.1f}/s, B(0.25) {r['b']:.1f}/s -> B share of throughput {r['b'] / (r['a'] + r['b']):.2f}, B vs A-alone {r['b'] / r['a-alone']:.2f}")
PY

sleep 1  # let the proxy finish tearing down the last tenant
step "proxy metrics at the end"
curl -s "$METRICS" 2>/dev/null | grep -E '^tessera_vgpu_(tenants_connected|tenant_memory_bytes|tenant_rejected)' | head -20 \
  || python3 -c "import urllib.request,os;print(urllib.request.urlopen(os.environ['METRICS']).read().decode()[:3000])"
stop_proxy
echo "proxy log tail:"; tail -15 "$out/proxy.log"
[ "$fail" = 0 ] && echo "GPU-TEST-VGPU PASS" || echo "GPU-TEST-VGPU FAIL"
exit "$fail"
