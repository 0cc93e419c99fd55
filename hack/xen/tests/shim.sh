#!/bin/sh
# Shim part of the Xen lane (run by lane.sh in dom0 under busybox sh): tessera-shim serves CRI
# (--upstream none --xen) and crictl drives it, as kubelet would on a Xen-only node.
#  A. runp/create/start with handler tessera-xen: a PV domain boots, the agent runs `echo hello`;
#     `crictl logs` shows hello, exit code 0; stopp/rmp leave only Domain-0 and no disk image.
#     Timed: RunPodSandbox -> running container (qemu TCG).
#  B. a pod with a VGpuClaim allocation annotation running `sleep 600`: `crictl exec -s` reads
#     /run/tessera/vgpu.json inside the guest; a 2000-line exec output arrives whole (chunked
#     xenstore transfer); exec exit codes pass through; the shim restarted meanwhile takes the pod
#     back (listed, running, exec works); stats; `crictl stop` -> exit 143.
#  C. an image that cannot be pulled: `crictl pull` and `crictl create` fail with a clear error
#     and no domain or disk image is left.
#  D. a domain that fails to boot (a second shim whose guest initramfs is not one: the guest
#     kernel panics): CreateContainer fails with a clear error, nothing is left behind.
# Prints "TESSERA-XEN-PART shim: PASS" when everything held.
set -u
# shellcheck source=/dev/null
. /etc/tessera/dom0.env
W=/var/lib/tessera/shim-test
S=/var/lib/tessera-shim
SOCK=/run/tessera/shim.sock
IMAGE=tessera.local/busybox:1.36
FAILED=0
# shellcheck source=hack/xen/tests/lib.sh
. "$(dirname "$0")/lib.sh"
SHIM_PIDS=
# Keys in sorted order: the shim writes the annotation's JSON re-serialized (validated), sorted.
ALLOC='{"claim":"claim-b","computeShare":25,"gpuUuid":"GPU-00000000-0000-0000-0000-000000000002","idmChannel":"xen-ring:1","memoryBytes":1073741824,"namespace":"default","node":"xen-lab"}'
ALLOC_JSON=$(echo "$ALLOC" | sed 's/"/\\"/g')

el() { echo "$1 $2" | awk '{printf "%.2f", $1 - $2}'; }
# contains TEXT ERE: case-insensitive match (for error messages).
# shellcheck disable=SC2317 # called through check
contains() { echo "$1" | grep -qiE "$2"; }
cri() { crictl --timeout 300s "$@"; }
# teardown POD [crictl flags...]: stopp + rmp.
teardown() {
  p=$1
  shift
  cri "$@" stopp "$p" && cri "$@" rmp "$p"
}
state_of() { cri inspect -o go-template --template '{{.status.state}}' "$1" 2>/dev/null; }
exit_code_of() { cri inspect "$1" 2>/dev/null | sed -n 's/^ *"exitCode": *\(-\{0,1\}[0-9]*\).*/\1/p' | head -1; }

