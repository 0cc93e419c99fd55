#!/bin/sh
# Guest side of `make e2e-storage` (busybox sh in the storage VM, PID 1's child). The node agent
# (one-shot mode) applies the pools (next to /test.sh) twice each, is refused on the ext4 disk, starts a
# scrub, reports Degraded after a member is failed, and destroys the pools (deletionPolicy Destroy). Every status report, exit code, log and the
# raw tool outputs (parser fixtures) go to /out, which is written as a tar archive onto the last
# disk for the host to check.
# Disks: vda-vdf MD, vdg-vdl LVM, vdm1-vdp1 ZFS mirrors, vdq1/2/3 special/log/cache, vdr ext4,
# vds spare partner of the refused MD array, vdt the output disk.
set -u
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
A=/sbin/tessera-node-agent
O=/out
mkdir -p "$O"
export RUST_LOG=info
up() { cut -d' ' -f1 /proc/uptime; }
for m in raid456 dm_mod dm_raid zfs nfsd configfs target_core_iblock iscsi_target_mod iscsi_tcp sd_mod; do
  /sbin/modprobe "$m" || echo "VMTEST: modprobe $m failed"
done
# kernel NFS server state for exportfs (mountd and the nfsd threads start after the exports are made)
mkdir -p /var/lib/nfs /proc/fs/nfsd /etc/exports.d
: >/etc/exports
: >/var/lib/nfs/etab # what nfs-server.service's `exportfs -r` leaves on a host
mount -t nfsd nfsd /proc/fs/nfsd || echo "VMTEST: mount nfsd failed"
# iSCSI: LIO's configfs, the loopback interface for the portal and the initiator, and what udev does
# for zvols on a host (60-zvol.rules: a /dev/zvol/POOL/VOL link to each /dev/zdN, named by zvol_id).
mount -t configfs configfs /sys/kernel/config || echo "VMTEST: mount configfs failed"
ifconfig lo 127.0.0.1 up || echo "VMTEST: lo up failed"
zvol_links() {
  while :; do
    for d in /dev/zd*; do
      [ -b "$d" ] || continue
      n=$(/lib/udev/zvol_id "$d" 2>/dev/null) || continue
      [ "$(readlink "/dev/zvol/$n")" = "$d" ] && continue
      mkdir -p "/dev/zvol/$(dirname "$n")"
      ln -sf "$d" "/dev/zvol/$n"
    done
    sleep 0.2
  done
}
zvol_links &
ZVOL_LINKS=$!
# targetcli asks the system D-Bus for tcmu-runner's backstores on every start: Debian's system bus,
# as on a host.
echo 'messagebus:x:100:101::/nonexistent:/bin/false' >>/etc/passwd
echo 'messagebus:x:101:' >>/etc/group
mkdir -p /var /run/dbus
ln -sfn /run /var/run
dbus-daemon --system --fork || echo "VMTEST: dbus-daemon failed"

# run NAME cmd...: stdout, stderr and exit code into /out/NAME.{out,err,rc}, one timing line.
run() {
  name=$1
  shift
  t0=$(up)
  "$@" >"$O/$name.out" 2>"$O/$name.err"
  rc=$?
  echo "$rc" >"$O/$name.rc"
  echo "VMTEST: $name rc=$rc ($t0 -> $(up) s)"
}
apply() { # apply NAME POOL [ARGS...]
  name=$1 pool=$2
  shift 2
  run "$name" "$A" apply --pool "/$pool" --status-out "$O/$name.json" "$@"
}

apply md-1 md-raid6.yaml
apply md-2 md-raid6.yaml
apply lvm-1 lvm-raid.yaml
apply lvm-2 lvm-raid.yaml
apply zfs-1 zfs-llm.yaml
apply zfs-2 zfs-llm.yaml
apply refuse-md ext4-refuse-md.yaml
apply refuse-lvm ext4-refuse-lvm.yaml
apply refuse-zfs ext4-refuse-zfs.yaml
run inventory "$A" inventory --json

