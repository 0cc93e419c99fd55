#!/bin/bash
# Vendors the CRI runtime.v1 proto that tessera-shim is generated from (runtime-shim/build.rs).
# The version follows the control plane's kubelet (hack/versions.env: K8S_VERSION 1.34.x ->
# k8s.io/cri-api v0.34.x). The k8s-cri crate (0.11) predates UpdatePodSandboxResources (cri-api 0.33+),
# so the bindings are generated from the upstream file instead.
# usage: hack/vendor-cri-api.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/versions.env
. hack/versions.env
ver="v${K8S_VERSION#v}"; ver="v0.${ver#v1.}"
dst=runtime-shim/proto/runtime/v1/api.proto
dir=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/cri-api@${ver}" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -n "$dir" ] || { echo "vendor-cri-api: go mod download k8s.io/cri-api@${ver} gave no directory" >&2; exit 1; }
src="$dir/pkg/apis/runtime/v1/api.proto"
tmp=$(mktemp)
# Debian's protoc (3.21) predates the field option debug_redact (protobuf 22); it only changes how
# text formats print a field, not the wire format, so it is dropped here.
{ echo "// Vendored by hack/vendor-cri-api.sh from k8s.io/cri-api@${ver} pkg/apis/runtime/v1/api.proto."
  echo "// Do not edit. Changed: the [debug_redact = true] field options are removed (see the script)."
  sed -e 's/ *\[debug_redact = true\]//' "$src"; } > "$tmp"
if [ "${1:-}" = --check ]; then
  cmp -s "$tmp" "$dst" || { echo "vendor-cri-api: $dst is not k8s.io/cri-api@${ver}; run hack/vendor-cri-api.sh" >&2; rm -f "$tmp"; exit 1; }
  rm -f "$tmp"; echo "vendor-cri-api: $dst matches k8s.io/cri-api@${ver}"
else
  mv "$tmp" "$dst"; echo "$ver" > runtime-shim/proto/CRI_API_VERSION
  echo "vendor-cri-api: wrote $dst from k8s.io/cri-api@${ver}"
fi
