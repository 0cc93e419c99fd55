#!/usr/bin/env bash
# `make e2e-md`: Linux MD and LVM arrays made by the real kernel (Debian 6.1 in qemu TCG), checked on
# the host by tessera-raid: verify = 0 mismatches, read = data written, rebuild of 1 then 2 removed
# members = their original bytes, a corrupted chunk is detected (and located for RAID6), bad input
# exits 2. The disk images are cached under the storage VM cache, keyed by a hash of the guest script,
# the payload parameters and the initramfs, so a rerun skips the VM.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=hack/storage-vm/env.sh
. "$ROOT/hack/storage-vm/env.sh"
T0=$(date +%s.%N)
SEED=20261121
PATTERN_MIB=96
GUEST=$ROOT/hack/parity/guest-md.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RAID=$CARGO_TARGET_DIR/release/tessera-raid
command -v python3 >/dev/null || { echo "e2e-md needs python3 (JSON checks)" >&2; exit 1; }

svm_step "build tessera-raid" cargo build -q --release -p tessera-parity --bin tessera-raid
svm_step "storage VM setup (cached)" "$ROOT/hack/storage-vm/setup.sh"

# Key: what determines the images (guest script, payload, initramfs, and how boot() stores them).
KEY=$( (cat "$GUEST"; echo "$SEED $PATTERN_MIB"; cat "$SVM_CACHE/.initrd-key"; sed -n '/^boot()/,/^}/p' "$0") |
  sha256sum | cut -c1-16)
IMG=$SVM_CACHE/e2e-md-$KEY
WORK=$(mktemp -d "${TMPDIR:-/tmp}/e2e-md.XXXX")
trap 'rm -rf "$WORK"' EXIT
svm_step "payload: $PATTERN_MIB MiB, seed $SEED" "$RAID" pattern --seed "$SEED" --size "${PATTERN_MIB}M" --out "$WORK/pattern.bin"

boot() {
  rm -rf "$IMG.tmp"
  mkdir -p "$IMG.tmp"
  SVM_MEM=1024 "$ROOT/hack/storage-vm/run.sh" "$GUEST" "$IMG.tmp" "160 160 160 160 160 160 32 32 32 32 32 32" "$WORK/pattern.bin"
  grep -q 'VMTEST: guest done' "$IMG.tmp/console.log"
  # Cut the md members out of the disks once: array J is slice J (16 MiB) of disks 0..n-1.
  mkdir -p "$IMG.tmp/members"
  local line j name n i
  while read -r line; do
    set -- $line
    j=$3 name=$4
    n=$(awk -v N="$name" '$1==N{print $6}' "$GUEST")
    for i in $(seq 0 $((n - 1))); do
      dd if="$IMG.tmp/disk$i.img" of="$IMG.tmp/members/$name-$i.img" bs=1M skip=$((j * 16)) count=16 conv=sparse status=none
    done
  done < <(grep -o 'VMTEST: array .*' "$IMG.tmp/console.log")
  rm -f "$IMG.tmp"/disk[0-5].img
  rm -rf "$IMG"
  mv "$IMG.tmp" "$IMG"
}
if [ -f "$IMG/console.log" ] && grep -q 'VMTEST: guest done' "$IMG/console.log"; then
  echo "==> kernel arrays: cached in $IMG (delete it to rerun the VM)"
else
  svm_step "kernel arrays in qemu (TCG)" boot
fi
grep 'VMTEST:' "$IMG/console.log" | sed 's/^/    /'

FAILS=0
check() { # check DESCRIPTION cmd...: runs, reports, counts failures
  local d=$1
  shift
  if "$@"; then echo "  ok   $d"; else echo "  FAIL $d"; FAILS=$((FAILS + 1)); fi
}
exit_is() { # exit_is CODE cmd...
  local want=$1 rc=0
  shift
  "$@" >"$WORK/out.txt" 2>"$WORK/err.txt" || rc=$?
  [ "$rc" = "$want" ] || { echo "    exit $rc, wanted $want: $*"; cat "$WORK/err.txt"; return 1; }
}
json() { python3 -c "import json,sys; d=json.load(open('$WORK/out.txt')); print($1)"; }