# Raw outputs for the parser fixtures (the same commands and fields the agent uses).
PVF=pv_name,vg_name,pv_size,pv_free,pv_attr
VGF=vg_name,vg_size,vg_free,vg_extent_size,pv_count,lv_count,vg_missing_pv_count
LVF=lv_name,vg_name,segtype,data_stripes,stripe_size,lv_size,lv_attr,lv_health_status,copy_percent,raid_sync_action
J="--reportformat json --units b --nosuffix"
# shellcheck disable=SC2086 # $J is a list of options
{
  run fx-lvm-pvs lvm pvs $J -o $PVF
  run fx-lvm-vgs lvm vgs $J -o $VGF tvg
  run fx-lvm-lvs lvm lvs $J -o $LVF tvg
}
run fx-mdadm-detail-export mdadm --detail --export /dev/md/data
run fx-zpool-status zpool status -P -p llm
run fx-zpool-list zpool list -Hp -o name,size,allocated,free,capacity,health llm
run fx-zpool-get zpool get -Hp -o property,value ashift,autotrim llm
run fx-zfs-get-inference zfs get -Hp -o property,value recordsize,atime,special_small_blocks llm/inference
run fx-exportfs-s exportfs -s
run fx-zfs-get-zvol zfs get -Hp -o property,value volsize,volblocksize,sync,volmode llm/vm/iscsi0
run fx-targetcli-ls targetcli ls /
run zfs-arc-max cat /sys/module/zfs/parameters/zfs_arc_max

# Scheduled snapshots (as if the schedule fired three times): keep 2 of the agent's own, never a
# snapshot someone else took.
run zfs-snap-manual zfs snapshot llm/inference@manual
apply zfs-snap-1 zfs-llm.yaml --snapshot-now
apply zfs-snap-2 zfs-llm.yaml --snapshot-now
apply zfs-snap-3 zfs-llm.yaml --snapshot-now
run zfs-snapshots zfs list -H -t snapshot -o name -s createtxg -d 1 llm/inference

# The NFS export made by the agent, from a client: nfsd serves NFSv4 only (no rpcbind needed),
# rpc.mountd answers the kernel's export upcalls; lo carries an address of the export's client
# range (10.20.0.0/24), so a mount from 10.20.0.1 is inside it and one from 127.0.0.1 is not.
ip addr add 10.20.0.1/24 dev lo
mkdir -p /run/rpc_pipefs /var/lib/nfs/v4recovery /mnt/nfs /mnt/nfs2
# The shortest grace period nfsd allows (no client has state to reclaim on a fresh server).
echo 10 >/proc/fs/nfsd/nfsv4leasetime
echo 10 >/proc/fs/nfsd/nfsv4gracetime
rpc.mountd -N 2 -N 3 --no-udp >"$O/rpc-mountd.log" 2>&1
rpc.nfsd -N 3 --no-udp -p 2049 4 >"$O/rpc-nfsd.log" 2>&1
dd if=/dev/urandom of=/llm/inference/nfs-check bs=64k count=16 2>/dev/null
run nfs-mount mount.nfs 10.20.0.1:/llm/inference /mnt/nfs -o vers=4.2,retry=0
run nfs-read sh -c 'cmp /mnt/nfs/nfs-check /llm/inference/nfs-check && echo same'
run nfs-write-squashed sh -c 'echo x >/mnt/nfs/root-was-here'
run nfs-mount-outsider mount.nfs 127.0.0.1:/llm/inference /mnt/nfs2 -o vers=4.2,retry=0
umount /mnt/nfs 2>/dev/null
umount /mnt/nfs2 2>/dev/null
rm -f /llm/inference/nfs-check

# The iSCSI export made by the agent, from the initiator side: the zvol gets 4 MiB of random bytes;
# an initiator name outside the ACL cannot log in (libiscsi); the allowed one sees a 32 MiB LUN and,
# through the kernel initiator (open-iscsi), reads the zvol's bytes and writes bytes the zvol then has.
IQN=iqn.2026-01.dev.tessera:llm-vm
OK_INIT=iqn.2026-01.lab.example:hypervisor-01
ZV=/dev/zvol/llm/vm/iscsi0
run iscsi-fill dd if=/dev/urandom of=$ZV bs=1M count=4 conv=fsync
run iscsi-intruder iscsi-readcapacity16 -i iqn.2026-01.lab.example:intruder "iscsi://127.0.0.1/$IQN/0"
run iscsi-readcap iscsi-readcapacity16 -i $OK_INIT "iscsi://127.0.0.1/$IQN/0"
mkdir -p /etc/iscsi/nodes /etc/iscsi/send_targets /run/lock/iscsi /var/lib/iscsi
echo "InitiatorName=$OK_INIT" >/etc/iscsi/initiatorname.iscsi
setsid /sbin/iscsid -f >"$O/iscsid.log" 2>&1 &
ISCSID=$!
sleep 1
run iscsi-discovery iscsiadm -m discovery -t sendtargets -p 127.0.0.1
run iscsi-login iscsiadm -m node -T $IQN -p 127.0.0.1 --login
for _ in $(seq 100); do [ -b /dev/sda ] && break; sleep 0.2; done
run iscsi-read sh -c "cmp -n 4194304 /dev/sda $ZV && echo same"
run iscsi-write sh -c "dd if=/dev/urandom of=/tmp/w bs=1M count=2 2>/dev/null &&
  dd if=/tmp/w of=/dev/sda bs=1M seek=8 oflag=direct conv=fsync 2>/dev/null &&
  echo 3 >/proc/sys/vm/drop_caches && cmp -n 2097152 /tmp/w $ZV 0 8388608 && echo same"
