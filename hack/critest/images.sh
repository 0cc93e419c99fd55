#!/bin/bash
# Builds critest's images offline from Debian's busybox-static (umoci) into an OCI layout, cached in
# ~/.cache/tessera/critest-images-<key>/. Each is later pushed to the local registry by run.sh.
# usage: images.sh OUTDIR   (prints nothing but errors; OUTDIR/list has "tag path" lines)
set -euo pipefail
out=$1
[ -f "$out/list" ] && exit 0
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
cd "$out.tmp"
# pause: the sandbox image, a static C program that waits for a signal.
cat > pause.c <<'C'
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
int main(void) { signal(SIGINT, bye); signal(SIGTERM, bye); for (;;) pause(); }
C
gcc -static -O2 -o pause pause.c
umoci init --layout oci >/dev/null
mk() { # mk TAG USER CMD... : busybox image with /etc/passwd and /etc/group
  local tag=$1 user=$2; shift 2
  umoci new --image "oci:$tag" >/dev/null
  umoci unpack --rootless --image "oci:$tag" b >/dev/null
  mkdir -p b/rootfs/bin b/rootfs/etc b/rootfs/tmp b/rootfs/var/www b/rootfs/lib/x86_64-linux-gnu b/rootfs/lib64
  cp /bin/busybox b/rootfs/bin/busybox
  # Hard links, as in the upstream busybox image: MaskedPaths bind-mounts /dev/null over one
  # applet, which through a symlink would mask busybox itself (and so sh).
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -f b/rootfs/bin/busybox "b/rootfs/bin/$a"; done
  # Debian's busybox has neither ipcs (HostIpc tests) nor pgrep (execSync timeout test):
  # util-linux's and procps', with their shared libraries.
  local b lib
  for b in /usr/bin/ipcs /usr/bin/pgrep; do
    rm -f "b/rootfs/bin/$(basename "$b")"
    cp "$b" b/rootfs/bin/
    for lib in $(ldd "$b" | awk '/=> \//{print $3} /^\t\/lib64/{print $1}'); do
      case $lib in
        /lib64/*) cp -L "$lib" b/rootfs/lib64/ ;;
        *) cp -L "$lib" b/rootfs/lib/x86_64-linux-gnu/ ;;
      esac
    done
  done
  cp pause b/rootfs/pause
  printf 'root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > b/rootfs/etc/passwd
  printf 'root:x:0:\nwww-data:x:33:\nuser:x:1000:\ngroup50000:x:50000:user\nnogroup:x:65534:\n' > b/rootfs/etc/group
  umoci repack --image "oci:$tag" b >/dev/null
  rm -rf b
  local args=(--image "oci:$tag" --config.env PATH=/bin)
  [ -n "$user" ] && args+=(--config.user "$user")
  for c in "$@"; do args+=(--config.cmd "$c"); done
  umoci config "${args[@]}" >/dev/null
  echo "$tag $tag" >> list.tmp
}
mk pause ""                                 /pause
mk busybox ""                               sh
mk test-image-user-uid 1002                 sh
mk test-image-user-username www-data        sh
mk test-image-user-uid-group 1003:1003      sh
mk test-image-user-username-group www-data:www-data sh
mk test-image-predefined-group 1000         sh
# distinct images (a label makes each config, hence each id, differ): the list tests want three,
# and the pull tests want test-image-tag:test and test-image-latest to carry only their own tag.
for n in 1 2 3 tag latest; do mk "test-image-$n" "" sh; umoci config --image "oci:test-image-$n" --config.label "tessera.test/n=$n" >/dev/null; done
umoci gc --layout oci
sed -i 's/ .*//' list.tmp; mv list.tmp list
cd - >/dev/null; rm -rf "$out"; mv "$out.tmp" "$out"
