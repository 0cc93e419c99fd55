#!/usr/bin/env bash
# Builds the storage VM's base initramfs from the unpacked root: busybox-static, kmod, mdadm, lvm2,
# dmsetup (+ the shared libraries they load) and the dependency closure of the kernel modules below.
# Hooks for other lanes: SVM_EXTRA_MODS (module names), SVM_EXTRA_BINS (absolute paths of binaries),
# SVM_EXTRA_KO_DIR (out-of-tree .ko files), SVM_EXTRA_LIBPATH (where the extra binaries' own
# shared libraries are, e.g. an unpacked zfsutils-linux), SVM_INITRD_OUT (output path).
set -euo pipefail
# shellcheck source=hack/storage-vm/env.sh
. "$(dirname "$0")/env.sh"
OUT=${SVM_INITRD_OUT:-$SVM_INITRD}
W=$(mktemp -d "$SVM_CACHE/initramfs.XXXX")
trap 'rm -rf "$W"' EXIT
export LD_LIBRARY_PATH
LD_LIBRARY_PATH=$(svm_ldpath)${SVM_EXTRA_LIBPATH:+:$SVM_EXTRA_LIBPATH}
KMOD=$SVM_ROOT/bin/kmod
mkdir -p "$W"/{bin,sbin,etc/lvm,proc,sys,dev,run,tmp,mnt,lib64,lib/x86_64-linux-gnu}

cp "$SVM_ROOT/bin/busybox" "$W/bin/busybox"
for a in sh mount umount mkdir cat echo ls dd cmp sync sleep poweroff mknod grep sed awk head tail \
  md5sum sha256sum uname dmesg ps seq tr wc cut date xargs find blockdev losetup printf test true \
  false chmod ln rm cp tee setsid cttyhack expr ifconfig ip hostname killall pidof readlink basename; do
  ln -sf busybox "$W/bin/$a"
done
cp "$KMOD" "$W/bin/kmod"
ln -sf ../bin/kmod "$W/sbin/modprobe"
cp "$SVM_ROOT/sbin/mdadm" "$SVM_ROOT/sbin/lvm" "$SVM_ROOT/sbin/dmsetup" "$W/sbin/"
for t in pvcreate vgcreate lvcreate lvs vgs pvs vgchange lvchange lvremove vgremove; do ln -sf lvm "$W/sbin/$t"; done
if [ -n "${SVM_EXTRA_TREE:-}" ]; then cp -a "$SVM_EXTRA_TREE/." "$W/"; fi
BINS=("$W/bin/kmod" "$W/sbin/mdadm" "$W/sbin/lvm" "$W/sbin/dmsetup")
for b in ${SVM_EXTRA_BINS:-}; do cp "$b" "$W/sbin/"; BINS+=("$W/sbin/$(basename "$b")"); done

# Shared libraries, resolved against the unpacked root first.
for b in "${BINS[@]}"; do ldd "$b"; done |
  awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | sort -u | while read -r lib; do
    case $lib in
      /lib64/*) cp -L "$lib" "$W/lib64/" ;;
      *) cp -L "$lib" "$W/lib/x86_64-linux-gnu/" ;;
    esac
  done
[ -e "$W/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$W/lib64/"

MODS="virtio_pci virtio_blk md_mod raid456 raid1 raid10 linear dm_mod dm_raid dm_mirror ${SVM_EXTRA_MODS:-}"
MD=$W/lib/modules/$SVM_KVER
mkdir -p "$MD"
for m in $MODS; do
  "$SVM_TOOLS/modprobe" -d "$SVM_ROOT" -S "$SVM_KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r ko; do
  rel=${ko#"$SVM_ROOT/lib/modules/$SVM_KVER/"}
  mkdir -p "$MD/$(dirname "$rel")"
  cp "$ko" "$MD/$rel"
done
if [ -n "${SVM_EXTRA_KO_DIR:-}" ]; then mkdir -p "$MD/extra"; cp "$SVM_EXTRA_KO_DIR"/*.ko "$MD/extra/"; fi
cp "$SVM_ROOT/lib/modules/$SVM_KVER"/modules.{order,builtin,builtin.modinfo} "$MD/"
"$SVM_TOOLS/depmod" -b "$W" "$SVM_KVER"

# LVM without udev, lvmetad, monitoring or backups: nothing of that runs in the guest.
cat > "$W/etc/lvm/lvm.conf" <<'CONF'
global { use_lvmpolld = 0 event_activation = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 }
backup { backup = 0 archive = 0 }
CONF
echo 'root:x:0:0:root:/:/bin/sh' > "$W/etc/passwd"
cp "$SVM_HERE/init" "$W/init"
chmod +x "$W/init"
(cd "$W" && find . | "$SVM_ROOT/bin/cpio" -o -H newc --quiet) | gzip -1 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
ls -la "$OUT"
