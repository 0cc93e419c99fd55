#!/bin/sh
# Default XEN_DOM0_TEST of `make e2e-xen` (dom0, busybox sh): runs the lane's parts in order
# (TESSERA_XEN_PARTS from dom0.env, default "agent shim") from /usr/share/tessera/tests/, and prints
# "TESSERA-XEN-TEST: PASS" only when every part printed "TESSERA-XEN-PART <name>: PASS".
# shellcheck source=/dev/null
. /etc/tessera/dom0.env
failed=0
for part in ${TESSERA_XEN_PARTS:-agent shim}; do
  echo "=== PART $part"
  # tee keeps the serial log's timestamps live; the part's verdict is its PASS line.
  sh "/usr/share/tessera/tests/$part.sh" 2>&1 | tee "/tmp/part-$part.log"
  if ! grep -q "^TESSERA-XEN-PART $part: PASS" "/tmp/part-$part.log"; then
    echo "=== PART $part failed"
    failed=1
  fi
done
if [ "$failed" = 0 ]; then echo "TESSERA-XEN-TEST: PASS"; else echo "TESSERA-XEN-TEST: FAIL"; fi
exit "$failed"
