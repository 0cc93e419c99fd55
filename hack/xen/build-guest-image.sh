#!/usr/bin/env bash
# Builds the tessera-xen guest image: Debian's 6.1 kernel (ELF vmlinux extracted from the xz
# bzImage, gzip'd: libxl inflates gzip itself and the PV loader is fast with it) and an
# initramfs whose /init is tessera-guest-agent, with busybox-static, the agent's shared
# libraries, the block/ext4 modules (+ /lib/modules/load.list, dependencies first) and the
# stand-in libcuda.so.1 at /usr/lib/tessera/libcuda.so.1.
# Output: $XEN_GUEST_DIR = ~/.cache/tessera/xen-guest-<kver>-<hash of inputs>/{vmlinux.gz,initramfs.cpio.gz};
# the directory is printed on the last line. Reused when the inputs are unchanged.
# Env: TESSERA_GUEST_AGENT_BIN and TESSERA_LIBCUDA_SO (else built here with cargo --release).
set -euo pipefail
# shellcheck source=hack/xen/lib.sh
. "$(dirname "$0")/lib.sh"
xen_setup

if [ -z "${TESSERA_GUEST_AGENT_BIN:-}" ] || [ -z "${TESSERA_LIBCUDA_SO:-}" ]; then
  TD=${CARGO_TARGET_DIR:-$XEN_REPO/target}
  xen_step "build tessera-guest-agent (release)" \
    bash -c "cd '$XEN_REPO' && CARGO_TARGET_DIR='$TD' cargo build -q --release -p tessera-guest-agent"
  TESSERA_GUEST_AGENT_BIN=$TD/release/tessera-guest-agent
  TESSERA_LIBCUDA_SO=$TD/release/libtessera_guest_agent.so
fi
GUEST_MODS=(xen-blkfront crc32c_generic ext4)

KEY=$( (sha256sum "$TESSERA_GUEST_AGENT_BIN" "$TESSERA_LIBCUDA_SO" "$0" "$XEN_HERE/lib.sh" | cut -d' ' -f1
  echo "${GUEST_MODS[*]} $XEN_KVER"; ls "$XEN_CACHE/debs") | sha256sum | cut -c1-16)
XEN_GUEST_DIR=$HOME/.cache/tessera/xen-guest-$XEN_KVER-$KEY

build() {
  local out=$XEN_GUEST_DIR.tmp w
  rm -rf "$out"
  mkdir -p "$out"
  w=$out/initramfs
  mkdir -p "$w"/{bin,sbin,proc,sys,dev,run,tmp,rootfs,usr/bin,usr/lib/tessera,lib/modules}
  cp "$XEN_ROOT/bin/busybox" "$w/bin/busybox"
  local a
  for a in sh ls cat mount umount dmesg ps mkdir echo sleep poweroff; do ln -sf busybox "$w/bin/$a"; done
  xen_copy_bins "$w" usr/bin "$TESSERA_GUEST_AGENT_BIN"
  ln -sf usr/bin/tessera-guest-agent "$w/init"
  cp "$TESSERA_LIBCUDA_SO" "$w/usr/lib/tessera/libcuda.so.1"
  # Debug info is most of the size (release keeps line tables); the guest does not need it.
  if command -v strip >/dev/null; then
    strip "$w/usr/bin/tessera-guest-agent"
    strip --strip-unneeded "$w/usr/lib/tessera/libcuda.so.1"
  fi
  xen_copy_bins "$w" usr/lib/tessera/.deps "$TESSERA_LIBCUDA_SO" # its libraries, not the copy itself
  rm -rf "$w/usr/lib/tessera/.deps"
  local ko rel
  xen_mod_closure "${GUEST_MODS[@]}" | while read -r ko; do
    rel=${ko#"$XEN_ROOT/"}
    mkdir -p "$w/$(dirname "$rel")"
    cp "$ko" "$w/$rel"
    echo "/$rel" >> "$w/lib/modules/load.list"
  done
  echo "guest modules:" && sed 's/^/  /' "$w/lib/modules/load.list"
  (cd "$w" && find . | LD_LIBRARY_PATH=$(xen_ldpath) "$XEN_ROOT/bin/busybox" cpio -o -H newc 2>/dev/null) |
    gzip -6 > "$out/initramfs.cpio.gz"
  cp "$XEN_CACHE/vmlinux.gz" "$out/vmlinux.gz"
  rm -rf "$w"
  rm -rf "$XEN_GUEST_DIR"
  mv "$out" "$XEN_GUEST_DIR"
  ls -la "$XEN_GUEST_DIR"
  # Keep the three newest images (each agent rebuild makes a new one).
  local old
  find "$HOME/.cache/tessera" -maxdepth 1 -name "xen-guest-$XEN_KVER-*" -printf '%T@ %p\n' | sort -rn |
    tail -n +4 | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
}

if [ -f "$XEN_GUEST_DIR/initramfs.cpio.gz" ]; then
  echo "xen-guest: cached in $XEN_GUEST_DIR"
else
  xen_step "xen-guest: kernel + initramfs" build
fi
echo "$XEN_GUEST_DIR"
