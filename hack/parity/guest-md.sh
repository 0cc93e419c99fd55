#!/bin/sh
# Guest side of `make e2e-md` (busybox sh in the storage VM). Creates md RAID5/RAID6 arrays on 16 MiB
# dm-linear slices of /dev/vda..vdf (array J uses slice J of its members' disks) and an LVM raid6 on
# /dev/vdg..vdl, writes /pattern.bin (made on the host) from offset J*2 MiB into array J, lets the kernel
# check parity, and stops everything. The host then works on the disk images.
# Sparse zero disks are parity-consistent for XOR and P+Q, so --assume-clean is exact here.
set -u
SL=32768 # slice size in 512-byte sectors (16 MiB)
fail() { echo "VMTEST: FAIL $*"; exit 1; }
/sbin/modprobe raid456 || fail modprobe raid456
/sbin/modprobe dm_mod; /sbin/modprobe dm_raid
dev() { echo "/dev/vd$(echo abcdefghijkl | cut -c$(($1 + 1)))"; }

# name level layout chunk(KiB) metadata members
J=0
while read -r name level layout chunk meta n; do
  devs=""
  i=0
  while [ $i -lt "$n" ]; do
    # No udev in the guest: dmsetup makes the /dev/mapper node itself.
    dmsetup create --noudevsync "s${J}d$i" --table "0 $SL linear $(dev $i) $((J * SL))" || fail "dmsetup s${J}d$i"
    dmsetup mknodes "s${J}d$i"
    devs="$devs /dev/mapper/s${J}d$i"
    i=$((i + 1))
  done
  # shellcheck disable=SC2086 # $devs is a list
  mdadm --create "/dev/md$J" --run --quiet --metadata="$meta" --level="$level" --raid-devices="$n" \
    --chunk="$chunk" --layout="$layout" --bitmap=none --assume-clean $devs || fail "mdadm create $name"
  size=$(blockdev --getsize64 "/dev/md$J")
  dd if=/pattern.bin of="/dev/md$J" bs=64k skip=$((J * 32)) count=$((size / 65536)) conv=fsync 2>/dev/null ||
    fail "write $name"
  echo check > "/sys/block/md$J/md/sync_action"
  mdadm --wait "/dev/md$J"
  echo "VMTEST: array $J $name size $size mismatch_cnt $(cat "/sys/block/md$J/md/mismatch_cnt")"
  mdadm --stop "/dev/md$J" >/dev/null 2>&1 || fail "stop $name"
  J=$((J + 1))
done <<'ARRAYS'
r5-ls-64k-1.2 5 left-symmetric 64 1.2 4
r5-ra-128k-1.0 5 right-asymmetric 128 1.0 4
r5-pf-64k-0.90 5 parity-first 64 0.90 4
r6-ls-64k-1.2 6 left-symmetric 64 1.2 6
r6-la-128k-1.1 6 left-asymmetric 128 1.1 5
r6-rs-128k-1.0 6 right-symmetric 128 1.0 4
r6-nr-64k-1.2 6 ddf-N-restart 64 1.2 6
r6-nc-128k-1.2 6 ddf-N-continue 128 1.2 5
r5-la-64k-1.2 5 left-asymmetric 64 1.2 5
r5-pl-128k-1.2 5 parity-last 128 1.2 4
ARRAYS

# LVM raid6 (dm-raid, LVM's default raid6_zr) on whole disks vdg..vdl.
pvs_="/dev/vdg /dev/vdh /dev/vdi /dev/vdj /dev/vdk /dev/vdl"
# shellcheck disable=SC2086
pvcreate -q $pvs_ >/dev/null || fail pvcreate
# shellcheck disable=SC2086
vgcreate -q vg $pvs_ >/dev/null || fail vgcreate
lvcreate -q --yes --type raid6 -i 4 -I 64k -L 64M -n r6 vg >/dev/null || fail lvcreate
while :; do p=$(lvs --noheadings -o sync_percent vg/r6 | tr -d ' '); [ "$p" = "100.00" ] && break; sleep 0.5; done
size=$(blockdev --getsize64 /dev/vg/r6)
dd if=/pattern.bin of=/dev/vg/r6 bs=64k skip=$((J * 32)) count=$((size / 65536)) conv=fsync 2>/dev/null || fail "write lvm"
lvchange -q --syncaction check vg/r6
sleep 1
while :; do a=$(lvs --noheadings -o raid_sync_action vg/r6 | tr -d ' '); [ "$a" = idle ] && break; sleep 0.5; done
# Where each rimage lives on its PV: "0 <len> linear <maj:min> <start>" (sectors).
i=0
while [ $i -lt 6 ]; do
  # shellcheck disable=SC2046 # split the table line into fields
  set -- $(dmsetup table "vg-r6_rimage_$i")
  echo "VMTEST: rimage $i pv $(dev $((i + 6))) start $5 len $2"
  i=$((i + 1))
done
echo "VMTEST: lvm $J raid6_zr size $size mismatch_cnt $(lvs --noheadings -o raid_mismatch_count vg/r6 | tr -d ' ')"
dmsetup table vg-r6
vgchange -q -an vg >/dev/null || fail vgchange
echo "VMTEST: guest done"
