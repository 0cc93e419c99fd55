#!/usr/bin/env bash
# Tessera on kind (needs Docker, kind, kubectl, helm, and a Rust toolchain; cannot run on the
# project's CI machines, which have no Docker). Builds the images from deploy/containers, loads them
# into a kind cluster, installs the chart, applies the samples and checks what kind can show.
#   e2e/kind/run.sh          create the cluster (if missing), run the lane, keep the cluster
#   e2e/kind/run.sh down     delete the cluster
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=tessera
NS=tessera-system
TAG=${TESSERA_TAG:-dev}
REG=ghcr.io/tessera-dev
ENGINE=${CONTAINER_ENGINE:-docker}
t0=$(date +%s)
lap() { echo "[kind] $1 ($(( $(date +%s) - t0 ))s)"; }

if [ "${1:-}" = down ]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi
for t in "$ENGINE" kind kubectl helm; do
  command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --config e2e/kind/kind-config.yaml --wait 120s
fi
lap "cluster $CLUSTER ready"
kubectl config use-context "kind-$CLUSTER" >/dev/null

# The images the chart deploys by default (the node agent and the shim exist once their crates do).
for c in operator node-agent gpu-proxy shim; do
  "$ENGINE" build -f "deploy/containers/$c.Containerfile" -t "$REG/tessera-$c:$TAG" .
  kind load docker-image --name "$CLUSTER" "$REG/tessera-$c:$TAG"
  lap "image tessera-$c built and loaded"
done

helm upgrade --install tessera charts/tessera -n "$NS" --create-namespace \
  --set global.imageTag="$TAG" --set global.imagePullPolicy=Never \
  --set gpuProxy.privileged=false --wait --timeout 5m
lap "chart installed"
kubectl -n "$NS" rollout status deploy/tessera-operator --timeout=120s
kubectl -n "$NS" rollout status ds/tessera-node-agent --timeout=180s
holder=$(kubectl -n "$NS" get lease tessera-operator -o jsonpath='{.spec.holderIdentity}')
echo "leader: $holder"
[ -n "$holder" ] || { echo "no operator holds the Lease" >&2; exit 1; }

kubectl apply -f deploy/samples/
lap "samples applied"
# Every sample gets a phase (Ready, or a clear reason such as NodeNotFound on kind).
for _ in $(seq 1 60); do
  missing=$(kubectl get sp,vgc -A -o jsonpath='{range .items[*]}{.metadata.name}={.status.phase}{"\n"}{end}' | grep -c '=$' || true)
  [ "$missing" = 0 ] && break
  sleep 2
done
kubectl get sp,grp,vgc,tn -A
kubectl get runtimeclass tessera-xen -o jsonpath='{.scheduling.nodeSelector}{"\n"}'
lap "done; delete the cluster with: e2e/kind/run.sh down"
