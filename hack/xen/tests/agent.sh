#!/bin/sh
# Agent part of the Xen lane (run by lane.sh in dom0 under busybox sh). Plays the shim's
# part with xl and xenstore-write exactly as docs/xen-guest-protocol.md says:
#  1. busybox rootfs dir -> mke2fs -d ext4 image -> xl create -p (guest kernel/initramfs + xvda)
#     -> D/tessera keys -> xl unpause -> control/start=1 -> state=exited; log chunks decode to
#     "hello\n", exitCode=0; exec `cat /run/tessera/vgpu.json` returns the allocation;
#     xl destroy -> only Domain-0 left, loop device released.
#  2. args = a missing binary -> state=exited, exitCode=127.
#  3. /bin/sleep 600 running: exec sees the container env/cwd; control/signal=TERM -> exitCode 143.
#  4. a bogus kernel path -> xl create fails, no domain left.
# Prints "TESSERA-XEN-PART agent: PASS" when everything held.
set -u
# shellcheck source=/dev/null
. /etc/tessera/dom0.env
W=/var/lib/tessera/agent-test
FAILED=0
# shellcheck source=hack/xen/tests/lib.sh
. "$(dirname "$0")/lib.sh"
ALLOC='{"claim":"claim-a","namespace":"default","node":"xen-lab","gpuUuid":"GPU-00000000-0000-0000-0000-000000000001","memoryBytes":2147483648,"computeShare":50,"idmChannel":"xen-ring:0"}'

# wait_key PATH VALUE SECONDS: until xenstore PATH == VALUE (or state=error); prints the time.
wait_key() {
  t=$(up)
  while :; do
    v=$(xenstore-read "$1" 2>/dev/null || true)
    [ "$v" = "$2" ] && { echo "  $1=$2 after $(since "$t") s"; return 0; }
    [ "$(xenstore-read "$D/data/tessera/state" 2>/dev/null)" = error ] && {
      echo "  state=error: $(xenstore-read "$D/data/tessera/agent" 2>/dev/null)"; return 1; }
    [ "$(since "$t" | cut -d. -f1)" -lt "$3" ] || { echo "  timeout waiting for $1=$2 (is '$v')"; return 1; }
    xl domid "$NAME" >/dev/null 2>&1 || { echo "  domain $NAME is gone (waiting for $1=$2)"; return 1; }
    sleep 0.2
  done
}

# decode_logs: concatenates the base64 data of D/data/tessera/log/<seq> in seq order.
decode_logs() {
  for s in $(xenstore-list "$D/data/tessera/log" 2>/dev/null | sort -n); do
    xenstore-read "$D/data/tessera/log/$s" | sed 's/.*"data":"\([^"]*\)".*/\1/' | base64 -d
  done
}

guest_log() {
  echo "--- guest console ($1) ---"
  tail -n "${2:-40}" "/var/log/xen/guest-$1.log" 2>/dev/null
  echo "--- end guest console ---"
}

# make_domain NAME KERNEL SPEC_ARGS_JSON: xl create -p + host keys; sets DOMID and D.
make_domain() {
  cat > "$W/$1.cfg" <<CFG
name = "$1"
type = "pv"
memory = 256
vcpus = 1
kernel = "$2"
ramdisk = "$TESSERA_GUEST_INITRD"
extra = "console=hvc0 quiet"
disk = [ 'format=raw,vdev=xvda,access=rw,target=$W/rootfs.img' ]
on_poweroff = "destroy"
on_crash = "destroy"
CFG
  t=$(up)
  T_CREATE=$t
  NAME=$1
  xl create -p "$W/$1.cfg" || return 1
  DOMID=$(xl domid "$1") || return 1
  D=/local/domain/$DOMID
  echo "  xl create -p $1: domid $DOMID in $(since "$t") s"
  xenstore-write "$D/tessera/version" 1 \
    "$D/tessera/pod" '{"name":"agent-test","namespace":"default","uid":"uid-1"}' \
    "$D/tessera/container/spec" "{\"id\":\"ctr-1\",\"args\":$3,\"env\":[\"GREETING=hello\"],\"workingDir\":\"/\",\"rootfsDevice\":\"xvda\",\"rootfsType\":\"ext4\",\"tty\":false}" \
    "$D/tessera/vgpu/allocation" "$ALLOC"
}

only_dom0_left() {
  n=$(xl list | tail -n +2 | wc -l)
  if [ "$n" = 1 ] && xl list | grep -q '^Domain-0'; then ok "xl list shows only Domain-0"; else bad "xl list: $(xl list)"; fi
  if [ -z "$(losetup -a 2>/dev/null)" ]; then ok "no loop device left"; else bad "loop devices left: $(losetup -a)"; fi
}

echo "=== agent test: rootfs"
rm -rf "$W" && mkdir -p "$W/rootfs/bin" "$W/rootfs/proc" "$W/rootfs/dev" "$W/rootfs/run" "$W/rootfs/tmp"
cp /bin/busybox "$W/rootfs/bin/busybox"
for a in sh echo cat ls sleep true; do ln -s busybox "$W/rootfs/bin/$a"; done
t=$(up)
"$TESSERA_MKE2FS" -q -t ext4 -d "$W/rootfs" "$W/rootfs.img" 16M || bad "mke2fs"
echo "  mke2fs -t ext4 -d: $(since "$t") s, $(du -k "$W/rootfs.img" | cut -f1) KiB"

