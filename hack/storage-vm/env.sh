# shellcheck shell=bash disable=SC2034
# Shared settings of the storage VM (sourced). A Debian bookworm kernel, qemu 7.2, busybox, mdadm and
# lvm2 are unpacked from their .debs (apt-get download + dpkg -x, nothing installed on the host) into
# a cache that every lane reuses: md/LVM tests here, ZFS tests of the node agent later.
SVM_KVER=${SVM_KVER:-6.1.0-56-amd64}
SVM_CACHE=${SVM_CACHE:-$HOME/.cache/tessera/storage-vm-$SVM_KVER}
SVM_ROOT=$SVM_CACHE/root
SVM_INITRD=${SVM_INITRD:-$SVM_CACHE/initramfs.cpio.gz}
SVM_KERNEL=$SVM_ROOT/boot/vmlinuz-$SVM_KVER
SVM_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Runs a step and prints its wall time: `svm_step NAME cmd args...`.
svm_step() {
  local name=$1 t0 rc
  shift
  t0=$(date +%s.%N)
  echo "==> $name"
  set +e
  (set -e; "$@")
  rc=$?
  set -e
  printf '<== %s: %.1f s (rc=%d)\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" "$rc"
  return "$rc"
}

# kmod dispatches on its name: depmod/modprobe/modinfo are symlinks to it in $SVM_CACHE/tools.
SVM_TOOLS=$SVM_CACHE/tools

# Library path of the unpacked userland (qemu, kmod, cpio run from the cache).
svm_ldpath() {
  echo "$SVM_ROOT/usr/lib/x86_64-linux-gnu:$SVM_ROOT/lib/x86_64-linux-gnu"
}
