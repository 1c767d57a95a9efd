#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules into a cache outside the repository, keyed by
# version, so that a second run builds nothing. No container runtime runs here, so kind cannot; these binaries run
# under `kwokctl --runtime binary` instead. Prints each binary's build time.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
# etcd is the version Kubernetes' module graph requires (and its hack/lib/etcd.sh tests with); the build checks it.
ETCD_VERSION="v3.7.0"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CLI_UTILS_VERSION="${CLI_UTILS_VERSION:-v0.37.2}"   # kstatus: the reference status reader (Flux, kpt)
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.6.3}"  # the Gateway API CRDs the operator's HTTPRoutes are checked against
CACHE="${LLMOS_CACHE:-$HOME/.cache/llmos}"
BIN="$CACHE/bin"
export GOFLAGS="-mod=mod -buildvcs=false"
# The Go on the machine for every build: one toolchain, so kwok and helm reuse the k8s.io packages the
# Kubernetes build compiled (a downloaded toolchain would compile them all again into a cache of its own).
export GOTOOLCHAIN=local

log() { printf '[build-binaries] %s\n' "$*" >&2; }

# No debug information: the linker strips it anyway (-s -w), and not making it saves compile time.
GO_BUILD_FLAGS=(-trimpath -gcflags=all=-dwarf=false)