# start_shim LOG SOCKET STATE_DIR INITRAMFS [extra serve flags...]: serves in the background,
# waits for the socket.
start_shim() {
  log=$1 sock=$2 state=$3 initrd=$4
  shift 4
  tessera-shim serve --listen "$sock" --upstream none --xen --xl "$TESSERA_XL" --mke2fs "$TESSERA_MKE2FS" \
    --state-dir "$state" --guest-kernel "$TESSERA_GUEST_KERNEL" --guest-initramfs "$initrd" "$@" > "$log" 2>&1 &
  SHIM_PIDS="$SHIM_PIDS $!"
  i=0
  while [ ! -S "$sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  [ -S "$sock" ] || { echo "  shim did not create $sock:"; cat "$log"; return 1; }
}

# nothing_left STATE_DIR: only Domain-0 in xl list, no container directory (disk image) left.
nothing_left() {
  n=$(xl list | tail -n +2 | wc -l)
  if [ "$n" = 1 ] && xl list | grep -q '^Domain-0'; then ok "$1: xl list shows only Domain-0"; else bad "$1: xl list: $(xl list)"; fi
  left=$(ls "$2/containers" 2>/dev/null)
  if [ -z "$left" ]; then ok "$1: no disk image left under $2/containers"; else bad "$1: left behind: $left"; fi
  if [ -z "$(losetup -a 2>/dev/null)" ]; then ok "$1: no loop device left"; else bad "$1: loop devices left: $(losetup -a)"; fi
}

# pod NAME [ANNOTATIONS_JSON] / ctr NAME IMAGE ARGS_JSON: CRI configs (crictl's JSON form).
pod() {
  cat > "$W/$1-pod.json" <<JSON
{"metadata":{"name":"$1","namespace":"default","uid":"uid-$1","attempt":0},
 "log_directory":"/var/log/pods/default_$1_uid-$1","annotations":{${2:-}},"linux":{}}
JSON
}
ctr() {
  cat > "$W/$1-ctr.json" <<JSON
{"metadata":{"name":"$1"},"image":{"image":"$2"},"command":$3,"log_path":"$1/0.log","linux":{}}
JSON
}

rm -rf "$W" && mkdir -p "$W" /run/tessera /var/log/pods
cat > /etc/crictl.yaml <<YAML
runtime-endpoint: unix://$SOCK
image-endpoint: unix://$SOCK
timeout: 300
YAML

echo "=== shim: image load + serve"
t=$(up)
if tessera-shim image load "$TESSERA_FILES/busybox-oci" --name tessera.local/busybox --state-dir "$S"; then
  ok "tessera-shim image load of the busybox OCI layout ($(since "$t") s)"
else
  bad "tessera-shim image load"
fi
# No apiserver in dom0: the allocation comes verbatim from the pod annotation, which the shim
# honours only with --allow-allocation-annotation (with an apiserver it reads the VGpuClaim).
start_shim /var/log/tessera-shim.log "$SOCK" "$S" "$TESSERA_GUEST_INITRD" --boot-timeout-s 180 \
  --allow-allocation-annotation || bad "tessera-shim serve"
cri version
check "crictl version names tessera-shim" sh -c 'crictl version | grep -q "RuntimeName: *tessera-shim"'
cri images
check "crictl images lists $IMAGE" sh -c "crictl images | grep -q 'tessera.local/busybox *1.36'"

echo "=== case A: echo hello"
pod hello
ctr hello "$IMAGE" '["/bin/echo","hello"]'
t0=$(up)
if POD=$(cri runp --runtime tessera-xen "$W/hello-pod.json"); then
  t1=$(up)
  if CTR=$(cri create "$POD" "$W/hello-ctr.json" "$W/hello-pod.json"); then
    t2=$(up)
    if cri start "$CTR"; then
      t3=$(up)
      echo "TIMING RunPodSandbox-to-running $(el "$t3" "$t0") s (qemu TCG: runp $(el "$t1" "$t0") s, create $(el "$t2" "$t1") s = rootfs disk + domain boot to agent ready, start $(el "$t3" "$t2") s)"
      i=0
      while [ "$(state_of "$CTR")" != CONTAINER_EXITED ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i + 1)); done
      echo "TIMING RunPodSandbox-to-exited $(since "$t0") s (qemu TCG)"
      check "container exited" [ "$(state_of "$CTR")" = CONTAINER_EXITED ]
      code=$(exit_code_of "$CTR")
      check "exit code 0 (got '$code')" [ "$code" = 0 ]
      logs=$(cri logs "$CTR" 2>&1)
      check "crictl logs shows hello (got '$logs')" [ "$logs" = hello ]
      check "the CRI log file has the CRI format" grep -qE '^[0-9T:.+-]+Z? stdout F hello$' /var/log/pods/default_hello_uid-hello/hello/0.log
      cri ps -a
      cri pods
    else
      bad "crictl start"
    fi
  else
    bad "crictl create"
  fi
  t=$(up)
  teardown "$POD" || bad "stopp/rmp hello"
  echo "TIMING stopp+rmp $(since "$t") s"
  check "crictl pods is empty after rmp" [ -z "$(crictl pods -q)" ]
else
  bad "crictl runp --runtime tessera-xen"
fi
nothing_left "case A" "$S"

