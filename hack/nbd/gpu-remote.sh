#!/usr/bin/env bash
# Runs on the GPU machine (see gpu-pack.sh): the VRAM export driven by the real Debian clients,
# 1 GiB written and read back with checksums, trim/zero semantics, the size cap, SIGTERM shutdown,
# then the benchmark with the host, nbdkit and VRAM rows. Results go to $OUT when it is set.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
RES=${OUT:-/tmp/nbd-results}
mkdir -p "$RES"
exec > >(tee "$RES/nbd-gpu.log") 2>&1
now() { date +%s%N; }
step() { echo "[$(date +%T)] $*"; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

W=$(mktemp -d /tmp/nbd-gpu.XXXXXX)
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$W" /dev/shm/nbd-gpu-*; }
trap cleanup EXIT

step "unpacking the Debian clients"
tar -C "$W" -xJf "$D/debian-clients.tar.xz"
R=$W/root
# Use a shipped library only where this machine lacks the soname.
mkdir -p "$W/lib"
missing=()
CACHE=$(ldconfig -p 2>/dev/null || true)
while IFS= read -r f; do
  so=$(basename "$f")
  if [[ -e /usr/lib/x86_64-linux-gnu/$so || -e /lib/x86_64-linux-gnu/$so ]] || grep -q " $so " <<<"$CACHE"; then continue; fi
  ln -sf "$f" "$W/lib/$so"
  [[ $so =~ \.so\.[0-9]+$ ]] && missing+=("$so")
done < <(find "$R/usr/lib" "$R/lib" -maxdepth 2 -name '*.so.*' 2>/dev/null)
echo "libraries this machine lacks, taken from the Debian packages: ${missing[*]:-none}"
export LD_LIBRARY_PATH=$W/lib
export PATH=$D/bin:$R/usr/bin:$PATH
NBDKIT_MEMORY=$R/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-memory-plugin.so
qemu-img --version | sed -n 1p; nbdinfo --version | sed -n 1p; nbdkit --version
nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv
uname -r; nproc

start() { # args for nbd; waits for the socket
  rm -f "$W/v.sock"
  tessera-gpu-proxy nbd --backend vram --socket "$W/v.sock" "$@" 2>"$W/server.log" &
  PID=$!
  for _ in $(seq 600); do [[ -S $W/v.sock ]] && return 0; kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
  cat "$W/server.log"; echo "FAIL: server did not start"; exit 1
}
stop() { # SIGTERM: clean exit and socket removed
  kill -TERM "$PID"; local rc=0; wait "$PID" || rc=$?; PID=
  [[ $rc -eq 0 && ! -e $W/v.sock ]] || { cat "$W/server.log"; echo "FAIL: unclean shutdown rc=$rc"; exit 1; }
  echo "SIGTERM: exit 0, socket removed"
}
U="nbd+unix:///?socket=$W/v.sock"
fail=0
check() { if "$@"; then echo "ok: $*"; else echo "FAIL: $*"; fail=1; fi; }

step "VRAM export of 2G"
start --size 2G --metrics 127.0.0.1:19464
nbdinfo "$U" | grep -E "description|export-size|block_size|can_multi_conn|can_trim|can_zero"
qemu-img info "$U" | grep -E "virtual size"

step "1 GiB of random data through nbdcopy, back, sha256"
head -c 1G /dev/urandom >/dev/shm/nbd-gpu-src
s=$(now); nbdcopy --connections=4 /dev/shm/nbd-gpu-src "$U"; e=$(now)
echo "nbdcopy write 1 GiB to VRAM: $(ms "$s" "$e") ms = $(( 1024 * 1000 / ($(ms "$s" "$e") + 1) )) MiB/s"
s=$(now); nbdcopy --connections=4 "$U" /dev/shm/nbd-gpu-back; e=$(now)
echo "nbdcopy read 1 GiB from VRAM: $(ms "$s" "$e") ms = $(( 1024 * 1000 / ($(ms "$s" "$e") + 1) )) MiB/s"
a=$(head -c 1G /dev/shm/nbd-gpu-back | sha256sum | cut -d' ' -f1); b=$(sha256sum </dev/shm/nbd-gpu-src | cut -d' ' -f1)
echo "sha256 written $b"; echo "sha256 read    $a"
check test "$a" = "$b"

step "qemu-img convert from and to the VRAM export (256 MiB), compare"
head -c 256M /dev/urandom >/dev/shm/nbd-gpu-q
s=$(now); qemu-img convert -n -f raw -O raw /dev/shm/nbd-gpu-q "$U"; e=$(now); echo "qemu-img convert to VRAM: $(ms "$s" "$e") ms"
s=$(now); qemu-img convert -f raw -O raw "$U" /dev/shm/nbd-gpu-q2; e=$(now); echo "qemu-img convert from VRAM: $(ms "$s" "$e") ms"
check cmp -n 268435456 /dev/shm/nbd-gpu-q /dev/shm/nbd-gpu-q2
check qemu-img compare -f raw -F raw /dev/shm/nbd-gpu-q2 "$U"

step "trim and write-zeroes read back zeros (whole chunks freed, partial chunks scrubbed on the device)"
out=$(qemu-io -f raw -c "write -P 0x3c 0 16M" -c "discard 0 8M" -c "write -z 9M 100k" -c "read -P 0 0 8M" \
  -c "read -P 0 9M 100k" -c "read -P 0x3c 8M 1M" -c "read -P 0x3c 9539584 7237632" "$U" 2>&1) || true
echo "$out"
check test -z "$(grep -iE 'verification failed|error' <<<"$out")"
curl -s 127.0.0.1:19464/metrics >"$W/metrics.txt" || true
grep -E "^tessera_nbd_(read_bytes|written_bytes|allocated_bytes|requests_total)" "$W/metrics.txt" || true
stop

step "size cap and automatic size"
tessera-gpu-proxy nbd --backend vram --socket "$W/x.sock" --size 8G --max-bytes 4G >"$W/cap.log" 2>&1 || true
if grep -q "exceeds" "$W/cap.log"; then
  echo "ok: explicit size above --max-bytes refused: $(tail -1 "$W/cap.log")"; else echo "FAIL: cap not enforced"; fail=1; fi
start --size auto --max-bytes 6G
sz=$(nbdinfo --size "$U"); echo "auto size with --max-bytes 6G: $sz"
check test "$sz" -eq $((6 << 30))
stop
start --size auto --reserve 2G
sz=$(nbdinfo --size "$U"); echo "auto size (free VRAM minus 2G reserve): $sz bytes"
stop

step "benchmark: host memory, nbdkit memory, VRAM"
NBD_BIN_DIR=$D/bin NBD_BENCH_BACKENDS="host nbdkit vram" NBDKIT=nbdkit NBDKIT_MEMORY=$NBDKIT_MEMORY \
  NBD_BENCH_SIZE=${NBD_BENCH_SIZE:-2G} NBD_BENCH_REPS=${NBD_BENCH_REPS:-3} NBD_BENCH_OUT=$RES/bench.txt \
  bash "$D/bench.sh"
nvidia-smi --query-gpu=name --format=csv,noheader | sed 's/^/device: /' | tee -a "$RES/bench.txt"
[[ $fail -eq 0 ]] && echo "ALL GPU NBD CHECKS PASSED" || { echo "SOME GPU NBD CHECKS FAILED"; exit 1; }
