# shellcheck shell=bash disable=SC2034
# Shared settings of the Xen lane (sourced by build-guest-image.sh and e2e-xen.sh).
# Debian's Xen 4.17 hypervisor + toolstack, the 6.1 kernel (dom0 and domU), qemu 7.2, busybox,
# e2fsprogs and kmod are downloaded (apt-get download) and unpacked (dpkg -x) into XEN_CACHE/root;
# nothing is installed on the host. A complete cache is detected by a marker and left alone.
XEN_KVER=${XEN_KVER:-6.1.0-56-amd64}
XEN_CACHE=${XEN_CACHE:-$HOME/.cache/tessera/xen-lab-4.17-$XEN_KVER}
XEN_ROOT=$XEN_CACHE/root
XEN_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
XEN_REPO=$(cd "$XEN_HERE/../.." && pwd)

XEN_PKGS="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils libxenmisc4.17
 libxenstore4 libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
 libxenhypfs1 libxentoolcore1 libxentoollog1 libyajl2
 linux-image-$XEN_KVER busybox-static e2fsprogs libext2fs2 libcom-err2 kmod libkmod2
 qemu-system-x86 qemu-system-common qemu-system-data seabios libcapstone4 libdaxctl1 libepoxy0
 libexecs0 libfdt1 libibverbs1 libnl-3-200 libnl-route-3-200 libndctl6 libpmem1 librdmacm1 libslirp0
 libvdeplug2 libbrlapi0.8 libcacard0 liborc-0.4-0 libgstreamer-plugins-base1.0-0 libopus0 libsndio7.0
 libspice-server1 libusb-1.0-0 libusbredirparser1"

# Runs a step and prints its wall time: `xen_step NAME cmd args...`.
xen_step() {
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

# Library path of the unpacked userland (qemu, xl, mke2fs, kmod run from or are copied out of the cache).
xen_ldpath() {
  echo "$XEN_ROOT/usr/lib/x86_64-linux-gnu:$XEN_ROOT/lib/x86_64-linux-gnu"
}

# Module paths (dependencies first) for the given module names, from the unpacked kernel.
xen_mod_closure() {
  local m
  for m in "$@"; do
    LD_LIBRARY_PATH=$(xen_ldpath) "$XEN_CACHE/tools/modprobe" -d "$XEN_ROOT" -S "$XEN_KVER" --show-depends "$m" |
      awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++'
}

# Copies binaries and their shared-library closure (resolved against the unpacked root first) into DEST.
# usage: xen_copy_bins DEST DIR_IN_DEST BIN...
xen_copy_bins() {
  local dest=$1 dir=$2 b lib
  shift 2
  mkdir -p "$dest/$dir" "$dest/lib/x86_64-linux-gnu" "$dest/lib64"
  for b in "$@"; do cp -L "$b" "$dest/$dir/"; done
  # Static binaries (crictl) have no closure: ldd says so and fails.
  for b in "$@"; do LD_LIBRARY_PATH=$(xen_ldpath) ldd "$b" 2> /dev/null || true; done |
    awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | sort -u | while read -r lib; do
      case $lib in
        /lib64/*) cp -L "$lib" "$dest/lib64/" ;;
        *) cp -L "$lib" "$dest/lib/x86_64-linux-gnu/" ;;
      esac
    done
  [ -e "$dest/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$dest/lib64/"
}

xen_fetch() {
  mkdir -p "$XEN_CACHE/debs" "$XEN_ROOT" "$XEN_CACHE/tools"
  if ! apt-cache show "xen-hypervisor-4.17-amd64" "linux-image-$XEN_KVER" >/dev/null 2>&1; then
    echo "apt lists lack xen-hypervisor-4.17-amd64 or linux-image-$XEN_KVER; running apt-get update"
    apt-get update -q
  fi
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  (
    cd "$XEN_CACHE/debs"
    apt-get download -q $XEN_PKGS 2>&1 | { grep -v 'Download is performed unsandboxed' || true; }
  )
  local f
  for f in "$XEN_CACHE"/debs/*.deb; do dpkg -x "$f" "$XEN_ROOT"; done
  [ -f "$XEN_ROOT/boot/vmlinuz-$XEN_KVER" ] || { echo "kernel missing after unpack" >&2; return 1; }
  [ -f "$XEN_ROOT/boot/xen-4.17-amd64.gz" ] || { echo "xen hypervisor missing after unpack" >&2; return 1; }
  for f in depmod modprobe modinfo; do ln -sf "$XEN_ROOT/bin/kmod" "$XEN_CACHE/tools/$f"; done
  LD_LIBRARY_PATH=$(xen_ldpath) "$XEN_CACHE/tools/depmod" -b "$XEN_ROOT" "$XEN_KVER"
  # Uncompressed ELF kernel: Xen builds dom0 from it in ~3.5 s instead of ~13 s under TCG (the
  # Debian bzImage is xz); the domU gets it gzip'd (libxl inflates gzip itself).
  local off
  off=$(grep -abo $'\xfd\x37\x7a\x58\x5a\x00' "$XEN_ROOT/boot/vmlinuz-$XEN_KVER" | head -1 | cut -d: -f1)
  tail -c +$((off + 1)) "$XEN_ROOT/boot/vmlinuz-$XEN_KVER" | { xz -dc 2>/dev/null || true; } > "$XEN_CACHE/vmlinux"
  [ "$(head -c 4 "$XEN_CACHE/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] ||
    { echo "vmlinux extraction failed" >&2; return 1; }
  gzip -1 -c "$XEN_CACHE/vmlinux" > "$XEN_CACHE/vmlinux.gz"
  zcat "$XEN_ROOT/boot/xen-4.17-amd64.gz" > "$XEN_CACHE/xen"
  touch "$XEN_CACHE/.root-complete"
}

# Idempotent: fetch + unpack once.
xen_setup() {
  if [ -f "$XEN_CACHE/.root-complete" ]; then
    echo "xen-lab: root cached in $XEN_ROOT"
  else
    xen_step "xen-lab: download + unpack Xen 4.17, $XEN_KVER, qemu 7.2, busybox, e2fsprogs" xen_fetch
  fi
}
