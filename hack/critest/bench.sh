#!/bin/bash
# The latency tessera-shim adds to delegated (non-Xen) pods: the same crictl loop against
# containerd directly and through the shim, alternating, in one run (run.sh --bench starts both).
# usage: bench.sh CONTAINERD_ENDPOINT SHIM_ENDPOINT ITERATIONS IMAGE
# Measures, per endpoint:
#   - a pod lifecycle: runp, create, start, stop -t 0, rm, stopp, rmp (7 crictl calls), and
#   - a single cheap RPC: `crictl pods` (ListPodSandbox), where the shim's hop is the largest share.
# Each sample is one crictl process per call, as a kubelet-less user would see it. Two warm-up
# cycles per endpoint are dropped. Prints medians, means and the shim/direct ratios (goal <= 1.05).
set -euo pipefail
direct=$1 shim=$2 n=${3:-20} image=$4
W=$(mktemp -d /tmp/tessera-shim-bench.XXXXXX)
# crictl's warnings (cgroup_parent unset) go to a file, shown only when a call fails.
on_exit() {
  local rc=$?
  [ "$rc" = 0 ] || tail -20 "$W/crictl.err" >&2
  rm -rf "$W"
}
trap on_exit EXIT
# An explicit (empty) config: crictl otherwise warns on every call that /etc/crictl.yaml is absent.
: > "$W/crictl.yaml"
crictl_at() { local ep=$1; shift; crictl -c "$W/crictl.yaml" -r "$ep" -i "$ep" -t 60s "$@" 2>> "$W/crictl.err"; }
now_us() { echo $(( $(date +%s%N) / 1000 )); }

# cycle ENDPOINT TAG I: one pod lifecycle, prints microseconds.
cycle() {
  local ep=$1 tag=$2 i=$3 pod ctr t
  cat > "$W/pod.json" <<JSON
{"metadata":{"name":"bench-$tag-$i","namespace":"bench","uid":"bench-$tag-$i","attempt":0},
 "log_directory":"$W/logs","linux":{}}
JSON
  cat > "$W/ctr.json" <<JSON
{"metadata":{"name":"c"},"image":{"image":"$image"},"command":["sleep","60"],"log_path":"c.log","linux":{}}
JSON
  t=$(now_us)
  pod=$(crictl_at "$ep" runp "$W/pod.json")
  ctr=$(crictl_at "$ep" create "$pod" "$W/ctr.json" "$W/pod.json")
  crictl_at "$ep" start "$ctr" > /dev/null
  crictl_at "$ep" stop -t 0 "$ctr" > /dev/null
  crictl_at "$ep" rm "$ctr" > /dev/null
  crictl_at "$ep" stopp "$pod" > /dev/null
  crictl_at "$ep" rmp "$pod" > /dev/null
  echo $(( $(now_us) - t ))
}

# list ENDPOINT: one `crictl pods`, prints microseconds.
list() {
  local t
  t=$(now_us)
  crictl_at "$1" pods > /dev/null
  echo $(( $(now_us) - t ))
}

crictl_at "$direct" pull "$image" > /dev/null
for w in 1 2; do cycle "$direct" warm-d "$w" > /dev/null; cycle "$shim" warm-s "$w" > /dev/null; done
: > "$W/cycle.direct"; : > "$W/cycle.shim"; : > "$W/list.direct"; : > "$W/list.shim"
for i in $(seq "$n"); do
  # Alternate which side goes first so that drift in the machine's load hits both alike.
  if [ $((i % 2)) = 0 ]; then
    cycle "$direct" d "$i" >> "$W/cycle.direct"; cycle "$shim" s "$i" >> "$W/cycle.shim"
  else
    cycle "$shim" s "$i" >> "$W/cycle.shim"; cycle "$direct" d "$i" >> "$W/cycle.direct"
  fi
  for _ in 1 2 3 4 5; do list "$direct" >> "$W/list.direct"; list "$shim" >> "$W/list.shim"; done
done

python3 - "$W" "$n" <<'PY'
import statistics, sys
w, n = sys.argv[1], int(sys.argv[2])
def load(name):
    return [int(x) / 1000.0 for x in open(f"{w}/{name}").read().split()]
rows = []
for what, label in (("cycle", "pod lifecycle (7 crictl calls)"), ("list", "crictl pods (1 call)")):
    d, s = load(f"{what}.direct"), load(f"{what}.shim")
    md, ms = statistics.median(d), statistics.median(s)
    print(f"shim-bench: {label}: n={len(d)} each; containerd direct median {md:.1f} ms "
          f"(mean {statistics.mean(d):.1f}); through tessera-shim median {ms:.1f} ms "
          f"(mean {statistics.mean(s):.1f}); ratio shim/direct {ms / md:.3f}")
    rows.append(ms / md)
verdict = "met" if rows[0] <= 1.05 else "NOT met"
print(f"shim-bench: goal (lifecycle ratio <= 1.05): {verdict}")
PY
