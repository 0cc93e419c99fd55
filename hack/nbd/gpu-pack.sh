#!/usr/bin/env bash
# Pack the NBD GPU lane (make gpu-test-nbd): build the release binaries here with the VRAM backend
# (CUDA is loaded at run time, so no CUDA is needed to build), fetch the Debian client packages
# (qemu-utils, libnbd-bin, nbdkit) and the library packages they need with apt-get download,
# extract them with dpkg -x, and put everything under .gpu/nbd/ with the remote script. glibc,
# libstdc++ and libgcc_s are left out: the GPU machine has newer ones. The remote script uses a
# shipped library only where the machine lacks that soname.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/.gpu/nbd
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tessera/nbd-debs-bookworm
now() { date +%s; }
t_all=$(now)
step() { echo "[$(date +%T)] $*"; }
timed() { local t; t=$(now); "$@"; step "  ($(( $(now) - t )) s)"; }

# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
need_debs

step "building release binaries (tessera-gpu-proxy with the VRAM backend, nbd-randread)"
timed cargo build --release -p tessera-gpu-proxy -p tessera-nbd --bins --manifest-path "$ROOT/Cargo.toml"

for t in qemu-img nbdinfo nbdcopy nbdkit apt-get dpkg-deb; do
  command -v "$t" >/dev/null || { echo "missing $t: run 'make deps' (hack/apt-packages.txt)" >&2; exit 1; }
done

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$CACHE"
strip -o "$OUT/bin/tessera-gpu-proxy" "$TARGET/release/tessera-gpu-proxy"
strip -o "$OUT/bin/nbd-randread" "$TARGET/release/nbd-randread"
cp "$ROOT/hack/nbd/bench.sh" "$ROOT/hack/nbd/lib.sh" "$ROOT/hack/nbd/gpu-remote.sh" "$OUT/"

# The client packages, then every package that owns a library they load here (minus the C runtime).
step "resolving the Debian packages the clients need"
PKGS=(qemu-utils libnbd-bin libnbd0 nbdkit)
ELFS=(/usr/bin/qemu-img /usr/bin/qemu-io /usr/bin/nbdinfo /usr/bin/nbdcopy /usr/bin/nbdkit
      /usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-memory-plugin.so)
mapfile -t LIBS < <(for e in "${ELFS[@]}"; do ldd "$e" | awk '$3 ~ /^\// {print $3}'; done | sort -u |
  grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64|libgcc_s|libstdc\+\+)\.so')
owner() { # the package owning library $1 (usrmerge: dpkg may know it under /lib or /usr/lib)
  local real; real=$(basename "$(readlink -f "$1")")
  dpkg -S "*/$real" 2>/dev/null | grep -v -- '-dev' | head -1 | cut -d: -f1 || true
}
for l in "${LIBS[@]}"; do
  o=$(owner "$l")
  [[ -n $o ]] || { echo "no package owns $l" >&2; exit 1; }
  PKGS+=("$o")
done
mapfile -t PKGS < <(printf '%s\n' "${PKGS[@]}" | grep -v '^$' | sort -u)
step "packages: ${PKGS[*]}"

step "apt-get download into $CACHE (cached)"
( cd "$CACHE" && for p in "${PKGS[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q "$p"; done )

printf '%s\n' "${PKGS[@]}" >"$OUT/PACKAGES"
# The extracted tree only changes with the package set: reuse the last tarball when it matches.
if [[ -f $CACHE/debian-clients.tar.xz ]] && cmp -s "$OUT/PACKAGES" "$CACHE/PACKAGES" \
   && [[ -z $(find "$CACHE" -name '*.deb' -newer "$CACHE/debian-clients.tar.xz") ]]; then
  step "reusing $CACHE/debian-clients.tar.xz"
  cp "$CACHE/debian-clients.tar.xz" "$OUT/"
else
  STAGE=$(mktemp -d)
  trap 'rm -rf "$STAGE"' EXIT
  for p in "${PKGS[@]}"; do
    dpkg -x "$(ls "$CACHE/${p}"_*.deb | head -1)" "$STAGE/root"
  done
  rm -rf "$STAGE/root/usr/share"
  step "extracted $(du -sh "$STAGE/root" | cut -f1); compressing"
  timed tar -C "$STAGE" -cJf "$CACHE/debian-clients.tar.xz" root
  cp "$OUT/PACKAGES" "$CACHE/PACKAGES"
  cp "$CACHE/debian-clients.tar.xz" "$OUT/"
fi
du -sh "$OUT"/* | sed 's/^/  /'
step "packed in $(( $(now) - t_all )) s. Run it on the GPU machine with the device tool:"
cat <<'MSG'
  run(kind="nvidia-h100-x1", carry=[".gpu/nbd"], timeout_s=540,
      command="bash .gpu/nbd/gpu-remote.sh")
  (the results come back under $OUT: nbd-gpu.log and bench.txt)
MSG
