#!/usr/bin/env bash
# Boots the storage VM (qemu TCG unless SVM_ACCEL=kvm) with a guest script and N sparse raw disks.
# Usage: run.sh GUEST_SCRIPT DISK_DIR DISK_SPEC [FILES...]
#   DISK_SPEC: space-separated sizes in MiB, one per disk (disk0.img, disk1.img, ... in DISK_DIR);
#              existing images are reused when SVM_KEEP_DISKS=1, else recreated empty.
#   FILES:     extra files copied next to /test.sh in the guest's root.
# SVM_DRIVE_OPTS_<i>: extra -drive options of disk i, e.g. throttling.bps-read=4194304.
# Console lines are timestamped; the log goes to DISK_DIR/console.log. Exit status is the guest
# script's (from its "VMTEST: test.sh rc=N" line), or 1 when the VM never reported one.
set -euo pipefail
# shellcheck source=hack/storage-vm/env.sh
. "$(dirname "$0")/env.sh"
GUEST=$1 DIR=$2 SPEC=$3
shift 3
[ -f "$SVM_INITRD" ] || { echo "run $SVM_HERE/setup.sh first" >&2; exit 1; }
mkdir -p "$DIR"
T=$(mktemp -d "$DIR/boot.XXXX")
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/d"
cp "$GUEST" "$T/d/test.sh"
chmod +x "$T/d/test.sh"
for f in "$@"; do cp "$f" "$T/d/"; done
(cd "$T/d" && find . | LD_LIBRARY_PATH=$(svm_ldpath) "$SVM_ROOT/bin/cpio" -o -H newc --quiet) | gzip -1 > "$T/test.cpio.gz"
cat "$SVM_INITRD" "$T/test.cpio.gz" > "$T/initrd.gz"
DRIVES=()
i=0
for mb in $SPEC; do
  img=$DIR/disk$i.img
  if [ "${SVM_KEEP_DISKS:-0}" != 1 ] || [ ! -f "$img" ]; then rm -f "$img"; truncate -s "${mb}M" "$img"; fi
  extra=SVM_DRIVE_OPTS_$i
  DRIVES+=(-drive "file=$img,if=virtio,format=raw,cache=writeback${!extra:+,${!extra}}")
  i=$((i + 1))
done
case ${SVM_ACCEL:-tcg} in
  kvm) ACC=(-accel kvm -cpu max) ;;
  *) ACC=(-accel 'tcg,thread=multi' -cpu max) ;;
esac
R=$SVM_ROOT
start=$(date +%s.%N)
LD_LIBRARY_PATH=$(svm_ldpath) "$R/usr/bin/qemu-system-x86_64" -L "$R/usr/share/qemu" -L "$R/usr/share/seabios" \
  -L "$R/usr/lib/ipxe/qemu" "${ACC[@]}" -m "${SVM_MEM:-1024}" -smp "${SVM_SMP:-2}" -nographic -no-reboot \
  -nic none -kernel "$SVM_KERNEL" -initrd "$T/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet loglevel=4 ${SVM_APPEND:-}" "${DRIVES[@]}" 2>&1 |
  while IFS= read -r line; do
    printf '[%7.2f] %s\n' "$(echo "$(date +%s.%N) - $start" | bc)" "${line%$'\r'}"
  done | tee "$DIR/console.log"
rc=$(sed -n 's/.*VMTEST: test.sh rc=\([0-9]*\).*/\1/p' "$DIR/console.log" | tail -1)
echo "storage-vm: guest rc=${rc:-none}"
[ "${rc:-1}" = 0 ]
