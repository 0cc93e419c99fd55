#!/usr/bin/env bash
# make e2e: the user's path on a local control plane. helm install; the operator and node agent
# run as processes with the chart's ServiceAccount tokens (the agent in dry run: this machine's
# disks are not test disks); kubectl apply of the samples; then check that every StoragePool is
# Ready or reports a clear reason, that the agent's inventory lands, and that a VGpuClaim is
# allocated, bound to a pod and released. Everything it starts is stopped by PID at the end.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export PATH=$HOME/.cache/tessera/bin:$PATH
T0=$(date +%s)
STACK_DIR=$(mktemp -d /tmp/tessera-e2e.XXXXXX)
export STACK_BIN=${CARGO_TARGET_DIR:-target}/debug STACK_DIR
# shellcheck source=stack.sh
. hack/stack.sh
declare -a results
failed=0
pass() { results+=("ok    $1"); echo "ok: $1"; }
fail() { results+=("FAIL  $1"); echo "FAIL: $1" >&2; failed=1; }
lap() { echo "--- $1 ($(( $(date +%s) - T0 ))s)"; }
finish() {
  stack_down >/dev/null
  echo; echo "=== e2e checks"; printf '%s\n' "${results[@]}"
  echo "=== $(( $(date +%s) - T0 ))s"
  rm -rf "$STACK_DIR"
  exit $failed
}
trap finish EXIT

lap "build"
cargo build -q -p tessera-e2e -p tessera-operator -p tessera-node-agent || { fail "cargo build"; exit; }
lap "control plane, helm install, operator and node agent"
if stack_up; then pass "control plane up, chart installed, operator and node agent running, samples applied"
else fail "stack up"; exit; fi

# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do if "$@" >/dev/null 2>&1; then pass "$what"; return 0; fi; sleep 1; done
  fail "$what"; return 1
}
reason() { kubectl get sp "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'; }
reason_is() { local r; r=$(reason "$1"); for want in "${@:2}"; do [ "$r" = "$want" ] && return 0; done; return 1; }

lap "node agent inventory"
wait_for "node agent (SA token) published the inventory of $STACK_NODE" 60 \
  bash -c "kubectl get tn $STACK_NODE -o jsonpath='{.status.summary.disks}' | grep -q '[1-9]'"

lap "storage pools"
# md sample: the agent plans it and reports why it cannot apply here (no mdadm, or the sample's
# by-id disks do not exist), and the same for the LLM ZFS sample (no zpool here); the LVM sample
# selects a node labelled lvm-01, which does not exist here.
wait_for "scratch-raid6 reports a clear reason (ToolMissing or DeviceNotFound)" 60 reason_is scratch-raid6 ToolMissing DeviceNotFound
wait_for "llm reports a clear reason (ToolMissing or DeviceNotFound)" 60 reason_is llm ToolMissing DeviceNotFound
wait_for "datasets-lvm reports a clear reason (NodeNotFound)" 60 reason_is datasets-lvm NodeNotFound
kubectl get sp -o custom-columns='POOL:.metadata.name,PHASE:.status.phase,REASON:.status.conditions[?(@.type=="Ready")].reason,MESSAGE:.status.conditions[?(@.type=="Ready")].message' | sed 's/^/  /'

lap "vGPU claim"
# A GPU node's agent: its inventory (one H100) written with the node agent's token, as the agent on
# that node would; this machine has no GPU.
kubectl apply --server-side -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: gpu-01}
YAML
kubectl --kubeconfig "$STACK_DIR/node-agent.kubeconfig" apply --server-side --field-manager tessera-node-agent -f - >/dev/null <<'YAML'
apiVersion: tessera.dev/v1alpha1
kind: TesseraNode
metadata: {name: gpu-01}
spec: {nodeName: gpu-01}
YAML
kubectl --kubeconfig "$STACK_DIR/node-agent.kubeconfig" apply --server-side --field-manager tessera-node-agent --subresource status -f - >/dev/null <<'YAML'
apiVersion: tessera.dev/v1alpha1
kind: TesseraNode
metadata: {name: gpu-01}
status:
  inventory: {agentVersion: e2e, gpus: [{index: 0, uuid: GPU-gpu-01-0, model: NVIDIA H100 80GB HBM3, memory: 80Gi}]}
  summary: {disks: 0, gpus: 1}
YAML
wait_for "VGpuClaim llama-inference Allocated" 60 bash -c "[ \"\$(kubectl -n default get vgc llama-inference -o jsonpath='{.status.phase}')\" = Allocated ]"
gpu=$(kubectl -n default get vgc llama-inference -o jsonpath='{.status.allocation.gpuUUID}')
if [ "$gpu" = GPU-gpu-01-0 ]; then pass "allocated on gpu-01's H100"; else fail "allocated on gpu-01's H100 (got '$gpu')"; fi
kubectl -n default apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata:
  name: llama
  annotations: {tessera.dev/vgpu-claim: llama-inference}
spec:
  runtimeClassName: tessera-xen
  containers: [{name: app, image: registry.invalid/llama:1}]
YAML
wait_for "the claim is Bound to pod llama" 60 bash -c "[ \"\$(kubectl -n default get vgc llama-inference -o jsonpath='{.status.phase}')\" = Bound ]"
kubectl -n default delete pod llama --grace-period=0 --force >/dev/null 2>&1
wait_for "the claim is Released after the pod is deleted" 60 bash -c "[ \"\$(kubectl -n default get vgc llama-inference -o jsonpath='{.status.phase}')\" = Released ]"
if kubectl get tn gpu-01 -o jsonpath='{.metadata.annotations.tessera\.dev/vgpu-ledger}' | grep -q llama-inference; then
  fail "the ledger of gpu-01 no longer holds the claim"; else pass "the ledger of gpu-01 no longer holds the claim"; fi
kubectl get vgc -A | sed 's/^/  /'

lap "policy"
wait_for "GpuRaidPolicy default Accepted, selecting gpu-01" 60 \
  bash -c "kubectl get grp default -o jsonpath='{.status.nodes[*].nodeName}' | grep -q gpu-01"

lap "logs"
for c in operator node-agent; do
  if grep -qi forbidden "$STACK_DIR/logs/$c.log"; then grep -i forbidden "$STACK_DIR/logs/$c.log" | head -3; fail "$c log has no 'forbidden' (RBAC suffices)"
  else pass "$c log has no 'forbidden' (RBAC suffices)"; fi
done
