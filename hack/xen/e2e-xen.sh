#!/usr/bin/env bash
# `make e2e-xen`: boots Debian's Xen 4.17 with a Debian 6.1 dom0 under qemu TCG and runs a test
# script in dom0 that creates real PV domains with `xl` (the guest image of
# build-guest-image.sh, whose /init is tessera-guest-agent).
# Stages (each timed): fetch/unpack (cached) -> guest image (cached by input hash) -> shim +
# busybox OCI layout -> dom0 initramfs -> boot + test -> verdict. Exits 0 only when the test
# printed its PASS marker.
# The default test (hack/xen/tests/lane.sh) runs two parts in one boot: `agent` (the guest
# protocol driven by hand with xl/xenstore) and `shim` (tessera-shim serving CRI in dom0, driven
# by crictl). hack/xen/tests/ is copied to dom0's /usr/share/tessera/tests/.
# Env:
#   XEN_DOM0_TEST   dom0 test script (busybox sh; default hack/xen/tests/lane.sh), run as
#                   /usr/share/tessera/test.sh; it must print "TESSERA-XEN-TEST: PASS".
#   XEN_PARTS       parts lane.sh runs (default "agent shim").
#   XEN_DOM0_BINS   extra binaries (space-separated paths) put in dom0's /usr/local/bin with their
#                   shared libraries (tessera-shim and crictl always are).
#   XEN_DOM0_FILES  extra files/dirs copied to /usr/share/tessera/files/ in dom0 (the busybox
#                   OCI layout always is, as busybox-oci/).
#   XEN_TIMEOUT     seconds before qemu is killed (default 900).
#   XEN_LOGS        log directory (default ~/.cache/tessera/xen-lab-4.17-<kver>/logs/<time>).
#   XEN_SMP, XEN_MEM, XEN_DOM0_MEM  qemu vCPUs (2), qemu memory MiB (2048), dom0 memory (768M).
set -euo pipefail
# shellcheck source=hack/xen/lib.sh
. "$(dirname "$0")/lib.sh"
T0=$(date +%s.%N)
TEST=${XEN_DOM0_TEST:-$XEN_HERE/tests/lane.sh}
LOGS=${XEN_LOGS:-$XEN_CACHE/logs/$(date +%Y%m%d-%H%M%S)}
TIMEOUT=${XEN_TIMEOUT:-900}
PASS_MARKER="TESSERA-XEN-TEST: PASS"
mkdir -p "$LOGS"
[ -f "$TEST" ] || { echo "XEN_DOM0_TEST $TEST not found" >&2; exit 2; }

xen_setup
GUEST_DIR=$("$XEN_HERE/build-guest-image.sh" | tee "$LOGS/guest-image.log" | tail -1)
grep -E '^(==>|<==|xen-guest:)' "$LOGS/guest-image.log" || true
[ -f "$GUEST_DIR/initramfs.cpio.gz" ] || { echo "guest image build failed (see $LOGS/guest-image.log)" >&2; exit 1; }

# tessera-shim for dom0 (release: the debug build is ~10x larger in the initramfs) and crictl.
TD=${CARGO_TARGET_DIR:-$XEN_REPO/target}
xen_step "build tessera-shim (release)" \
  bash -c "cd '$XEN_REPO' && CARGO_TARGET_DIR='$TD' cargo build -q --release -p tessera-shim"
SHIM_BIN=$TD/release/tessera-shim
CRICTL_BIN=$(command -v crictl || true)
[ -x "$CRICTL_BIN" ] || { echo "crictl not found (make deps builds it into ~/.cache/tessera/bin)" >&2; exit 2; }

