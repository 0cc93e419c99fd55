#!/usr/bin/env bash
# Shared by `make dev` (hack/dev.sh) and `make e2e` (hack/e2e.sh): a local control plane with the
# Helm chart installed, and the operator and node agent running as processes with the chart's
# ServiceAccount tokens (there is no kubelet here to run the chart's pods). The node agent plays
# node `storage-01` (this machine) in dry run: this machine's disks are not test disks.
# Source it, set STACK_DIR (state) and STACK_BIN (folder with tessera-e2e, tessera-operator,
# tessera-node-agent), then call stack_up / stack_down.
NS=tessera-system
REL=tessera
STACK_NODE=storage-01

# sa_kubeconfig SA FILE: a kubeconfig that authenticates with SA's token only (needs KUBECONFIG).
sa_kubeconfig() {
  local token server
  server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
    | base64 -d >"$STACK_DIR/ca.crt"
  token=$(kubectl -n $NS create token "$1" --duration=24h)
  kubectl config --kubeconfig "$2" set-cluster cp --server "$server" --certificate-authority "$STACK_DIR/ca.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "$2" set-credentials sa --token "$token" >/dev/null
  kubectl config --kubeconfig "$2" set-context sa --cluster cp --user sa --namespace $NS >/dev/null
  kubectl config --kubeconfig "$2" use-context sa >/dev/null
}

# start NAME CMD...: run CMD in its own session, log to logs/NAME.log, PID in run/NAME.pid.
start() {
  local name=$1; shift
  setsid "$@" >"$STACK_DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STACK_DIR/run/$name.pid"
}

stack_up() {
  mkdir -p "$STACK_DIR/logs" "$STACK_DIR/run"
  local line port
  line=$("$STACK_BIN/tessera-e2e" --dir "$STACK_DIR/cluster" up) || return 1
  export KUBECONFIG=${line#export KUBECONFIG=}
  kubectl create namespace $NS >/dev/null
  helm install $REL charts/tessera -n $NS 2> >(grep -v 'walk.go:.*symbolic link' >&2) >/dev/null || return 1
  # This machine as node storage-01 (a Node object; no kubelet registers it here).
  kubectl apply --server-side -f - >/dev/null <<YAML || return 1
apiVersion: v1
kind: Node
metadata:
  name: $STACK_NODE
  labels: {tessera.dev/storage: "true"}
YAML
  sa_kubeconfig tessera-operator "$STACK_DIR/operator.kubeconfig"
  sa_kubeconfig tessera-node-agent "$STACK_DIR/node-agent.kubeconfig"
  # The operator with the flags of the chart's Deployment (read back from the installed object).
  mapfile -t opargs < <(kubectl -n $NS get deploy tessera-operator \
    -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}' | grep -v -e '^--listen=' -e '^--identity=')
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "127.0.0.1:$port" >"$STACK_DIR/run/operator.metrics"
  RUST_LOG=info,kube=warn start operator "$STACK_BIN/tessera-operator" --kubeconfig "$STACK_DIR/operator.kubeconfig" \
    --identity local "${opargs[@]}" --listen "127.0.0.1:$port"
  RUST_LOG=info start node-agent "$STACK_BIN/tessera-node-agent" run --node-name $STACK_NODE \
    --kubeconfig "$STACK_DIR/node-agent.kubeconfig" --dry-run --interval 10
  kubectl apply --server-side -f deploy/samples/ >/dev/null || return 1
}

# alive PID: running and not a zombie (an orphaned child may wait to be reaped by init).
alive() { [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat"; }

stack_down() {
  local name pid
  for name in node-agent operator; do
    pid=$(cat "$STACK_DIR/run/$name.pid" 2>/dev/null) || continue
    # Only signal the PID if it still runs our binary (PIDs are recycled).
    if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q "tessera-$name"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
      if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$STACK_DIR/run/$name.pid"
  done
  if [ -x "$STACK_BIN/tessera-e2e" ] && [ -d "$STACK_DIR/cluster" ]; then
    "$STACK_BIN/tessera-e2e" --dir "$STACK_DIR/cluster" down 2>/dev/null && echo "stopped the control plane" || true
  fi
}