echo "=== case 1: echo hello"
if make_domain tessera-hello "$TESSERA_GUEST_KERNEL" '["/bin/echo","hello"]'; then
  t0=$(up)
  xl unpause tessera-hello
  if wait_key "$D/data/tessera/agent" ready 180; then
    echo "TIMING unpause-to-agent-ready $(since "$t0") s (TCG)"
    xenstore-write "$D/tessera/control/start" 1
    if wait_key "$D/data/tessera/state" exited 120; then
      echo "TIMING unpause-to-exited $(since "$t0") s (TCG: guest kernel boot + agent + echo)"
      echo "TIMING create-to-exited $(since "$T_CREATE") s (TCG: xl create -p + keys + unpause ... exited)"
      decode_logs > "$W/hello.out"
      printf 'hello\n' > "$W/hello.want"
      if cmp -s "$W/hello.out" "$W/hello.want"; then ok "log chunks decode to 'hello\\n'"; else bad "logs: $(od -c "$W/hello.out" | head -3)"; fi
      code=$(xenstore-read "$D/data/tessera/exitCode")
      check "exitCode=0 (got $code)" [ "$code" = 0 ]
      for k in pid startedAt finishedAt; do echo "  $k=$(xenstore-read "$D/data/tessera/$k")"; done
      t=$(up)
      xenstore-write "$D/tessera/exec/0/request" '{"cmd":["cat","/run/tessera/vgpu.json"],"timeoutSeconds":30}'
      i=0
      while ! xenstore-exists "$D/data/tessera/exec/0/result" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
      res=$(xenstore-read "$D/data/tessera/exec/0/result" 2>/dev/null)
      echo "$res" > "$W/exec0.json"
      echo "  exec result after $(since "$t") s: $res"
      got=$(echo "$res" | sed 's/.*"stdout":"\([^"]*\)".*/\1/' | base64 -d)
      check "exec cat /run/tessera/vgpu.json returned the allocation (got '$got')" [ "$got" = "$ALLOC" ]
      check "exec exitCode=0" grep -q '"exitCode":0' "$W/exec0.json"
    else
      bad "hello never exited"
    fi
  else
    bad "agent never ready"
  fi
  guest_log tessera-hello 30
  t=$(up)
  xl destroy tessera-hello || bad "xl destroy"
  echo "  xl destroy: $(since "$t") s"
  sleep 1
  only_dom0_left
else
  bad "xl create -p tessera-hello failed"
fi

echo "=== case 2: missing binary"
if make_domain tessera-missing "$TESSERA_GUEST_KERNEL" '["/bin/no-such-binary"]'; then
  t0=$(up)
  xl unpause tessera-missing
  if wait_key "$D/data/tessera/agent" ready 180; then
    xenstore-write "$D/tessera/control/start" 1
    if wait_key "$D/data/tessera/state" exited 120; then
      echo "TIMING missing-binary unpause-to-exited $(since "$t0") s (TCG)"
      code=$(xenstore-read "$D/data/tessera/exitCode")
      check "missing binary: state=exited exitCode=127 (got $code)" [ "$code" = 127 ]
      echo "  stderr: $(decode_logs)"
    else
      bad "missing-binary domain never exited"
    fi
  else
    bad "agent never ready (missing binary)"
  fi
  guest_log tessera-missing 12
  xl destroy tessera-missing || bad "xl destroy"
  sleep 1
  only_dom0_left
else
  bad "xl create -p tessera-missing failed"
fi

echo "=== case 3: TERM to a running container, exec while it runs"
if make_domain tessera-term "$TESSERA_GUEST_KERNEL" '["/bin/sleep","600"]'; then
  xl unpause tessera-term
  if wait_key "$D/data/tessera/agent" ready 180; then
    xenstore-write "$D/tessera/control/start" 1
    if wait_key "$D/data/tessera/state" running 60; then
      # shellcheck disable=SC2016 # expanded by the shell in the guest
      xenstore-write "$D/tessera/exec/0/request" '{"cmd":["sh","-c","echo $GREETING from $(pwd)"],"timeoutSeconds":30}'
      i=0
      while ! xenstore-exists "$D/data/tessera/exec/0/result" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
      got=$(xenstore-read "$D/data/tessera/exec/0/result" 2>/dev/null | sed 's/.*"stdout":"\([^"]*\)".*/\1/' | base64 -d)
      check "exec in the running container sees its env and workingDir (got '$got')" [ "$got" = "hello from /" ]
      t=$(up)
      xenstore-write "$D/tessera/control/signal" TERM
      if wait_key "$D/data/tessera/state" exited 60; then
        echo "TIMING signal-to-exited $(since "$t") s (TCG)"
        code=$(xenstore-read "$D/data/tessera/exitCode")
        check "TERM: exitCode=143 (got $code)" [ "$code" = 143 ]
      else
        bad "TERM did not stop the container"
      fi
    else
      bad "container never running"
    fi
  else
    bad "agent never ready (term)"
  fi
  guest_log tessera-term 8
  xl destroy tessera-term || bad "xl destroy"
  sleep 1
  only_dom0_left
else
  bad "xl create -p tessera-term failed"
fi

echo "=== case 4: bogus kernel path"
if make_domain tessera-bogus /nonexistent/vmlinux.gz '["/bin/true"]' 2> "$W/bogus.err"; then
  bad "xl create with a bogus kernel succeeded"
  xl destroy tessera-bogus
else
  ok "xl create with a bogus kernel failed: $(grep -m1 -iE 'error|fail' "$W/bogus.err")"
fi
only_dom0_left

if [ "$FAILED" = 0 ]; then echo "TESSERA-XEN-PART agent: PASS"; else echo "TESSERA-XEN-PART agent: FAIL"; fi
exit "$FAILED"
