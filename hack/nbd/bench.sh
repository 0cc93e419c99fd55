#!/usr/bin/env bash
# NBD benchmark: sequential write and read (nbdcopy) and 4 KiB random read (nbd-randread) against
# Tessera's host-memory export, nbdkit's memory plugin (the peer) and, where a GPU is present,
# Tessera's VRAM export, all in the same run. Prints a table with the ratio to nbdkit.
#
# Environment (all optional):
#   NBD_BIN_DIR            folder with tessera-gpu-proxy and nbd-randread (default: $CARGO_TARGET_DIR/release)
#   NBD_BENCH_SIZE         export size and bytes copied (default 1G)
#   NBD_BENCH_BACKENDS     servers to measure, in order (default "host nbdkit"; add "vram" on a GPU box)
#   NBD_BENCH_REPS         repetitions per row; the median is reported (default 3)
#   NBD_BENCH_RR_COUNT     4 KiB random reads per repetition (default 200000)
#   NBD_BENCH_CONNECTIONS  connections for nbdcopy and nbd-randread (default 4)
#   NBDKIT, NBDKIT_MEMORY  nbdkit binary and memory plugin (name or .so path) (default nbdkit, memory)
#   NBD_BENCH_OUT          also write the table here
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${NBD_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
PROXY=$BIN/tessera-gpu-proxy
RANDREAD=$BIN/nbd-randread
SIZE=${NBD_BENCH_SIZE:-1G}
BACKENDS=${NBD_BENCH_BACKENDS:-host nbdkit}
REPS=${NBD_BENCH_REPS:-3}
RR_COUNT=${NBD_BENCH_RR_COUNT:-200000}
CONNS=${NBD_BENCH_CONNECTIONS:-4}
NBDKIT=${NBDKIT:-nbdkit}
NBDKIT_MEMORY=${NBDKIT_MEMORY:-memory}

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
need_debs

for t in "$PROXY" "$RANDREAD"; do
  [[ -x $t ]] || { echo "missing $t: build with 'cargo build --release -p tessera-gpu-proxy -p tessera-nbd --bins'" >&2; exit 1; }
done
for t in nbdcopy "$NBDKIT"; do
  command -v "$t" >/dev/null || { echo "missing $t (Debian: libnbd-bin, nbdkit)" >&2; exit 1; }
done

bytes() { # 1G -> 1073741824
  local n=${1%[KMGTkmgt]} u=${1: -1}
  case $u in K|k) echo $((n << 10));; M|m) echo $((n << 20));; G|g) echo $((n << 30));; T|t) echo $((n << 40));; *) echo "$1";; esac
}
SIZE_B=$(bytes "$SIZE")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nbd-bench.XXXXXX")
SRC=/dev/shm/nbd-bench-src.$$
[[ -d /dev/shm ]] || SRC=$WORK/src
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK" "$SRC"
}
trap cleanup EXIT

now() { date +%s%N; }
step() { echo "[$(date +%T)] $*" >&2; }

t0=$(now)
step "making $SIZE of random source data in $SRC"
head -c "$SIZE_B" /dev/urandom >"$SRC"
step "source ready in $(( ($(now) - t0) / 1000000 )) ms"

start_server() { # $1 = backend; the socket is $WORK/$1.sock
  local sock=$WORK/$1.sock
  case $1 in
    host|vram) "$PROXY" nbd --backend "$1" --size "$SIZE" --socket "$sock" 2>"$WORK/$1.log" & ;;
    nbdkit) "$NBDKIT" -f -U "$sock" "$NBDKIT_MEMORY" size="$SIZE_B" 2>"$WORK/$1.log" & ;;
    *) echo "unknown backend $1" >&2; exit 1 ;;
  esac
  PIDS+=("$!")
  for _ in $(seq 300); do [[ -S $sock ]] && return; sleep 0.05; done
  cat "$WORK/$1.log" >&2; echo "server $1 did not start" >&2; exit 1
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# awk, not bc: the GPU machine has no bc.
mibs() { awk -v b="$SIZE_B" -v s="$1" -v e="$2" 'BEGIN { printf "%.0f", b / ((e - s) / 1e9) / 1048576 }'; }

# All servers run at once and the repetitions interleave them, so that a change in machine load
# during the run hits every server alike.
for b in $BACKENDS; do start_server "$b"; done
declare -A ALL
for rep in $(seq "$REPS"); do
  for b in $BACKENDS; do
    uri="nbd+unix:///?socket=$WORK/$b.sock"
    s=$(now); nbdcopy --connections="$CONNS" "$SRC" "$uri"; e=$(now); ALL[$b,write]+="$(mibs "$s" "$e") "
    s=$(now); nbdcopy --connections="$CONNS" "$uri" null:; e=$(now); ALL[$b,read]+="$(mibs "$s" "$e") "
    out=$("$RANDREAD" "unix:$WORK/$b.sock" --count "$RR_COUNT" --connections "$CONNS" --depth 16)
    ALL[$b,rand]+="$(sed -n 's/.*iops=\([0-9]*\).*/\1/p' <<<"$out") "
  done
  step "repetition $rep of $REPS done"
done
declare -A RES
for b in $BACKENDS; do
  # Integrity: the last copy written reads back identical.
  if ! nbdcopy "nbd+unix:///?socket=$WORK/$b.sock" - | cmp -s - "$SRC"; then echo "DATA MISMATCH on $b" >&2; exit 1; fi
  for row in write read rand; do
    # shellcheck disable=SC2086 # word splitting of the sample list is intended
    RES[$b,$row]=$(printf '%s\n' ${ALL[$b,$row]} | median)
  done
  step "$b: write ${RES[$b,write]%.*} MiB/s, read ${RES[$b,read]%.*} MiB/s, 4K random ${RES[$b,rand]} IOPS; samples: write ${ALL[$b,write]}"
done

label() { case $1 in host) echo tessera-host;; vram) echo tessera-vram;; nbdkit) echo nbdkit-memory;; esac; }
{
  echo "NBD benchmark: $SIZE, $CONNS connections, median of $REPS; $(nproc) CPUs; $(uname -r)"
  printf '| %-22s | %-14s | %12s | %9s |\n' test server result "vs nbdkit"
  printf '|%s|%s|%s|%s|\n' "------------------------" "----------------" "--------------" "-----------"
  for row in write read rand; do
    case $row in
      write) name="seq write (nbdcopy)"; unit="MiB/s";;
      read) name="seq read (nbdcopy)"; unit="MiB/s";;
      rand) name="4K random read QD16" ; unit="IOPS";;
    esac
    for b in $BACKENDS; do
      v=${RES[$b,$row]}
      ratio=-
      if [[ -n ${RES[nbdkit,$row]:-} ]]; then ratio=$(awk -v a="$v" -v b="${RES[nbdkit,$row]}" 'BEGIN { printf "%.2fx", a / b }'); fi
      printf '| %-22s | %-14s | %6.0f %-5s | %9s |\n' "$name" "$(label "$b")" "$v" "$unit" "$ratio"
    done
  done
} | tee "${NBD_BENCH_OUT:-/dev/null}"
