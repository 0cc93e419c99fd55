#!/usr/bin/env bash
# `make e2e-storage`: the node agent in one-shot mode against a real kernel (Debian 6.1 in qemu TCG,
# the storage VM of hack/storage-vm) with real mdadm, lvm2 and OpenZFS 2.1.11: MD RAID6 over six
# disks, an LVM VG with raid6 and raid5 LVs, the LLM ZFS layout scaled down (two mirrors, special,
# log, cache, datasets, a zvol). Checks: the first apply creates, the second has no actions; failing
# a member (mdadm --fail, zpool offline) reports Degraded; a disk carrying ext4 is refused by all
# three backends without devicePolicy Wipe and its image's sha256 is unchanged; a scrub started
# with --scrub-now shows in status.operation; the NFS export serves a client inside its range and
# refuses one outside; the iSCSI export made with targetcli serves the zvol's
# bytes to the allowed initiator (open-iscsi) and refuses another; the parity verify finds and the
# repair rewrites a corrupted page; destroy leaves no pool, target or signature behind.
# Everything it needs is fetched and cached under ~/.cache/tessera (storage VM root, zfs.ko build,
# util-linux for wipefs). TESSERA_CAPTURE_FIXTURES=1 copies the guest's raw tool outputs over the
# parser fixtures in node-agent/tests/fixtures/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=hack/storage-vm/env.sh
. "$ROOT/hack/storage-vm/env.sh"
T0=$(date +%s.%N)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
AGENT=$CARGO_TARGET_DIR/release/tessera-node-agent
ZFS_VER=${SVM_ZFS_VER:-2.1.11}
Z=$HOME/.cache/tessera/zfs-$ZFS_VER-$SVM_KVER
L=$HOME/.cache/tessera/storage-lane-$SVM_KVER
FX=$ROOT/node-agent/tests/fixtures
command -v python3 >/dev/null || { echo "e2e-storage needs python3 (JSON checks)" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || PATH=$PATH:/sbin:/usr/sbin
command -v mkfs.ext4 >/dev/null || { echo "e2e-storage needs mkfs.ext4 (e2fsprogs) on the host" >&2; exit 1; }

svm_step "build tessera-node-agent (release)" nice -n 10 cargo build -q --release -p tessera-node-agent
svm_step "storage VM setup (once, then cached)" "$ROOT/hack/storage-vm/setup.sh"
svm_step "OpenZFS $ZFS_VER module for $SVM_KVER (built once, then cached)" "$ROOT/hack/storage-vm/zfs.sh"

LANE_DEBS="util-linux libblkid1 libsmartcols1 libmount1 libudev1 libselinux1 libpcre2-8-0 nfs-kernel-server
 nfs-common libwrap0 libnfsidmap1 libevent-core-2.1-7"
lane_debs() {
  mkdir -p "$L/debs" "$L/root"
  cd "$L/debs"
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  { apt-get download -q $LANE_DEBS 2>&1 | grep -v unsandboxed; } || true
  cd - >/dev/null
  local f
  for f in "$L"/debs/*.deb; do dpkg -x "$f" "$L/root"; done
  [ -x "$L/root/sbin/wipefs" ] && [ -x "$L/root/sbin/mount.nfs" ] || { echo "wipefs / mount.nfs missing after unpack" >&2; exit 1; }
  echo "$LANE_DEBS" >"$L/.complete"
}
if [ "$(cat "$L/.complete" 2>/dev/null)" = "$LANE_DEBS" ]; then
  echo "util-linux (wipefs, lsblk), exportfs cached in $L"
else
  svm_step "util-linux (wipefs, lsblk), NFS server and client for the guest" lane_debs
fi

# iSCSI: targetcli-fb with the Python it runs on (target side, LIO in the guest's kernel; it needs a
# system D-Bus, so dbus-daemon comes too), open-iscsi
# (the kernel initiator that logs in and reads the LUN back) and libiscsi's tools (a user-space
# initiator that can present another initiator name). Unpacked into a tree that goes as is into the
# initramfs, without docs, man pages, locales and the parts of the stdlib nothing here imports.
ISCSI_DEBS="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3-minimal python3
 targetcli-fb python3-rtslib-fb python3-configshell-fb python3-six python3-pyparsing python3-urwid
 python3-pyudev python3-gi gir1.2-glib-2.0 libgirepository-1.0-1 libglib2.0-0 libffi8 libexpat1
 libsqlite3-0 libreadline8 libncursesw6 libtinfo6 libbz2-1.0 liblzma5 libuuid1 libcrypt1 libdb5.3
 libnsl2 libtirpc3 zlib1g libssl3 libudev1 libpcre2-8-0 libmount1 libblkid1 libselinux1 open-iscsi
 libisns0 libopeniscsiusr libkmod2 libsystemd0 libcap2 libgcrypt20 libgpg-error0 liblz4-1 libzstd1
 libiscsi-bin libiscsi7 libibverbs1 librdmacm1 libnl-3-200 libnl-route-3-200 libcunit1
 dbus-daemon dbus-system-bus-common libdbus-1-3 libapparmor1 libaudit1 libcap-ng0 libc6"
IT=$L/iscsi-tree
iscsi_tree() {
  mkdir -p "$L/iscsi-debs"
  cd "$L/iscsi-debs"
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  { apt-get download -q $ISCSI_DEBS 2>&1 | grep -v unsandboxed; } || true
  cd - >/dev/null
  rm -rf "$IT"
  mkdir -p "$IT"
  local f
  for f in "$L"/iscsi-debs/*.deb; do dpkg -x "$f" "$IT"; done
  # lib64/ld-linux is an absolute link (the base initramfs has the loader): writing through it
  # would reach the host's.
  rm -rf "${IT:?}/lib64" "${IT:?}"/usr/share/{doc,man,locale,lintian,bug,python3} "${IT:?}"/usr/lib/python3.11/{test,idlelib,tkinter,ensurepip,lib2to3,pydoc_data,turtledemo} "${IT:?}"/etc/init.d "${IT:?}"/lib/systemd
  [ -x "$IT/usr/bin/targetcli" ] && [ -x "$IT/sbin/iscsiadm" ] && [ -x "$IT/usr/bin/iscsi-ls" ] &&
    [ -x "$IT/usr/bin/dbus-daemon" ] ||
    { echo "targetcli / iscsiadm / iscsi-ls / dbus-daemon missing after unpack" >&2; exit 1; }
  # The guest starts iscsid itself (no systemd); LIO's saved configuration goes to /etc/target.
  sed -i 's#^iscsid.startup = .*#iscsid.startup = /sbin/iscsid#' "$IT/etc/iscsi/iscsid.conf"
  mkdir -p "$IT/etc/target" "$IT/lib/udev"
  cp "$Z/root/lib/udev/zvol_id" "$IT/lib/udev/"
  echo "$ISCSI_KEY" >"$L/.iscsi-complete"
}
ISCSI_KEY="$ISCSI_DEBS $(sed -n '/^iscsi_tree()/,/^}/p' "$0" | sha256sum | cut -c1-16)"
if [ "$(cat "$L/.iscsi-complete" 2>/dev/null)" = "$ISCSI_KEY" ]; then
  echo "targetcli, open-iscsi, libiscsi tools cached in $IT"
else
  svm_step "targetcli + Python, open-iscsi, libiscsi tools for the guest" iscsi_tree
fi

# The lane's initramfs: the base one plus the agent, zpool/zfs, wipefs, the zfs modules and the iSCSI
# tree. Rebuilt when any of them changes.
INITRD=$L/initramfs-storage.cpio.gz
KEY=$( (sha256sum "$AGENT" "$Z"/ko/*.ko "$Z/root/sbin/zpool" "$L/root/sbin/wipefs" "$L/root/bin/lsblk" "$L/root/usr/sbin/exportfs" "$L/root/sbin/mount.nfs"; cat "$L/.iscsi-complete" "$SVM_CACHE/.initrd-key" \
  "$ROOT/hack/storage-vm/mkinitramfs.sh" "$ROOT/hack/storage-vm/init"; sed -n '/^mk_initrd()/,/^}/p' "$0") |
  sha256sum | cut -c1-16)
mk_initrd() {
  SVM_INITRD_OUT=$INITRD SVM_EXTRA_KO_DIR=$Z/ko SVM_EXTRA_TREE=$IT \
    SVM_EXTRA_MODS="nfsd nfsv4 configfs target_core_mod target_core_iblock iscsi_target_mod iscsi_tcp sd_mod" \
    SVM_EXTRA_BINS="$AGENT $Z/root/sbin/zpool $Z/root/sbin/zfs $L/root/sbin/wipefs $L/root/bin/lsblk $L/root/usr/sbin/exportfs $L/root/usr/sbin/rpc.nfsd $L/root/usr/sbin/rpc.mountd $L/root/sbin/mount.nfs" \
    SVM_EXTRA_LIBPATH="$Z/root/lib/x86_64-linux-gnu:$Z/root/usr/lib/x86_64-linux-gnu:$L/root/lib/x86_64-linux-gnu:$L/root/usr/lib/x86_64-linux-gnu" \
    "$ROOT/hack/storage-vm/mkinitramfs.sh" >/dev/null
  echo "$KEY" >"$INITRD.key"
}
if [ "$(cat "$INITRD.key" 2>/dev/null)" = "$KEY" ] && [ -f "$INITRD" ]; then
  echo "lane initramfs cached ($INITRD)"
else
  svm_step "lane initramfs (agent, zpool/zfs, wipefs, zfs.ko, targetcli, open-iscsi)" mk_initrd
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/e2e-storage.XXXX")
trap 'rm -rf "$WORK"' EXIT
D=$WORK/disks
# Sizes in MiB: 6 MD, 6 LVM, 4 ZFS data, 1 "NVMe" (special/log/cache), ext4, spare, output.
SIZES="64 64 64 64 64 64 64 64 64 64 64 64 128 128 128 128 384 64 64 64"
prep_disks() {
  mkdir -p "$D"
  local i=0 mb
  for mb in $SIZES; do
    rm -f "$D/disk$i.img"
    truncate -s "${mb}M" "$D/disk$i.img"
    i=$((i + 1))
  done
  # MBR partition tables (no udev in the guest: ZFS gets partitions, see the recipe's README).
  python3 - "$D" <<'PY'
import struct, sys
d = sys.argv[1]
def mbr(path, parts):  # parts: (start MiB, size MiB); 0 = rest of the disk
    size = __import__("os").path.getsize(path) // 512
    table = b""
    for start, mib in parts:
        s = start * 2048
        n = (mib * 2048) if mib else size - s
        table += struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", s, n)
    table = table.ljust(64, b"\0")
    with open(path, "r+b") as f:
        f.seek(446)
        f.write(table + b"\x55\xaa")
for i in (12, 13, 14, 15):
    mbr(f"{d}/disk{i}.img", [(1, 0)])
mbr(f"{d}/disk16.img", [(1, 128), (129, 96), (225, 0)])
PY
  mkfs.ext4 -q -F -L tessera-e2e "$D/disk17.img"
}
svm_step "disk images (partitions, ext4 on disk 17 = vdr)" prep_disks
SUM_BEFORE=$(sha256sum <"$D/disk17.img" | cut -d' ' -f1)

boot() {
  # Reads of the ZFS data disks are throttled (4 MiB/s) so that a scrub of the small pool lasts
  # long enough (seconds) to be seen in progress; writes are not.
  local i
  for i in 12 13 14 15; do export "SVM_DRIVE_OPTS_$i=throttling.bps-read=4194304"; done
  SVM_INITRD=$INITRD SVM_KEEP_DISKS=1 SVM_MEM=${SVM_MEM:-2048} \
    "$ROOT/hack/storage-vm/run.sh" "$ROOT/hack/storage/guest-storage.sh" "$D" "$SIZES" \
    "$ROOT"/hack/storage/pools/*.yaml >"$WORK/vm.log" 2>&1 || true
  if [ -n "${TESSERA_E2E_KEEP:-}" ]; then mkdir -p "$TESSERA_E2E_KEEP" && cp "$WORK/vm.log" "$TESSERA_E2E_KEEP/"; fi
  grep -E 'VMTEST|panic|Oops|BUG' "$WORK/vm.log" | sed 's/^/    /'
  grep -q 'VMTEST: guest done' "$WORK/vm.log"
}
svm_step "storage VM: agent applies md, lvm, zfs (qemu TCG)" boot
SUM_AFTER=$(sha256sum <"$D/disk17.img" | cut -d' ' -f1)
mkdir -p "$WORK/out"
tar -xf "$D/disk19.img" -C "$WORK/out"
if [ -n "${TESSERA_E2E_KEEP:-}" ]; then
  rm -rf "$TESSERA_E2E_KEEP"
  cp -a "$WORK/out" "$TESSERA_E2E_KEEP"
  cp "$WORK/vm.log" "$TESSERA_E2E_KEEP/"
fi

FAILS=0
check() { # check DESCRIPTION cmd...
  local d=$1
  shift
  if "$@"; then echo "  ok   $d"; else echo "  FAIL $d"; FAILS=$((FAILS + 1)); fi
}
rc_not() { [ "$(cat "$WORK/out/$1.rc" 2>/dev/null)" != "$2" ]; }
rc_is() { [ "$(cat "$WORK/out/$1.rc" 2>/dev/null)" = "$2" ] || { echo "    $1: exit $(cat "$WORK/out/$1.rc" 2>/dev/null), wanted $2"; tail -5 "$WORK/out/$1.err" 2>/dev/null; return 1; }; }
# py NAME EXPR: EXPR over the status report d of NAME.json (cond(t) is its condition t)
py() {
  python3 - "$WORK/out/$1.json" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
def cond(t):
    return next((c for c in d.get("conditions", []) if c["type"] == t), {})
ok = eval(sys.argv[2])
if not ok:
    print("    report:", json.dumps({k: d.get(k) for k in ("health", "operation", "conditions")})[:600])
sys.exit(0 if ok else 1)
PY
}

echo "--- results"
for b in md lvm zfs; do
  check "$b: first apply runs its plan (exit 0)" rc_is "$b-1" 0
  check "$b: first apply had steps" py "$b-1" 'len(d["plan"]["steps"]) > 0 and cond("Applied")["status"] == "True"'
  check "$b: second apply: exit 0, no actions" rc_is "$b-2" 0
  check "$b: second apply: status says no actions" py "$b-2" 'd["plan"]["steps"] == [] and cond("Applied")["message"].startswith("no actions")'
  check "$b: healthy after apply (Degraded=False)" py "$b-2" 'cond("Degraded")["status"] == "False"'
done
check "lvm: raid6 and raid5 LVs exist with their stripes" python3 -c "
import json; lv={l['lv_name']: l for l in json.load(open('$WORK/out/fx-lvm-lvs.out'))['report'][0]['lv']}
assert lv['r6']['segtype']=='raid6' and lv['r6']['data_stripes']=='4', lv
assert lv['r5']['segtype']=='raid5' and lv['r5']['data_stripes']=='3', lv"
check "zfs: two mirrors + special + log + cache in zpool status" python3 -c "
t=open('$WORK/out/fx-zpool-status.out').read()
assert all(s in t for s in ('mirror-0','mirror-1','special','logs','cache','/dev/vdq3')), t"
check "zfs: dataset properties (recordsize 1M, atime off, special_small_blocks 32K)" grep -qxP 'recordsize\t1048576' "$WORK/out/fx-zfs-get-inference.out"
check "zfs: zvol 32 MiB, volblocksize 16K" grep -qxP 'volsize\t33554432' "$WORK/out/fx-zfs-get-zvol.out"
check "zfs: NFS export made by the agent (exportfs -s lists /llm/inference for 10.20.0.0/24)" grep -q '^/llm/inference.*10.20.0.0/24(.*rw.*root_squash' "$WORK/out/fx-exportfs-s.out"
check "zfs: iSCSI export made by the agent with targetcli (backstore, target, LUN, ACL, saveconfig)" \
  py zfs-1 '(lambda c: ["targetcli", "/iscsi", "create", "iqn.2026-01.dev.tessera:llm-vm"] in c and ["targetcli", "saveconfig"] in c)([s["command"] for s in d["plan"]["steps"]])'
check "zfs: exports reported applied (Exported=True)" py zfs-2 'cond("Exported")["status"] == "True"'
check "zfs: targetcli ls shows the LUN on the zvol and the ACL" python3 -c "
t=open('$WORK/out/fx-targetcli-ls.out').read()
assert 'iqn.2026-01.dev.tessera:llm-vm' in t and '/dev/zvol/llm/vm/iscsi0' in t and 'iqn.2026-01.lab.example:hypervisor-01' in t, t"
check "iscsi: an initiator outside the ACL cannot log in (Authorization failure)" \
  sh -c "[ \"\$(cat '$WORK/out/iscsi-intruder.rc')\" != 0 ] && grep -q 'Authorization failure' '$WORK/out/iscsi-intruder.err'"
check "iscsi: the allowed initiator sees a 32 MiB LUN" grep -q '33554432' "$WORK/out/iscsi-readcap.out"
check "zfs: arcMax 256Mi written to zfs_arc_max by the first apply, not by the second" \
  sh -c "grep -qx 268435456 '$WORK/out/zfs-arc-max.out' && grep -q zfs_arc_max '$WORK/out/zfs-1.json'"
check "zfs: three scheduled snapshots with keep 2: exit 0 each, the third destroys the first" \
  py zfs-snap-3 '(lambda c: [x[:2] for x in c] == [["zfs", "snapshot"], ["zfs", "destroy"]] and "@tessera-" in c[1][2])([s["command"] for s in d["extraSteps"]])'
for n in 1 2 3; do check "zfs: snapshot apply $n exit 0" rc_is "zfs-snap-$n" 0; done
check "zfs: llm/inference keeps @manual and the two newest tessera- snapshots" python3 -c "
n=open('$WORK/out/zfs-snapshots.out').read().split()
assert n[0] == 'llm/inference@manual' and len(n) == 3 and all('@tessera-' in x for x in n[1:]), n
s2=[x['command'][2] for x in __import__('json').load(open('$WORK/out/zfs-snap-2.json'))['extraSteps']]
s3=[x['command'][2] for x in __import__('json').load(open('$WORK/out/zfs-snap-3.json'))['extraSteps']]
assert n[1:] == [s2[0], s3[0]], (n, s2, s3)"
check "nfs: a client in 10.20.0.0/24 mounts the export (NFSv4.2) and reads the dataset's bytes" \
  sh -c "[ \"\$(cat '$WORK/out/nfs-mount.rc')\" = 0 ] && grep -qx same '$WORK/out/nfs-read.out'"
check "nfs: root is squashed (root_squash): a write as root is refused" rc_not nfs-write-squashed 0
check "nfs: a client outside 10.20.0.0/24 (127.0.0.1) is refused (access denied)" \
  sh -c "[ \"\$(cat '$WORK/out/nfs-mount-outsider.rc')\" != 0 ] && grep -qi 'access denied' '$WORK/out/nfs-mount-outsider.err'"
check "iscsi: kernel initiator logs in (open-iscsi)" rc_is iscsi-login 0
check "iscsi: bytes read over iSCSI equal the zvol's (4 MiB)" grep -qx same "$WORK/out/iscsi-read.out"
check "iscsi: bytes written over iSCSI land on the zvol (2 MiB at 8 MiB)" grep -qx same "$WORK/out/iscsi-write.out"
check "iscsi: logout" rc_is iscsi-logout 0
for b in md lvm zfs; do
  check "$b on the ext4 disk: refused (exit 3)" rc_is "refuse-$b" 3
  check "$b on the ext4 disk: DeviceHasSignature, nothing planned" py "refuse-$b" 'cond("Applied")["reason"] == "DeviceHasSignature" and d["plan"]["steps"] == []'
done
check "ext4 disk bytes unchanged (sha256 ${SUM_BEFORE:0:16}... before and after)" test "$SUM_BEFORE" = "$SUM_AFTER"
check "zfs: --scrub-now started a scrub" py zfs-scrub 'any(s["command"][:2] == ["zpool", "scrub"] for s in d.get("extraSteps", []))'
check "zfs: scrub in status.operation" py zfs-scrub '(d.get("operation") or {}).get("kind") == "scrub"'
check "md: mdadm --fail -> Degraded=True" py md-degraded 'cond("Degraded")["status"] == "True" and d["health"] == "degraded"'
check "zfs: zpool offline -> Degraded=True, health DEGRADED" py zfs-degraded 'cond("Degraded")["status"] == "True" and d["health"] == "DEGRADED"'
check "zfs: the offline member is reported OFFLINE" py zfs-degraded 'any(m["device"] == "/dev/vdn1" and m["state"] == "OFFLINE" for m in d["members"])'
check "md: the failed member is reported faulty" py md-degraded 'any(m["device"] == "/dev/vdb" and m["state"] == "faulty" for m in d["members"])'
check "lvm: a failed raid6 leg (dm error target) -> Degraded=True" py lvm-degraded 'cond("Degraded")["status"] == "True"'
check "verify: the RAID6 array after its resync is consistent (exit 0, 0 mismatches, engine backend named)" \
  py verify-clean 'd["mismatches"] == 0 and d["stripes"] > 0 and d["backend"] and d["gbPerSecond"] > 0 and d["code"] == "raid6 4+2"'
check "verify: exit 0" rc_is verify-clean 0
check "verify: the array is read-write again afterwards" grep -qvx 'read-only\|readonly' "$WORK/out/verify-array-state.out"
check "verify: 4 KiB overwritten on /dev/vdd -> exit 1, inconsistent page found, /dev/vdd blamed" \
  py verify-corrupt 'd["mismatches"] >= 1 and d["blamed"] == ["/dev/vdd"]'
check "verify: corrupt exit 1" rc_is verify-corrupt 1
check "repair: exactly one page rewritten, on /dev/vdd, consistent afterwards (exit 0)" \
  py verify-repair 'len(d["repaired"]) == 1 and d["repaired"][0].startswith("/dev/vdd@") and d["mismatchesAfterRepair"] == 0 and d["unrepairable"] == 0'
check "repair: exit 0" rc_is verify-repair 0
check "repair: the page on /dev/vdd holds the bytes it had before the corruption" grep -qx same "$WORK/out/verify-repair-page.out"
check "repair: a fresh verify finds the array consistent" py verify-after-repair 'd["mismatches"] == 0'
check "lvm verify: raid6 4+2 and raid5 3+1 LVs consistent after their sync (exit 0)" \
  python3 -c "
import json; v=json.load(open('$WORK/out/verify-lvm-clean.json'))
assert [(o['array'], o['code'], o['mismatches']) for o in v] == [('tvg/r6', 'raid6 4+2', 0), ('tvg/r5', 'raid5 3+1', 0)], v
assert all(o['stripes'] > 0 and o['gbPerSecond'] > 0 for o in v), v"
check "lvm verify: exit 0" rc_is verify-lvm-clean 0
check "lvm repair: the page overwritten on r6's rimage_2 is found, blamed on that leg, rewritten; r6 consistent after" \
  python3 -c "
import json; v=json.load(open('$WORK/out/verify-lvm-repair.json'))
r6=v[0]
assert r6['mismatches'] == 1 and r6['blamed'] == ['/dev/mapper/tvg-r6_rimage_2'], r6
assert len(r6['repaired']) == 1 and r6['repaired'][0].startswith('/dev/mapper/tvg-r6_rimage_2@') and r6['mismatchesAfterRepair'] == 0, r6
assert v[1]['mismatches'] == 0, v[1]"
check "lvm repair: exit 0" rc_is verify-lvm-repair 0
check "lvm repair: the leg's page holds its bytes from before" grep -qx same "$WORK/out/verify-lvm-repair-page.out"
check "lvm verify: r6 is writeable again afterwards (lv_attr w)" grep -q '^ *rw' "$WORK/out/verify-lvm-attr.out"
check "destroy: a Retain manifest is refused (exit 3), the array stays" rc_is destroy-retain-md 3
check "destroy: ... and mdadm still sees /dev/md/data" rc_is destroy-retain-md-still-there 0
for b in md lvm zfs; do
  check "$b: destroy (deletionPolicy Destroy) exit 0, Destroyed=True, every storage step destructive with its device" \
    py "destroy-$b" 'cond("Destroyed")["status"] == "True" and cond("Destroyed")["reason"] == "Destroyed" and d["plan"]["steps"] and all(s["destructive"] and s["device"] for s in d["plan"]["steps"] if s["command"][0] not in ("exportfs", "targetcli"))'
  check "$b: destroy exit 0" rc_is "destroy-$b" 0
done
check "md: destroy stopped the array and zeroed all six superblocks (the failed member too)" \
  py destroy-md '[s["command"][1] for s in d["plan"]["steps"]] == ["--stop"] + ["--zero-superblock"] * 6'
check "zfs: destroy un-exported NFS first, then zpool destroy, then labelclear of all 7 leaves" \
  py destroy-zfs '(lambda c: c[0][:2] == ["exportfs", "-u"] and ["zpool", "destroy", "llm"] in c[1:] and sum(x[:2] == ["zpool", "labelclear"] for x in c[c.index(["zpool", "destroy", "llm"]):]) == 7)([s["command"] for s in d["plan"]["steps"]])'
check "md / zfs: a second destroy finds nothing (Destroyed=True, NotPresent)" \
  py destroy-md-again 'cond("Destroyed")["reason"] == "NotPresent" and not d["plan"]["steps"]'
check "zfs: second destroy NotPresent" py destroy-zfs-again 'cond("Destroyed")["reason"] == "NotPresent"'
check "md: /dev/md/data is gone after destroy (mdadm --detail fails)" rc_not after-destroy-md-detail 0
check "lvm: vgs tvg fails after destroy" rc_not after-destroy-lvm-vgs 0
check "zfs: zpool list llm fails after destroy" rc_not after-destroy-zpool-list 0
check "zfs: destroy removed the iSCSI target and backstore (targetcli ls)" python3 -c "
t=open('$WORK/out/after-destroy-targetcli.out').read()
assert 'llm-vm' not in t and 'iscsi0' not in t and 'Targets: 0' in t, t"
check "no signature left on any member of the three pools (wipefs -n: exit 0, prints nothing)" \
  sh -c "[ \"\$(cat '$WORK/out/after-destroy-signatures.rc')\" = 0 ] && [ -f '$WORK/out/after-destroy-signatures.out' ] && [ ! -s '$WORK/out/after-destroy-signatures.out' ]"
check "md: the Retain manifest applies again on the destroyed members without devicePolicy: Wipe" \
  py md-recreate 'cond("Applied")["status"] == "True" and len(d["plan"]["steps"]) == 1'
check "inventory in the guest: exit 0, ext4 on /dev/vdr" python3 -c "
import json; inv=json.load(open('$WORK/out/inventory.out'))
assert any(b['path']=='/dev/vdr' and any(s.startswith('ext4') for s in b.get('signatures',[])) for b in inv['blockDevices']), inv"

if [ -n "${TESSERA_CAPTURE_FIXTURES:-}" ]; then
  for f in "$WORK"/out/fx-*.out; do
    n=$(basename "$f" .out)
    n=${n#fx-}
    case $n in lvm-*) ext=json ;; *) ext=txt ;; esac
    # The scrub of the small pool may be over before zpool status looks: keep the old capture then.
    if [ "$n" = zpool-status-scrub ] && ! grep -q 'scrub in progress' "$f"; then
      echo "  (scrub already finished when captured: $n kept)"
      continue
    fi
    cp "$f" "$FX/$n.$ext"
  done
  echo "fixtures captured into $FX"
fi
printf '==> e2e-storage: %d failure(s), %.0f s in all\n' "$FAILS" "$(echo "$(date +%s.%N) - $T0" | bc)"
[ "$FAILS" = 0 ]