check_array() { # check_array NAME LEVEL SIZE PATTERN_OFFSET_MIB OVERRIDES... -- MEMBERS...
  local name=$1 level=$2 size=$3 poff=$4
  shift 4
  local ov=()
  while [ "$1" != -- ]; do ov+=("$1"); shift; done
  shift
  local m=("$@") n=$#
  echo "--- $name (raid$level, $n members)"
  dd if="$WORK/pattern.bin" of="$WORK/expect.bin" bs=1M skip="$poff" status=none
  truncate -s "$size" "$WORK/expect.bin"
  check "verify: 0 mismatches" exit_is 0 "$RAID" md verify --json "${ov[@]}" "${m[@]}"
  check "verify JSON: $(json 'd["report"]["stripes_checked"]') stripes, 0 inconsistent" \
    test "$(json 'len(d["report"]["mismatches"])')" = 0
  check "read == data written ($size bytes)" exit_is 0 "$RAID" md read --json --out "$WORK/read.bin" "${ov[@]}" "${m[@]}"
  check "  bytes equal" cmp "$WORK/read.bin" "$WORK/expect.bin"
  # Originals of the members we remove, as on disk.
  local r1=1 r2=$((n - 1)) r
  for r in $r1 $r2; do
    exit_is 0 "$RAID" md extract --role "$r" --out "$WORK/orig$r.bin" "${ov[@]}" "${m[@]}"
  done
  local without1=() without2=() i
  for i in $(seq 0 $((n - 1))); do
    if [ "$i" = $r1 ]; then without1+=(missing); else without1+=("${m[$i]}"); fi
    if [ "$i" = $r1 ] || [ "$i" = $r2 ]; then without2+=(missing); else without2+=("${m[$i]}"); fi
  done
  # With superblocks the roles come from them: drop the "missing" words.
  if [ "${#ov[@]}" = 0 ]; then
    mapfile -t without1 < <(printf '%s\n' "${without1[@]}" | grep -vx missing)
    mapfile -t without2 < <(printf '%s\n' "${without2[@]}" | grep -vx missing)
  fi
  check "rebuild role $r1 with it removed == original" exit_is 0 "$RAID" md rebuild --json --missing $r1 --out "$WORK/reb.bin" "${ov[@]}" "${without1[@]}"
  check "  bytes equal" cmp "$WORK/reb.bin" "$WORK/orig$r1.bin"
  check "degraded read (role $r1 removed) == data written" exit_is 0 "$RAID" md read --json --out "$WORK/read.bin" "${ov[@]}" "${without1[@]}"
  check "  bytes equal" cmp "$WORK/read.bin" "$WORK/expect.bin"
  if [ "$level" = 6 ]; then
    for r in $r1 $r2; do
      check "rebuild role $r with roles $r1,$r2 removed == original" exit_is 0 "$RAID" md rebuild --json --missing "$r" --out "$WORK/reb.bin" "${ov[@]}" "${without2[@]}"
      check "  bytes equal" cmp "$WORK/reb.bin" "$WORK/orig$r.bin"
    done
  else
    check "raid5 with 2 removed: exit 2" exit_is 2 "$RAID" md read --out "$WORK/read.bin" "${ov[@]}" "${without2[@]}"
  fi
  # Corrupt one 4 KiB page of role 2 in a copy: detected, and located for RAID6.
  local victim=2 doff chunk
  if [ "${#ov[@]}" = 0 ]; then
    exit_is 0 "$RAID" md examine --json "${m[$victim]}"
    doff=$(json 'd[0]["superblock"]["data_offset"]')
    chunk=$(json 'd[0]["superblock"]["chunk_bytes"]')
  else
    doff=$LVM_DOFF chunk=65536
  fi
  cp --sparse=always "${m[$victim]}" "$WORK/victim.img"
  dd if=/dev/urandom of="$WORK/victim.img" bs=4096 seek=$(((doff + 5 * chunk + 4096) / 4096)) count=1 conv=notrunc status=none
  local mc=("${m[@]}")
  mc[victim]=$WORK/victim.img
  check "corrupted copy: verify exits 1" exit_is 1 "$RAID" md verify --json "${ov[@]}" "${mc[@]}"
  check "  one inconsistent page, at member offset $((5 * chunk + 4096))" \
    test "$(json '[m["member_offset"] for m in d["report"]["mismatches"]]')" = "[$((5 * chunk + 4096))]"
  if [ "$level" = 6 ]; then
    check "  located: role $victim" test "$(json 'd["report"]["mismatches"][0]["bad_role"]')" = $victim
  fi
}