echo "=== case B: vGPU allocation, exec, stats, stop"
pod vgpu "\"tessera.dev/vgpu-allocation\":\"$ALLOC_JSON\""
ctr vgpu "$IMAGE" '["/bin/sleep","600"]'
if POD=$(cri runp --runtime tessera-xen "$W/vgpu-pod.json") && CTR=$(cri create "$POD" "$W/vgpu-ctr.json" "$W/vgpu-pod.json") && cri start "$CTR"; then
  check "container running" [ "$(state_of "$CTR")" = CONTAINER_RUNNING ]
  got=$(cri exec -s "$CTR" cat /run/tessera/vgpu.json)
  check "the VGpuClaim allocation written by the shim is readable in the guest (got '$got')" [ "$got" = "$ALLOC" ]
  # 40 KB of output: 31 chunks through xenstore. crictl prints stdout and then stderr, each
  # with Println, so blank lines are dropped before comparing with the same loop run here.
  # shellcheck disable=SC2016 # expanded by the shell that runs it
  loop='i=0; while [ $i -lt 2000 ]; do echo line-$i-abcdefghij; i=$((i+1)); done'
  sh -c "$loop" > "$W/big.want"
  t=$(up)
  cri exec -s "$CTR" sh -c "$loop" | grep -v '^$' > "$W/big.out"
  echo "  2000-line exec: $(wc -c < "$W/big.out") bytes in $(since "$t") s"
  check "large exec output arrives whole and in order ($(wc -l < "$W/big.out") lines, last: $(tail -1 "$W/big.out"))" \
    cmp -s "$W/big.out" "$W/big.want"
  # crictl exits 1 on a non-zero exec and prints the CRI client's "exited with N: <stderr>".
  if cri exec -s "$CTR" sh -c 'echo to-stderr >&2; exit 7' > "$W/exec7.out" 2>&1; then
    bad "a failing exec returned success"
  else
    check "exec exit code 7 and stderr pass through ($(tail -1 "$W/exec7.out"))" \
      grep -q 'exited with 7: to-stderr' "$W/exec7.out"
  fi
  # Restart the shim while the pod runs: it takes the pod back from its saved state.
  main_pid=${SHIM_PIDS# }
  main_pid=${main_pid%% *}
  kill "$main_pid"
  i=0
  while kill -0 "$main_pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  SHIM_PIDS=
  start_shim /var/log/tessera-shim-2.log "$SOCK" "$S" "$TESSERA_GUEST_INITRD" --boot-timeout-s 180 \
    --allow-allocation-annotation || bad "tessera-shim restart"
  check "after a shim restart the pod is listed again" sh -c "crictl pods -q | grep -q '^$POD'"
  check "after a shim restart the container is still running" [ "$(state_of "$CTR")" = CONTAINER_RUNNING ]
  got=$(cri exec -s "$CTR" cat /run/tessera/vgpu.json)
  check "after a shim restart exec still works" [ "$got" = "$ALLOC" ]
  cri stats --id "$CTR" || true
  check "crictl stats reports CPU for the domain" sh -c "crictl stats -o json --id $CTR | grep -q usageCoreNanoSeconds"
  t=$(up)
  cri stop --timeout 10 "$CTR" || bad "crictl stop"
  echo "TIMING stop (TERM) $(since "$t") s"
  code=$(exit_code_of "$CTR")
  check "TERM: exit code 143 (got '$code')" [ "$code" = 143 ]
  teardown "$POD" || bad "stopp/rmp vgpu"
else
  bad "runp/create/start vgpu"
fi
nothing_left "case B" "$S"

echo "=== case C: an image that cannot be pulled"
if out=$(cri pull 127.0.0.1:9/tessera/absent:1 2>&1); then
  bad "pulling from a closed port succeeded: $out"
else
  echo "  crictl pull: $out"
  check "crictl pull names the image" contains "$out" 'absent'
fi
pod nopull
ctr nopull 127.0.0.1:9/tessera/absent:1 '["/bin/true"]'
if POD=$(cri runp --runtime tessera-xen "$W/nopull-pod.json"); then
  if out=$(cri create "$POD" "$W/nopull-ctr.json" "$W/nopull-pod.json" 2>&1); then
    bad "create with an unpullable image succeeded: $out"
  else
    echo "  crictl create: $out"
    check "create fails naming the image" contains "$out" 'absent:1'
    check "create fails saying the pull failed" contains "$out" 'pull'
  fi
  teardown "$POD" || bad "stopp/rmp nopull"
else
  bad "runp nopull"
fi
nothing_left "case C" "$S"

echo "=== case D: a domain that fails to boot"
SB=/var/lib/tessera-shim-broken
tessera-shim image load "$TESSERA_FILES/busybox-oci" --name tessera.local/busybox --state-dir "$SB" > /dev/null ||
  bad "image load (broken shim)"
# Not an initramfs: the guest kernel finds no init and panics, so the domain crashes while booting.
if start_shim /var/log/tessera-shim-broken.log /run/tessera/shim-broken.sock "$SB" /etc/mke2fs.conf \
  --boot-timeout-s 90; then
  B="-r unix:///run/tessera/shim-broken.sock -i unix:///run/tessera/shim-broken.sock"
  pod broken
  ctr broken "$IMAGE" '["/bin/true"]'
  # shellcheck disable=SC2086 # $B is two flag pairs
  if POD=$(cri $B runp --runtime tessera-xen "$W/broken-pod.json"); then
    t=$(up)
    # shellcheck disable=SC2086
    if out=$(cri $B create "$POD" "$W/broken-ctr.json" "$W/broken-pod.json" 2>&1); then
      bad "create on a guest that cannot boot succeeded: $out"
    else
      echo "  crictl create after $(since "$t") s: $out"
      check "create fails saying the domain did not boot" contains "$out" 'crashed|died|shut down|timed out'
    fi
    # shellcheck disable=SC2086
    teardown "$POD" $B || bad "stopp/rmp broken"
  else
    bad "runp broken"
  fi
  nothing_left "case D" "$SB"
else
  bad "second shim did not start"
fi

echo "--- tessera-shim log (tail)"
tail -n 20 /var/log/tessera-shim.log
echo "--- tessera-shim log after the restart (tail)"
tail -n 20 /var/log/tessera-shim-2.log
echo "--- tessera-shim (broken guest) log (tail)"
tail -n 15 /var/log/tessera-shim-broken.log 2>/dev/null
for p in $SHIM_PIDS; do kill "$p" 2>/dev/null; done
if [ "$FAILED" = 0 ]; then echo "TESSERA-XEN-PART shim: PASS"; else echo "TESSERA-XEN-PART shim: FAIL"; fi
exit "$FAILED"