run iscsi-logout iscsiadm -m node -T $IQN -p 127.0.0.1 --logout
kill "$ISCSID" 2>/dev/null

# Scrub: some data first, so that the scrub is still running when the agent looks.
dd if=/dev/urandom of=/llm/inference/blob bs=1M count=48 2>/dev/null
echo 3 >/proc/sys/vm/drop_caches
dd if=/dev/urandom of=/llm/tmp/small bs=16k count=256 2>/dev/null
sync
apply zfs-scrub zfs-llm.yaml --scrub-now
run fx-zpool-status-scrub zpool status -P -p llm
zpool wait -t scrub llm
run fx-zpool-status-scrubbed zpool status -P -p llm

# Parity verify with the engine (the job of a GpuRaidPolicy's verifySchedule): after the initial
# resync the RAID6 array is consistent; then 4 KiB of one member's data area are overwritten under
# the array, and the verify finds the inconsistent page and blames that member. The array is
# read-only during each verify and read-write again afterwards.
mdadm --wait /dev/md/data >/dev/null 2>&1
run verify-clean "$A" verify --pool /md-raid6.yaml --status-out "$O/verify-clean.json"
run verify-array-state sh -c 'cat /sys/block/$(basename $(readlink -f /dev/md/data))/md/array_state'
dd if=/dev/vdd of=/tmp/page-before bs=4096 count=1 skip=4096 iflag=direct 2>/dev/null
run verify-corrupt-write dd if=/dev/urandom of=/dev/vdd bs=4096 count=1 seek=4096 oflag=direct conv=notrunc
echo 3 >/proc/sys/vm/drop_caches
run verify-corrupt "$A" verify --pool /md-raid6.yaml --status-out "$O/verify-corrupt.json"
# The repair (the policy's repairMismatches) rewrites that page on /dev/vdd from the other members:
# the bytes it had before are back, and the array verifies clean. (The kernel's own `repair`
# would have recomputed P and Q from the corrupted data instead.)
run verify-repair "$A" verify --pool /md-raid6.yaml --repair --status-out "$O/verify-repair.json"
run verify-repair-page sh -c 'dd if=/dev/vdd bs=4096 count=1 skip=4096 iflag=direct 2>/dev/null | cmp - /tmp/page-before && echo same'
run verify-after-repair "$A" verify --pool /md-raid6.yaml --status-out "$O/verify-after-repair.json"

# The same for the LVM raid LVs: their rimage legs are read with the geometry `lvs` gives (no md
# superblock there), both LVs are consistent once synchronised; a page overwritten on r6's third
# leg is found, blamed on that leg and rewritten by --repair.
for lv in r6 r5; do
  for _ in $(seq 300); do
    [ "$(lvm lvs --noheadings -o copy_percent "tvg/$lv" | tr -d ' ')" = 100.00 ] && break
    sleep 0.2
  done
