# shellcheck shell=sh
# Helpers shared by the Xen lane's dom0 test parts (busybox sh): timing and the TEST verdict lines.
# The sourcing script sets FAILED=0 first; `bad` sets it to 1.
up() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(up) $1" | awk '{printf "%.2f", $1 - $2}'; }
ok() { echo "TEST ok: $*"; }
bad() {
  echo "TEST FAIL: $*"
  # shellcheck disable=SC2034 # read by the sourcing script
  FAILED=1
}
# check DESCRIPTION cmd...: ok when the command succeeds.
check() {
  d=$1
  shift
  if "$@"; then ok "$d"; else bad "$d"; fi
}