run_checks() {
  local line j name size nm level
  while read -r line; do
    # VMTEST: array J NAME size BYTES mismatch_cnt N
    set -- $line
    j=$3 name=$4 size=$6 nm=$8
    level=${name:1:1}
    local members=("$IMG/members/$name"-*.img)
    check "$name: kernel check mismatch_cnt=0" test "$nm" = 0
    check_array "$name" "$level" "$size" $((j * 2)) -- "${members[@]}"
  done < <(grep -o 'VMTEST: array .*' "$IMG/console.log")

  # LVM raid6: rimage i on disk 6+i from sector START, LEN sectors; no md superblock (dm-raid's is in rmeta).
  local lv
  lv=$(grep -o 'VMTEST: lvm .*' "$IMG/console.log")
  set -- $lv
  j=$3 size=$6 nm=$8
  local starts lens
  starts=$(grep -o 'VMTEST: rimage .*' "$IMG/console.log" | awk '{print $7}' | sort -u)
  lens=$(grep -o 'VMTEST: rimage .*' "$IMG/console.log" | awk '{print $9}' | sort -u)
  [ "$(echo "$starts" | wc -l)" = 1 ] && [ "$(echo "$lens" | wc -l)" = 1 ] || { echo "rimages at different offsets: $starts / $lens"; FAILS=$((FAILS + 1)); return; }
  LVM_DOFF=$((starts * 512))
  check "lvm raid6: kernel scrub raid_mismatch_count=0" test "$nm" = 0
  check_array lvm-raid6_zr 6 "$size" $((j * 2)) --level 6 --layout raid6_zr --chunk 64K --data-offset "$LVM_DOFF" \
    --member-size $((lens * 512)) --raid-disks 6 -- "$IMG"/disk{6,7,8,9,10,11}.img

  echo "--- bad input (exit 2, names the member)"
  local a=("$IMG"/members/r6-ls-64k-1.2-*.img) b=("$IMG"/members/r5-ls-64k-1.2-*.img)
  check "--out is a member" exit_is 2 "$RAID" md read --out "${a[0]}" "${a[@]}"
  check "members of different arrays" exit_is 2 "$RAID" md verify "${a[@]:0:5}" "${b[0]}"
  check "  error names $(basename "${b[0]}")" grep -q "$(basename "${b[0]}")" "$WORK/err.txt"
  cp --sparse=always "${a[3]}" "$WORK/trunc.img"
  truncate -s 8M "$WORK/trunc.img"
  check "truncated member" exit_is 2 "$RAID" md verify "${a[@]:0:3}" "$WORK/trunc.img" "${a[@]:4}"
  check "  error names trunc.img" grep -q trunc.img "$WORK/err.txt"
  check "too many missing (raid6, 3 removed)" exit_is 2 "$RAID" md read --out "$WORK/x.bin" "${a[@]:0:3}"
  check "unknown layout" exit_is 2 "$RAID" md verify --layout diagonal "${a[@]}"
  # Diverging events: an older copy of one member (its events field at 1.2 offset 4096+200 lowered).
  cp --sparse=always "${a[2]}" "$WORK/stale.img"
  printf '\001' | dd of="$WORK/stale.img" bs=1 seek=$((4096 + 200)) conv=notrunc status=none
  check "diverging event counts" exit_is 2 "$RAID" md verify "${a[@]:0:2}" "$WORK/stale.img" "${a[@]:3}"
  check "  error names stale.img" grep -q stale.img "$WORK/err.txt"
  # Members are never written: their checksums are unchanged by all of the above.
  check "members unchanged" sha256sum --quiet -c "$WORK/members.sha256"
}

sha256sum "$IMG"/disk*.img "$IMG"/members/*.img > "$WORK/members.sha256"
T1=$(date +%s.%N)
echo "==> host checks with tessera-raid"
run_checks
printf '<== host checks: %.1f s\n' "$(echo "$(date +%s.%N) - $T1" | bc)"
printf '\ne2e-md: %d failed checks, %.1f s in all\n' "$FAILS" "$(echo "$(date +%s.%N) - $T0" | bc)"
[ "$FAILS" = 0 ]
