#!/usr/bin/env bash
# Idempotent: downloads (apt-get download) and unpacks (dpkg -x) the storage VM's kernel, qemu and
# userland into $SVM_CACHE/root, runs depmod there, and builds the base initramfs. Installs nothing
# on the host. A complete cache is detected by marker files and left alone.
# Extra packages for other lanes: SVM_EXTRA_DEBS="pkg ..." (unpacked into the same root).
set -euo pipefail
# shellcheck source=hack/storage-vm/env.sh
. "$(dirname "$0")/env.sh"

PKGS="linux-image-$SVM_KVER busybox-static mdadm lvm2 dmsetup libdevmapper1.02.1 libdevmapper-event1.02.1
 dmeventd liblvm2cmd2.03 libaio1 kmod libkmod2 cpio
 qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu libcapstone4 libdaxctl1 libepoxy0
 libexecs0 libfdt1 libibverbs1 libnl-3-200 libnl-route-3-200 libndctl6 libpmem1 librdmacm1 libslirp0
 libvdeplug2 libbrlapi0.8 libcacard0 liborc-0.4-0 libgstreamer-plugins-base1.0-0 libopus0 libsndio7.0
 libspice-server1 libusb-1.0-0 libusbredirparser1 ${SVM_EXTRA_DEBS:-}"

fetch() {
  mkdir -p "$SVM_CACHE/debs" "$SVM_ROOT"
  if ! apt-cache show "linux-image-$SVM_KVER" >/dev/null 2>&1; then
    echo "apt lists lack linux-image-$SVM_KVER; running apt-get update"
    apt-get update -q
  fi
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  (cd "$SVM_CACHE/debs" && apt-get download -q $PKGS 2>&1 | grep -v 'Download is performed unsandboxed' || true)
  for f in "$SVM_CACHE"/debs/*.deb; do dpkg -x "$f" "$SVM_ROOT"; done
  [ -f "$SVM_KERNEL" ] || { echo "kernel $SVM_KERNEL missing after unpack" >&2; exit 1; }
  mkdir -p "$SVM_TOOLS"
  for t in depmod modprobe modinfo; do ln -sf "$SVM_ROOT/bin/kmod" "$SVM_TOOLS/$t"; done
  LD_LIBRARY_PATH=$(svm_ldpath) "$SVM_TOOLS/depmod" -b "$SVM_ROOT" "$SVM_KVER"
  touch "$SVM_CACHE/.root-complete"
}

key="$PKGS $(cat "$SVM_HERE/mkinitramfs.sh" "$SVM_HERE/init" | sha256sum | cut -c1-16)"
if [ ! -f "$SVM_CACHE/.root-complete" ]; then
  svm_step "storage-vm: download + unpack $SVM_KVER, qemu, mdadm, lvm2" fetch
else
  echo "storage-vm: root cached in $SVM_ROOT"
fi
if [ ! -f "$SVM_INITRD" ] || [ "$(cat "$SVM_CACHE/.initrd-key" 2>/dev/null)" != "$key" ]; then
  svm_step "storage-vm: initramfs" "$SVM_HERE/mkinitramfs.sh"
  echo "$key" > "$SVM_CACHE/.initrd-key"
else
  echo "storage-vm: initramfs cached ($SVM_INITRD)"
fi
