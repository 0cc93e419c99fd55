#!/usr/bin/env bash
# Shared by hack/nbd/bench.sh and hack/nbd/gpu-pack.sh (sourced).
# need_debs: install the Debian NBD clients where missing (fresh bookworm machine); idempotent.
need_debs() {
  local missing=()
  command -v nbdcopy >/dev/null || missing+=(libnbd-bin)
  command -v "${NBDKIT:-nbdkit}" >/dev/null || missing+=(nbdkit)
  command -v qemu-img >/dev/null || missing+=(qemu-utils)
  [[ ${#missing[@]} -eq 0 ]] && return
  command -v apt-get >/dev/null || { echo "missing ${missing[*]} and no apt-get" >&2; exit 1; }
  local sudo=; [[ $(id -u) -eq 0 ]] || sudo=sudo
  echo "installing ${missing[*]}" >&2
  $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "${missing[@]}" >/dev/null
}
