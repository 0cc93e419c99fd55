#!/usr/bin/env bash
# make dev / make dev-down: a newcomer's main job. A local control plane (etcd, kube-apiserver,
# kube-controller-manager on 127.0.0.1), Tessera's Helm chart installed, the operator and the node
# agent running as processes with the chart's ServiceAccount tokens (the agent in dry run: this
# machine's disks are not test disks), and the samples applied. State and logs in .dev/.
#   hack/dev.sh up     start (stops a previous run first)
#   hack/dev.sh down   stop every process `up` started, by PID
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cache/tessera/bin:$PATH
export STACK_DIR=${TESSERA_DEV_DIR:-$PWD/.dev} STACK_BIN=${CARGO_TARGET_DIR:-target}/debug
# shellcheck source=stack.sh
. hack/stack.sh
t0=$(date +%s)
lap() { echo "[dev] $1 ($(( $(date +%s) - t0 ))s)"; }
case ${1:-up} in
  up)
    stack_down >/dev/null 2>&1 || true
    cargo build -q -p tessera-e2e -p tessera-operator -p tessera-node-agent
    lap "built tessera-e2e, tessera-operator, tessera-node-agent"
    stack_up
    lap "control plane up, chart installed, operator and node agent running, samples applied"
    sleep 5
    kubectl get sp,grp,vgc,tn -A
    cat <<TXT

Tessera is running locally (logs: $STACK_DIR/logs, control plane: $STACK_DIR/cluster/logs). Next:
  export KUBECONFIG=$KUBECONFIG
  kubectl get sp,grp,vgc,tn -A                 # every kind with its print columns
  kubectl describe sp scratch-raid6            # why a pool is not Ready (the node agent runs in dry run)
  kubectl get tn $STACK_NODE -o yaml           # this machine's inventory, as the node agent sees it
  kubectl explain storagepool.spec.zfs         # field documentation (defaults, mutability)
  kubectl apply -f deploy/samples/invalid/vgc-zero-memory.yaml   # validation at work
  curl -s \$(cat $STACK_DIR/run/operator.metrics)/metrics | grep tessera_operator_
  make dev-down                                # stop it all
TXT
    ;;
  down)
    stack_down
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2;;
esac
