#!/usr/bin/env bash
# GPU lane of the parity engine (issue 4).
#   stage: build tessera-raid and the `gpu` test binary with --features cuda (release) here and
#          copy them into .gpu/parity/ (carried to the GPU machine; no Rust toolchain needed there)
#   run:   on the GPU machine: GPU correctness tests, then `tessera-raid bench --gpu` (and --json);
#          GPU_PARITY_EXPLORE=1M,64M first runs the tuning sweep (bench --gpu --gpu-explore),
#          GPU_PARITY_SKIP_TESTS=1 skips the correctness tests;
#          logs go to $OUT when set (the device tool's output folder), else .gpu/parity/logs/
#   all:   stage, then run if this machine has a GPU; otherwise say so and stop (exit 0)
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-all}
dir=.gpu/parity
step() { local t0=$SECONDS; echo "== $1"; shift; "$@"; echo "== done in $((SECONDS - t0)) s"; }

stage() {
	export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
	mkdir -p "$dir"
	cargo build --release -p tessera-parity --features cuda --bin tessera-raid
	strip -o "$dir/tessera-raid" "$CARGO_TARGET_DIR/release/tessera-raid"
	local exe
	exe=$(cargo test --release -p tessera-parity --features cuda --test gpu --no-run \
		--message-format=json 2>/dev/null | grep '"kind":\["test"\]' | grep '"name":"gpu"' |
		sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
	[ -n "$exe" ] || { echo "gpu test binary not found" >&2; exit 3; }
	strip -o "$dir/gpu-tests" "$exe"
	ls -l "$dir"
}

run() {
	local logs=${OUT:-$dir/logs}
	mkdir -p "$logs"
	if ! command -v nvidia-smi >/dev/null 2>&1; then
		echo "skipped: no CUDA device (nvidia-smi not found)"
		return 0
	fi
	# NVRTC is loaded at run time (cudarc dynamic loading): make a toolkit's copy findable.
	if ! ldconfig -p | grep -q libnvrtc; then
		local lib
		lib=$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /usr/lib /opt \
			/usr/local/lib/python3*/dist-packages/nvidia -name 'libnvrtc.so*' 2>/dev/null | head -n1 || true)
		if [ -n "$lib" ]; then
			LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
			export LD_LIBRARY_PATH
		fi
	fi
	nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$logs/gpu.txt"
	export TESSERA_PARITY_CALIBRATION_DIR=${TESSERA_PARITY_CALIBRATION_DIR:-$logs/calibration}
	if [ -n "${GPU_PARITY_EXPLORE:-}" ]; then
		# tuning sweep (kernel split per size, pinned-path chunk): GPU_PARITY_EXPLORE=1M,4M,64M
		step "bench --gpu --gpu-explore" "$dir/tessera-raid" bench --gpu --gpu-explore \
			--gpu-sizes "$GPU_PARITY_EXPLORE" 2>&1 | tee "$logs/explore.txt"
	fi
	[ -n "${GPU_PARITY_SKIP_TESTS:-}" ] ||
		step "GPU correctness tests" "$dir/gpu-tests" --nocapture --test-threads=1 2>&1 | tee "$logs/gpu-tests.log"
	step "bench --gpu" "$dir/tessera-raid" bench --gpu 2>&1 | tee "$logs/bench.txt"
	if [ -n "${GPU_PARITY_JSON:-}" ]; then
		"$dir/tessera-raid" bench --gpu --json >"$logs/bench.json"
	fi
}

case $mode in
stage) step "stage into $dir" stage ;;
run) run ;;
all)
	step "stage into $dir" stage
	if command -v nvidia-smi >/dev/null 2>&1; then run; else
		echo "skipped: no CUDA device here; run 'bash hack/gpu-parity/gpu-test.sh run' on the GPU machine with $dir carried"
	fi
	;;
*) echo "usage: $0 stage|run|all" >&2; exit 2 ;;
esac