# build_in_module DIR OUT PACKAGE LDFLAGS: `go build` PACKAGE inside the throw-away module DIR.
build_in_module() {
  local dir="$1" out="$2" pkg="$3" ldflags="$4" start
  if [[ -x "$out" ]]; then return 0; fi
  log "building $(basename "$out") from $pkg (several minutes on a cold Go cache)…"
  start=$(date +%s)
  (cd "$dir" && go build "${GO_BUILD_FLAGS[@]}" -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $(( $(date +%s) - start )) s"
}

# build_together DIR LDFLAGS OUT=PACKAGE...: one `go build` of every command whose OUT is missing, inside the
# throw-away module DIR: the package graph is loaded and compiled once, and the links (single-threaded, the slow end
# of each) overlap with compiling the rest. -X flags for packages a binary does not link are ignored.
build_together() {
  local dir="$1" ldflags="$2" start pair out pkg name missing=() outs=() tmp
  shift 2
  for pair in "$@"; do
    out="${pair%%=*}" pkg="${pair#*=}"
    [[ -x "$out" ]] && continue
    missing+=("$pkg") outs+=("$out")
  done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  log "building ${outs[*]##*/} in one go build (about 9 minutes on 2 cores and a cold Go cache)…"
  start=$(date +%s)
  tmp="$CACHE/src/.out-$$"
  mkdir -p "$tmp"
  (cd "$dir" && go build "${GO_BUILD_FLAGS[@]}" -ldflags "-s -w $ldflags" -o "$tmp/" "${missing[@]}")
  for i in "${!missing[@]}"; do
    name=$(basename "${missing[$i]}")
    [[ "$name" =~ ^v[0-9]+$ ]] && name=$(basename "$(dirname "${missing[$i]}")")  # a major-version suffix: go names it after the element before
    mkdir -p "$(dirname "${outs[$i]}")"
    mv "$tmp/$name" "${outs[$i]}"
  done
  rmdir "$tmp"
  log "built ${outs[*]##*/} in $(( $(date +%s) - start )) s"
}

# write_go_mod FILE CONTENT: the throw-away module's go.mod, rewritten when this script asks for another one.
write_go_mod() {
  [[ -f "$1" && "$(cat "$1")" == "$2" ]] || printf '%s\n' "$2" > "$1"
}

k8s_minor() { local m="${K8S_VERSION#v1.}"; echo "${m%%.*}"; }

# The throw-away module of the Kubernetes build: k8s.io/kubernetes points its staging modules at ./staging/...; each is
# mapped to its published k8s.io/<name> module.
k8s_module() {
  local mod="$CACHE/src/k8s-$K8S_VERSION" staging="v0.${K8S_VERSION#v1.}" kmod
  mkdir -p "$mod"
  [[ -f "$mod/go.mod" ]] && return 0
  kmod=$(cd "$mod" && GOFLAGS= go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  {
    echo "module llmos.dev/k8s-build"
    echo "go 1.26"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[^ ]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p' "$kmod"
    echo ")"
  } > "$mod/go.mod.tmp"
  mv "$mod/go.mod.tmp" "$mod/go.mod"
}

# on_k8s_graph NAME MODULE@VERSION...: the throw-away module of NAME is the Kubernetes build's module graph plus
# MODULEs, so their k8s.io libraries are the versions Kubernetes is built with.
on_k8s_graph() {
  local name="$1" mod="$CACHE/src/$1-on-k8s-$K8S_VERSION" base="$CACHE/src/k8s-$K8S_VERSION" m requires=""
  shift
  k8s_module
  mkdir -p "$mod"
  for m in "$@"; do requires+=$(printf '\t%s %s\n' "${m%@*}" "${m#*@}"); requires+=$'\n'; done
  write_go_mod "$mod/go.mod" "$(printf 'module llmos.dev/%s-build\ngo 1.26\nrequire (\n\tk8s.io/kubernetes %s\n%s)\n' \
    "$name" "$K8S_VERSION" "$requires"; sed -n '/^replace (/,/^)/p' "$base/go.mod")"
  [[ -f "$mod/go.sum" || ! -f "$base/go.sum" ]] || cp "$base/go.sum" "$mod/go.sum"
  echo "$mod"
}

# The control plane (etcd, kube-apiserver, -controller-manager, -scheduler), kubectl, kwok and helm: one `go build` on
# one module graph, Kubernetes' plus kwok and helm. Each package compiles once, both cores stay busy to the end:
# 554 s cold on 2 cores, against 660–700 s for the four builds it replaces (Kubernetes beside etcd, then kwok, helm).
control_plane() {
  local k8s="$BIN/k8s-$K8S_VERSION" mod minor etcd_version
  minor=$(k8s_minor)
  mod=$(on_k8s_graph control-plane "sigs.k8s.io/kwok@$KWOK_VERSION" "helm.sh/helm/v3@$HELM_VERSION")
  etcd_version=$(cd "$mod" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
  if [[ "$etcd_version" != "$ETCD_VERSION" ]]; then
    log "Kubernetes $K8S_VERSION's module graph has etcd $etcd_version, this script pins $ETCD_VERSION: set ETCD_VERSION"
    return 1
  fi
  build_together "$mod" \
    "-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
    "$k8s/kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver" \
    "$k8s/kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager" \
    "$k8s/kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler" \
    "$k8s/kubectl=k8s.io/kubernetes/cmd/kubectl" \
    "$BIN/etcd-$ETCD_VERSION/etcd=go.etcd.io/etcd/server/v3" \
    "$BIN/kwok-$KWOK_VERSION-k8s$minor/kwok=sigs.k8s.io/kwok/cmd/kwok" \
    "$BIN/kwok-$KWOK_VERSION-k8s$minor/kwokctl=sigs.k8s.io/kwok/cmd/kwokctl" \
    "$BIN/helm-$HELM_VERSION-on-k8s-$K8S_VERSION/helm=helm.sh/helm/v3/cmd/helm"
}

# kstatus: hack/kstatus/main.go against a pinned sigs.k8s.io/cli-utils; the cache key includes the program's hash.
kstatus() {
  local src="$(cd "$(dirname "$0")" && pwd)/kstatus/main.go" sum
  sum=$(sha256sum "$src" | cut -c1-12)
  local dir="$BIN/kstatus-$CLI_UTILS_VERSION-$sum" mod="$CACHE/src/kstatus-$CLI_UTILS_VERSION-$sum"
  mkdir -p "$dir" "$mod"
  if [[ ! -f "$mod/go.sum" ]]; then
    cp "$src" "$mod/main.go"
    printf 'module llmos.dev/kstatus\ngo 1.26\nrequire sigs.k8s.io/cli-utils %s\n' "$CLI_UTILS_VERSION" > "$mod/go.mod"
    (cd "$mod" && go mod tidy)
  fi
  build_in_module "$mod" "$dir/kstatus" "." ""
}

# The Gateway API's standard CRDs (no binary): the module's config/crd/standard, copied out of the module cache.
gateway_api() {
  local dir="$BIN/gateway-api-$GATEWAY_API_VERSION" src
  [[ -f "$dir/standard-install.yaml" ]] && return 0
  mkdir -p "$dir"
  src=$(cd "$CACHE" && GOFLAGS= go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
        | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  for f in "$src"/config/crd/standard/*.yaml; do
    grep -q '^kind: CustomResourceDefinition' "$f" || continue  # (a ValidatingAdmissionPolicy ships beside them)
    cat "$f"; echo "---"
  done > "$dir/standard-install.yaml.tmp"
  mv "$dir/standard-install.yaml.tmp" "$dir/standard-install.yaml"
  log "Gateway API $GATEWAY_API_VERSION CRDs in $dir"
}

case "${1:-all}" in
  # What `llmos dev up` and the demo run (the chart rendered by helm).
  demo) control_plane ;;
  all) control_plane; kstatus; gateway_api ;;
  paths)
    echo "K8S_BIN=$BIN/k8s-$K8S_VERSION"; echo "ETCD_BIN=$BIN/etcd-$ETCD_VERSION"
    echo "KWOK_BIN=$BIN/kwok-$KWOK_VERSION-k8s$(k8s_minor)"; echo "HELM_BIN=$BIN/helm-$HELM_VERSION-on-k8s-$K8S_VERSION"
    echo "KSTATUS_BIN=$BIN/kstatus-$CLI_UTILS_VERSION-$(sha256sum "$(dirname "$0")/kstatus/main.go" | cut -c1-12)"
    echo "GATEWAY_API_CRDS=$BIN/gateway-api-$GATEWAY_API_VERSION/standard-install.yaml" ;;
  *) "$1" ;;
esac