done
# shellcheck disable=SC2086 # $J is a list of options
run fx-lvm-lvs-geometry lvm lvs $J -o lv_name,lv_attr,segtype,lv_layout,data_stripes,stripe_size,lv_size,data_offset,copy_percent tvg/r6
run verify-lvm-clean "$A" verify --pool /lvm-raid.yaml --status-out "$O/verify-lvm-clean.json"
LEG=/dev/mapper/tvg-r6_rimage_2
dd if=$LEG of=/tmp/leg-page-before bs=4096 count=1 skip=1000 iflag=direct 2>/dev/null
run verify-lvm-corrupt-write dd if=/dev/urandom of=$LEG bs=4096 count=1 seek=1000 oflag=direct conv=notrunc
run verify-lvm-repair "$A" verify --pool /lvm-raid.yaml --repair --status-out "$O/verify-lvm-repair.json"
run verify-lvm-repair-page sh -c "dd if=$LEG bs=4096 count=1 skip=1000 iflag=direct 2>/dev/null | cmp - /tmp/leg-page-before && echo same"
run verify-lvm-attr lvm lvs --noheadings -o lv_attr tvg/r6

# Failing one member makes the status Degraded.
run md-fail mdadm /dev/md/data --fail /dev/vdb
apply md-degraded md-raid6.yaml
run fx-mdadm-detail-export-degraded mdadm --detail --export /dev/md/data
run zfs-offline zpool offline llm /dev/vdn1
apply zfs-degraded zfs-llm.yaml
run fx-zpool-status-degraded zpool status -P -p llm

# LVM: replace one leg of the raid6 LV with the dm error target and write, so that dm-raid fails it.
leg=tvg-r6_rimage_1
n=$(dmsetup table "$leg" | awk '{print $2}')
run lvm-fail-leg sh -c "dmsetup suspend $leg && dmsetup load $leg --table '0 $n error' && dmsetup resume --noudevsync $leg && dd if=/dev/zero of=/dev/tvg/r6 bs=64k count=64 conv=fsync"
sleep 1
apply lvm-degraded lvm-raid.yaml
# shellcheck disable=SC2086 # $J is a list of options
run fx-lvm-lvs-degraded lvm lvs $J -o $LVF tvg
# shellcheck disable=SC2086
run fx-lvm-vgs-degraded lvm vgs $J -o $VGF tvg

# deletionPolicy Destroy (of the degraded pools, as they are now). The Retain manifests are
# refused; copies that say Destroy are destroyed, a second destroy finds nothing, the members carry
# no signature afterwards, and the first manifest applies again on them without devicePolicy: Wipe.
run destroy-retain-md "$A" destroy --pool /md-raid6.yaml
run destroy-retain-md-still-there mdadm --detail /dev/md/data
for p in md-raid6 lvm-raid zfs-llm; do
  awk '{ print } /^spec:$/ { print "  deletionPolicy: Destroy" }' "/$p.yaml" >"/tmp/$p-destroy.yaml"
done
run destroy-md "$A" destroy --pool /tmp/md-raid6-destroy.yaml --status-out "$O/destroy-md.json"
run destroy-lvm "$A" destroy --pool /tmp/lvm-raid-destroy.yaml --status-out "$O/destroy-lvm.json"
run destroy-zfs "$A" destroy --pool /tmp/zfs-llm-destroy.yaml --status-out "$O/destroy-zfs.json"
run destroy-md-again "$A" destroy --pool /tmp/md-raid6-destroy.yaml --status-out "$O/destroy-md-again.json"
run destroy-zfs-again "$A" destroy --pool /tmp/zfs-llm-destroy.yaml --status-out "$O/destroy-zfs-again.json"
run after-destroy-md-detail mdadm --detail /dev/md/data
run after-destroy-lvm-vgs lvm vgs tvg
run after-destroy-zpool-list zpool list llm
run after-destroy-targetcli targetcli ls /
# Signatures left on the members (wipefs prints one line per signature; empty = blank).
run after-destroy-signatures wipefs -n /dev/vda /dev/vdb /dev/vdc /dev/vdd /dev/vde /dev/vdf \
  /dev/vdg /dev/vdh /dev/vdi /dev/vdj /dev/vdk /dev/vdl /dev/vdm1 /dev/vdn1 /dev/vdo1 /dev/vdp1 \
  /dev/vdq1 /dev/vdq2 /dev/vdq3
apply md-recreate md-raid6.yaml

kill "$ZVOL_LINKS" 2>/dev/null
dmesg >"$O/dmesg.txt"
zpool export llm >/dev/null 2>&1
lvm vgchange -an tvg >/dev/null 2>&1
mdadm --stop /dev/md/data >/dev/null 2>&1
sync
tar -cf /dev/vdt -C "$O" . && echo "VMTEST: results written to vdt"
sync
echo "VMTEST: guest done"
