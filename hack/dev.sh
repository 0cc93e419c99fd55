#!/usr/bin/env bash
# make dev / make dev-down: a local control plane with Tessera's CRDs and the samples applied.
#   hack/dev.sh up     build, start etcd + kube-apiserver + kube-controller-manager on 127.0.0.1
#                      (state in .dev/cluster), install the CRDs, apply deploy/samples/*.yaml
#   hack/dev.sh down   stop every process `up` started, by PID
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cache/tessera/bin:$PATH
DIR=${TESSERA_DEV_DIR:-.dev/cluster}
BIN=${CARGO_TARGET_DIR:-target}/debug/tessera-e2e
t0=$(date +%s)
lap() { echo "[dev] $1 ($(( $(date +%s) - t0 ))s)"; }
case ${1:-up} in
  up)
    cargo build -q -p tessera-e2e --bin tessera-e2e
    lap "built tessera-e2e"
    samples=()
    for f in deploy/samples/*.yaml; do samples+=(--apply "$f"); done
    export_line=$("$BIN" --dir "$DIR" up --crds charts/tessera/crds "${samples[@]}")
    lap "control plane up, CRDs established, samples applied"
    kubeconfig=${export_line#export KUBECONFIG=}
    kubectl --kubeconfig "$kubeconfig" get sp,grp,vgc,tn -A
    cat <<TXT

Tessera's local control plane is running (logs: $DIR/logs). Next:
  $export_line
  kubectl get sp,grp,vgc,tn -A              # every kind, with its print columns
  kubectl explain storagepool.spec.zfs      # field documentation (defaults, mutability)
  kubectl apply -f deploy/samples/invalid/vgc-zero-memory.yaml   # see validation at work
  make dev-down                             # stop it
TXT
    ;;
  down)
    if [ -x "$BIN" ]; then
      "$BIN" --dir "$DIR" down
    else
      cargo run -q -p tessera-e2e --bin tessera-e2e -- --dir "$DIR" down
    fi
    ;;
  *) echo "usage: $0 up|down" >&2; exit 2;;
esac
