#!/usr/bin/env bash
# Idempotent: builds OpenZFS kernel modules (zfs-dkms source from Debian bookworm contrib) for the
# storage VM's kernel, against linux-headers unpacked with dpkg -x (nothing installed on the host),
# and unpacks the matching userland (zpool, zfs + libs) for the guest's initramfs.
# Cache: $SVM_ZFS_CACHE = ~/.cache/tessera/zfs-<zfs version>-<kernel version>/ with
#   ko/*.ko (stripped), root/ (dpkg -x of zfsutils-linux and its libs), src/ (zfs-dkms source and
#   the kernel headers), .complete (marker). About 4 minutes on 2 cores (measured: 216 s).
# The bookworm contrib component is read through a private APT configuration under the cache, so the
# host's /etc/apt stays untouched.
set -euo pipefail
# shellcheck source=hack/storage-vm/env.sh
. "$(dirname "$0")/env.sh"

SVM_ZFS_VER=${SVM_ZFS_VER:-2.1.11}
SVM_ZFS_DEB=${SVM_ZFS_DEB:-$SVM_ZFS_VER-1+deb12u1}
Z=${SVM_ZFS_CACHE:-$HOME/.cache/tessera/zfs-$SVM_ZFS_VER-$SVM_KVER}
APTD=$HOME/.cache/tessera/apt-bookworm-contrib
KBASE=${SVM_KVER%-amd64}

apt_private() {
  mkdir -p "$APTD"/{lists/partial,archives/partial,etc/apt.conf.d,etc/preferences.d,etc/trusted.gpg.d}
  cat > "$APTD/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main contrib
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main contrib
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main contrib
EOF
  cat > "$APTD/apt.conf" <<EOF
Dir::State "$APTD";
Dir::State::Lists "$APTD/lists";
Dir::State::status "/var/lib/dpkg/status";
Dir::Cache "$APTD";
Dir::Etc::SourceList "$APTD/etc/sources.list";
Dir::Etc::SourceParts "$APTD/etc/sources.list.d";
Dir::Etc::Parts "$APTD/etc/apt.conf.d";
Dir::Etc::PreferencesParts "$APTD/etc/preferences.d";
APT::Sandbox::User "root";
EOF
  mkdir -p "$APTD/etc/sources.list.d"
  if [ ! -f "$APTD/.updated" ]; then
    APT_CONFIG=$APTD/apt.conf apt-get update -q >/dev/null
    touch "$APTD/.updated"
  fi
}

fetch() {
  apt_private
  mkdir -p "$Z/debs" "$Z/src" "$Z/root"
  local pkgs="zfs-dkms=$SVM_ZFS_DEB zfsutils-linux=$SVM_ZFS_DEB libzfs4linux=$SVM_ZFS_DEB
    libzpool5linux=$SVM_ZFS_DEB libnvpair3linux=$SVM_ZFS_DEB libuutil3linux=$SVM_ZFS_DEB
    linux-headers-$SVM_KVER linux-headers-$KBASE-common linux-kbuild-6.1 libtirpc3 libtirpc-common"
  cd "$Z/debs"
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  { APT_CONFIG=$APTD/apt.conf apt-get download -q $pkgs 2>&1 | grep -v 'unsandboxed'; } || true
  cd - >/dev/null
  local f
  for f in "$Z"/debs/*.deb; do
    case $(basename "$f") in
      zfs-dkms_* | linux-headers-* | linux-kbuild-*) dpkg -x "$f" "$Z/src" ;;
      *) dpkg -x "$f" "$Z/root" ;;
    esac
  done
  [ -d "$Z/src/usr/src/zfs-$SVM_ZFS_VER" ] || { echo "zfs-dkms source missing after unpack" >&2; exit 1; }
  [ -x "$Z/root/sbin/zpool" ] || { echo "zpool missing after unpack" >&2; exit 1; }
}

build() {
  local H=$Z/src/usr/src/linux-headers-$SVM_KVER
  local C=$Z/src/usr/src/linux-headers-$KBASE-common
  # The headers' Makefile includes the common tree by absolute path; point it into the cache.
  sed -i "s#^include /usr/src/#include $Z/src/usr/src/#" "$H/Makefile"
  # scripts/ and tools/ are relative symlinks into linux-kbuild-6.1, unpacked beside the headers.
  [ -d "$H/scripts/basic" ] || { echo "kbuild scripts missing under $H/scripts" >&2; exit 1; }
  rm -rf "$Z/build"
  cp -a "$Z/src/usr/src/zfs-$SVM_ZFS_VER" "$Z/build"
  cd "$Z/build"
  ./configure --with-config=kernel --with-linux="$C" --with-linux-obj="$H" > configure.log 2>&1 ||
    { tail -40 configure.log; exit 1; }
  nice -n 10 make -j"${SVM_ZFS_JOBS:-2}" -C module > make.log 2>&1 || { tail -40 make.log; exit 1; }
  rm -rf "$Z/ko"
  mkdir -p "$Z/ko"
  find module -name '*.ko' -exec cp {} "$Z/ko/" \;
  strip --strip-debug "$Z"/ko/*.ko
  ls -la "$Z/ko"
  # The object tree (~400 MiB) is not needed once the modules are copied out.
  cd "$Z"
  rm -rf "$Z/build"
}

if [ -f "$Z/.complete" ]; then
  echo "zfs: $SVM_ZFS_VER for $SVM_KVER cached in $Z"
  exit 0
fi
svm_step "zfs: download + unpack zfs-dkms/zfsutils $SVM_ZFS_VER, headers $SVM_KVER" fetch
svm_step "zfs: build zfs.ko for $SVM_KVER (nice, ${SVM_ZFS_JOBS:-2} jobs)" build
touch "$Z/.complete"
