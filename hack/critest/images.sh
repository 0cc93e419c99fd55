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
  mkdir -p b/rootfs/bin b/rootfs/etc b/rootfs/tmp b/rootfs/var/www
  cp /bin/busybox b/rootfs/bin/busybox
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "b/rootfs/bin/$a"; done
  cp pause b/rootfs/pause
  printf 'root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n' > b/rootfs/etc/passwd
  printf 'root:x:0:\nwww-data:x:33:\nuser:x:1000:\ngroup50000:x:50000:user\n' > b/rootfs/etc/group
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
# three distinct images for the list tests (a label makes each config, hence each id, differ)
for n in 1 2 3; do mk "test-image-$n" "" sh; umoci config --image "oci:test-image-$n" --config.label "tessera.test/n=$n" >/dev/null; done
umoci gc --layout oci
sed -i 's/ .*//' list.tmp; mv list.tmp list
cd - >/dev/null; rm -rf "$out"; mv "$out.tmp" "$out"