# The container image of the shim part: busybox-static as an OCI layout (umoci), tagged 1.36,
# loaded in dom0 with `tessera-shim image load` (dom0 has no network, hence no registry).
BUSYBOX_OCI=$XEN_CACHE/busybox-oci-$(sha256sum "$XEN_ROOT/bin/busybox" | cut -c1-12)-v1
busybox_layout() {
  local w=$BUSYBOX_OCI.tmp a
  rm -rf "$w" && mkdir -p "$w"
  (
    cd "$w"
    umoci init --layout oci
    umoci new --image oci:1.36
    umoci unpack --rootless --image oci:1.36 b > /dev/null
    mkdir -p b/rootfs/bin b/rootfs/etc b/rootfs/tmp b/rootfs/root
    cp "$XEN_ROOT/bin/busybox" b/rootfs/bin/busybox
    for a in $("$XEN_ROOT/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "b/rootfs/bin/$a"; done
    printf 'root:x:0:0:root:/root:/bin/sh\n' > b/rootfs/etc/passwd
    printf 'root:x:0:\n' > b/rootfs/etc/group
    umoci repack --image oci:1.36 b > /dev/null
    rm -rf b
    umoci config --image oci:1.36 --config.env PATH=/bin --config.cmd sh > /dev/null
    umoci gc --layout oci
  )
  mv "$w/oci" "$BUSYBOX_OCI" && rm -rf "$w"
}
if [ -d "$BUSYBOX_OCI" ]; then
  echo "busybox OCI layout cached: $BUSYBOX_OCI"
else
  xen_step "busybox OCI layout (umoci)" busybox_layout
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/e2e-xen.XXXX")
QPID=
cleanup() {
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then kill "$QPID" 2>/dev/null || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dom0_initramfs() {
  local d=$W/dom0 b
  mkdir -p "$d"/{bin,sbin,dev,proc,sys,run,tmp,root,etc/xen/scripts,etc/tessera,var/lib/xen,var/log/xen,lib/modules,usr/sbin,usr/local/bin,usr/share/tessera/guest,usr/share/tessera/files}
  ln -s ../run "$d/var/run"
  cp "$XEN_ROOT/bin/busybox" "$d/bin/busybox"
  for b in $("$XEN_ROOT/bin/busybox" --list); do
    [ -e "$d/bin/$b" ] || ln -s busybox "$d/bin/$b"
  done
  # Toolstack from the unpacked xen-utils-4.17 / xenstore-utils (paths as Debian installs them).
  local xb=$XEN_ROOT/usr/lib/xen-4.17/bin
  xen_copy_bins "$d" usr/lib/xen-4.17/bin "$xb/xl" "$xb/xenstored" "$xb/xenconsoled" "$xb/xenconsole" \
    "$xb/xen-init-dom0" "$xb/xenstore-control" "$xb/libxl-save-helper"
  ln -s ../lib/xen-4.17/bin/xl "$d/usr/sbin/xl"
  xen_copy_bins "$d" usr/bin "$XEN_ROOT/usr/bin/xenstore"
  for b in read write ls list rm exists watch chmod; do ln -s xenstore "$d/usr/bin/xenstore-$b"; done
  # xl aborts at exit without it (pthread_cancel)
  cp -L /lib/x86_64-linux-gnu/libgcc_s.so.1 "$d/lib/x86_64-linux-gnu/"
  cp "$XEN_ROOT/etc/xen/xl.conf" "$d/etc/xen/"
  cp "$XEN_HERE/block" "$d/etc/xen/scripts/block"
  # mke2fs (-d DIR) for the container rootfs images. busybox sh runs its own applets first, so
  # scripts call it by path (TESSERA_MKE2FS=/sbin/mke2fs).
  rm -f "$d/bin/mke2fs"
  xen_copy_bins "$d" sbin "$XEN_ROOT/sbin/mke2fs"
  ln -s mke2fs "$d/sbin/mkfs.ext4"
  cp "$XEN_ROOT/etc/mke2fs.conf" "$d/etc/"
  # Modules: the toolstack's, blkback for the guests' disks, loop for file-backed disks.
  local ko rel
  : > "$d/lib/modules/load.list"
  while read -r ko; do
    rel=${ko#"$XEN_ROOT/"}
    mkdir -p "$d/$(dirname "$rel")"
    cp "$ko" "$d/$rel"
    echo "/$rel" >> "$d/lib/modules/load.list"
  done < <(xen_mod_closure xen-privcmd xenfs xen-evtchn xen-gntdev xen-gntalloc xen-blkback loop)
  cp "$GUEST_DIR/vmlinux.gz" "$GUEST_DIR/initramfs.cpio.gz" "$d/usr/share/tessera/guest/"
  # The shim part's binaries and image, then the payload of other lanes.
  # shellcheck disable=SC2086 # a space-separated list of paths
  xen_copy_bins "$d" usr/local/bin "$SHIM_BIN" "$CRICTL_BIN" ${XEN_DOM0_BINS:-}
  strip "$d/usr/local/bin/tessera-shim" 2> /dev/null || true
  cp -r "$BUSYBOX_OCI" "$d/usr/share/tessera/files/busybox-oci"
  # shellcheck disable=SC2086
  [ -z "${XEN_DOM0_FILES:-}" ] || cp -r $XEN_DOM0_FILES "$d/usr/share/tessera/files/"
  cp -r "$XEN_HERE/tests" "$d/usr/share/tessera/tests"
  cp "$TEST" "$d/usr/share/tessera/test.sh"
  cat > "$d/etc/tessera/dom0.env" <<ENV
# The Xen lane's dom0 layout (sourced by /init and the test script).
TESSERA_GUEST_KERNEL=/usr/share/tessera/guest/vmlinux.gz
TESSERA_GUEST_INITRD=/usr/share/tessera/guest/initramfs.cpio.gz
TESSERA_XL=/usr/lib/xen-4.17/bin/xl
TESSERA_MKE2FS=/sbin/mke2fs
TESSERA_FILES=/usr/share/tessera/files
TESSERA_KVER=$XEN_KVER
TESSERA_XEN_PARTS="${XEN_PARTS:-agent shim}"
ENV
  cp "$XEN_HERE/dom0-init.sh" "$d/init"
  chmod +x "$d/init" "$d/usr/share/tessera/test.sh" "$d/etc/xen/scripts/block"
  (cd "$d" && find . | "$XEN_ROOT/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -1 > "$W/dom0.cpio.gz"
  rm -rf "$d"
  ls -la "$W/dom0.cpio.gz"
}
xen_step "dom0 initramfs (toolstack, mke2fs, blkback/loop, guest image, test $(basename "$TEST"))" dom0_initramfs

LOG=$LOGS/serial.log
boot() {
  local xenargs="console=com1 com1=115200,8n1 dom0_mem=${XEN_DOM0_MEM:-768M},max:${XEN_DOM0_MEM:-768M} dom0_max_vcpus=1 loglvl=all guest_loglvl=all noreboot"
  local start el
  start=$(date +%s)
  # The ELF vmlinux as dom0 kernel (Xen builds dom0 ~4x faster from it than from the bzImage).
  LD_LIBRARY_PATH=$(xen_ldpath) "$XEN_ROOT/usr/bin/qemu-system-x86_64" -L "$XEN_ROOT/usr/share/qemu" \
    -L "$XEN_ROOT/usr/share/seabios" -accel tcg,thread=multi -M pc -cpu qemu64 -smp "${XEN_SMP:-2}" \
    -m "${XEN_MEM:-2048}" -nic none -display none -monitor none -serial stdio -no-reboot \
    -pidfile "$W/qemu.pid" -kernel "$XEN_CACHE/xen" -append "$xenargs" \
    -initrd "$XEN_CACHE/vmlinux console=hvc0 earlyprintk=xen rdinit=/init quiet,$W/dom0.cpio.gz" \
    < /dev/null 2>&1 | perl -MTime::HiRes=time -ne 'BEGIN{$|=1;$t0=time} printf "[%8.2f] %s", time-$t0, $_' > "$LOG" &
  local i=0
  while [ ! -s "$W/qemu.pid" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
  QPID=$(cat "$W/qemu.pid" 2>/dev/null || true)
  [ -n "$QPID" ] || { echo "qemu did not start" >&2; cat "$LOG" >&2; return 1; }
  echo "qemu pid $QPID, serial log $LOG"
  while :; do
    el=$(($(date +%s) - start))
    if grep -qE 'XENLAB-FINISHED|Panic on CPU|Kernel panic|Reboot in five seconds' "$LOG"; then
      sleep 2
      echo "end marker after ${el}s"
      break
    fi
    if ! kill -0 "$QPID" 2>/dev/null; then echo "qemu exited after ${el}s"; break; fi
    if [ "$el" -ge "$TIMEOUT" ]; then echo "timeout after ${TIMEOUT}s: killing qemu $QPID"; break; fi
    sleep 2
  done
  if kill -0 "$QPID" 2>/dev/null; then kill "$QPID" || true; fi
  wait || true
  QPID=
}
xen_step "boot Xen 4.17 + dom0 under qemu TCG, run $(basename "$TEST") in dom0" boot

echo "--- serial log highlights ($LOG)"
grep -E '=== STAGE|=== |TEST |TIMING|TESSERA-XEN-|XEN-DOM0-TEST|Panic|panic|tessera-guest-agent|container|exec done|xl create' "$LOG" |
  grep -v 'guest_loglvl' | head -150 || true
printf '=== e2e-xen total: %.1f s\n' "$(echo "$(date +%s.%N) - $T0" | bc)"
if grep -q "$PASS_MARKER" "$LOG"; then
  echo "e2e-xen: PASS (logs in $LOGS)"
else
  echo "e2e-xen: FAIL (no '$PASS_MARKER'; logs in $LOGS)"
  exit 1
fi
