#!/usr/bin/env bash
# Builds the pinned upstream Kubernetes tools from Go modules and caches each under
# ~/.cache/tessera/tools/<name>-<version>/<name>. Idempotent: a cached tool is never rebuilt.
#   hack/tools.sh            build every missing tool
#   hack/tools.sh path NAME  print the cached path of NAME (after building it if missing)
# Why Go modules and not release tarballs: this machine reaches only package registries.
# kube-apiserver & co. cannot be `go install`ed (k8s.io/kubernetes has replace directives), so a
# throwaway main module maps each staging module k8s.io/X to its published tag v0.MINOR.PATCH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"
CACHE=${TESSERA_CACHE:-$HOME/.cache/tessera}
TOOLS=$CACHE/tools
BUILD=$CACHE/build
export GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$TOOLS" "$BUILD"

ts() { date +%s; }
log() { echo "[tools] $*" >&2; }

version_of() {
  case $1 in
    kube-apiserver|kube-controller-manager|kubectl) echo "v$K8S_VERSION";;
    etcd) echo "$ETCD_VERSION";;
    helm) echo "$HELM_VERSION";;
    crictl|critest) echo "$CRI_TOOLS_VERSION";;
    kubeconform) echo "$KUBECONFORM_VERSION";;
    *) echo "unknown tool $1" >&2; return 1;;
  esac
}
tool_path() { local v; v=$(version_of "$1"); echo "$TOOLS/$1-$v/$1"; }

k8s_module() {
  local dir=$BUILD/k8s-$K8S_VERSION minor sv gov staging gomod
  minor=$(echo "$K8S_VERSION" | cut -d. -f2); sv=0.${K8S_VERSION#1.}
  case $minor in 32) gov=1.23.0;; 33|34) gov=1.24.0;; 35) gov=1.25.0;; *) gov=1.26.0;; esac
  mkdir -p "$dir"
  if [ ! -f "$dir/.ready" ]; then
    gomod=$(cd /tmp && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    staging=$(sed -n 's#^[[:space:]]*k8s.io/\([a-z-]*\) => ./staging/src/k8s.io/.*#\1#p' "$gomod")
    [ -n "$staging" ] || { log "could not read staging modules from $gomod"; return 1; }
    {
      echo "module tessera.local/k8s-tools"; echo; echo "go $gov"; echo
      echo "require k8s.io/kubernetes v$K8S_VERSION"; echo
      echo "tool ("
      for c in kube-apiserver kube-controller-manager kubectl; do echo "	k8s.io/kubernetes/cmd/$c"; done
      echo ")"; echo; echo "replace ("
      for m in $staging; do echo "	k8s.io/$m => k8s.io/$m v$sv"; done
      echo ")"
    } > "$dir/go.mod"
    (cd "$dir" && go get "k8s.io/kubernetes@v$K8S_VERSION" && go mod tidy)
    touch "$dir/.ready"
  fi
  echo "$dir"
}

build_k8s() {
  local name=$1 out dir minor ldf
  out=$(tool_path "$name"); dir=$(k8s_module)
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ldf="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf="$ldf -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  mkdir -p "$(dirname "$out")"
  (cd "$dir" && go build -trimpath -ldflags "$ldf" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name") && mv "$out.tmp" "$out"
}

build_etcd() {
  local out dir=$BUILD/etcd-$ETCD_VERSION; out=$(tool_path etcd)
  mkdir -p "$dir" "$(dirname "$out")"
  [ -f "$dir/go.mod" ] || printf 'module tessera.local/etcd\n\ngo 1.25.0\n' > "$dir/go.mod"
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go build -trimpath -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3) && mv "$out.tmp" "$out"
}

build_goinstall() { # name pkg ldflags
  local out; out=$(tool_path "$1"); mkdir -p "$(dirname "$out")"
  GOBIN=$(dirname "$out") go install -trimpath -ldflags "-s -w $3" "$2@$(version_of "$1")"
}

# cri-tools: `go install pkg@ver` is refused here (the proxy answers 403 to the module's version list,
# which go install reads for deprecation notices), so both tools build from a throwaway main module.
cri_module() {
  local dir=$BUILD/cri-tools-$CRI_TOOLS_VERSION
  mkdir -p "$dir"
  if [ ! -f "$dir/.ready" ]; then
    printf 'module tessera.local/cri-tools\n\ngo 1.24.1\n' > "$dir/go.mod"
    (cd "$dir" && go mod edit -require="sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" && go mod download sigs.k8s.io/cri-tools) >&2
    touch "$dir/.ready"
  fi
  echo "$dir"
}

build_crictl() {
  local out dir; out=$(tool_path crictl); dir=$(cri_module); mkdir -p "$(dirname "$out")"
  (cd "$dir" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}" -o "$out.tmp" sigs.k8s.io/cri-tools/cmd/crictl) && mv "$out.tmp" "$out"
}

build_critest() {
  local out dir; out=$(tool_path critest); dir=$(cri_module); mkdir -p "$(dirname "$out")"
  (cd "$dir" && go test -c -trimpath -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION#v}" -o "$out.tmp" sigs.k8s.io/cri-tools/cmd/critest) && mv "$out.tmp" "$out"
}

ensure() {
  local name=$1 p t0; p=$(tool_path "$name")
  mkdir -p "$CACHE/bin"
  if [ -x "$p" ]; then ln -sf "$p" "$CACHE/bin/$name"; return 0; fi
  t0=$(ts); log "building $name $(version_of "$name") (cold cache: minutes)"
  case $name in
    kube-apiserver|kube-controller-manager|kubectl) build_k8s "$name";;
    etcd) build_etcd;;
    helm) build_goinstall helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION";;
    # The checksum database has no entry for cri-tools (lookups answer 404 through the proxy), so
    # verification is off for these two; the module proxy still serves the published tag.
    crictl) GOSUMDB=off build_crictl;;
    kubeconform) build_goinstall kubeconform github.com/yannh/kubeconform/cmd/kubeconform "";;
    critest) GOSUMDB=off build_critest;;
  esac
  ln -sf "$p" "$CACHE/bin/$name"
  log "built $name in $(( $(ts) - t0 ))s -> $p"
}

ALL="etcd kube-apiserver kube-controller-manager kubectl helm crictl critest kubeconform"
case ${1:-all} in
  path) ensure "$2"; tool_path "$2";;
  all) for t in $ALL; do ensure "$t"; done
       log "all tools ready in $CACHE/bin";;
  *) for t in "$@"; do ensure "$t"; done;;
esac
