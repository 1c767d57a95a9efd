#!/usr/bin/env bash
# Builds the local control plane's binaries from their Go modules into a cache outside the repository, keyed by
# version, so that a second run builds nothing. No container runtime runs here, so kind cannot; these binaries run
# under `kwokctl --runtime binary` instead. Prints each binary's build time.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
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

# build_in_module DIR OUT PACKAGE LDFLAGS: `go build` PACKAGE inside the throw-away module DIR.
build_in_module() {
  local dir="$1" out="$2" pkg="$3" ldflags="$4" start
  if [[ -x "$out" ]]; then return 0; fi
  log "building $(basename "$out") from $pkg (several minutes on a cold Go cache)…"
  start=$(date +%s)
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv "$out.tmp" "$out"
  log "built $(basename "$out") in $(( $(date +%s) - start )) s"
}

# build_cmds_in_module DIR OUTDIR LDFLAGS PACKAGE...: one `go build` for several commands of one module: the
# package graph is loaded and compiled once, and the links (single-threaded, the slow end of each) overlap.
build_cmds_in_module() {
  local dir="$1" outdir="$2" ldflags="$3" start pkg missing=() tmp
  shift 3
  for pkg in "$@"; do [[ -x "$outdir/$(basename "$pkg")" ]] || missing+=("$pkg"); done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  log "building ${missing[*]##*/} (several minutes on a cold Go cache)…"
  start=$(date +%s)
  tmp="$outdir/.tmp-$$"
  mkdir -p "$tmp"
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "${missing[@]}")
  for pkg in "${missing[@]}"; do mv "$tmp/$(basename "$pkg")" "$outdir/"; done
  rmdir "$tmp"
  log "built ${missing[*]##*/} in $(( $(date +%s) - start )) s"
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

k8s() {
  local dir="$BIN/k8s-$K8S_VERSION" mod="$CACHE/src/k8s-$K8S_VERSION" minor
  minor=$(k8s_minor)
  mkdir -p "$dir"
  k8s_module
  local stamp="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  build_cmds_in_module "$mod" "$dir" "$stamp" k8s.io/kubernetes/cmd/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
}

# on_k8s_graph NAME MODULE@VERSION: the throw-away module of NAME is the Kubernetes build's module graph plus MODULE.
# Its k8s.io libraries are then the versions the Kubernetes build compiled, and are not compiled again: kwok and helm
# took 192 s in a cold `make demo` against their own k8s.io versions, and 37 s on this graph.
on_k8s_graph() {
  local mod="$CACHE/src/$1-on-k8s-$K8S_VERSION" base="$CACHE/src/k8s-$K8S_VERSION"
  k8s_module
  mkdir -p "$mod"
  write_go_mod "$mod/go.mod" "$(printf 'module llmos.dev/%s-build\ngo 1.26\nrequire (\n\tk8s.io/kubernetes %s\n\t%s %s\n)\n' \
    "$1" "$K8S_VERSION" "${2%@*}" "${2#*@}"; sed -n '/^replace (/,/^)/p' "$base/go.mod")"
  [[ -f "$mod/go.sum" || ! -f "$base/go.sum" ]] || cp "$base/go.sum" "$mod/go.sum"
  echo "$mod"
}

etcd() {
  local dir="$BIN/etcd-$ETCD_VERSION" mod="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$dir" "$mod"
  write_go_mod "$mod/go.mod" "$(printf 'module llmos.dev/etcd-build\ngo 1.26\nrequire go.etcd.io/etcd/server/v3 %s' "$ETCD_VERSION")"
  build_in_module "$mod" "$dir/etcd" "go.etcd.io/etcd/server/v3" ""
}

kwok() {
  local dir="$BIN/kwok-$KWOK_VERSION-k8s$(k8s_minor)" mod
  mkdir -p "$dir"
  mod=$(on_k8s_graph kwok "sigs.k8s.io/kwok@$KWOK_VERSION")
  build_cmds_in_module "$mod" "$dir" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
}

helm() {
  local dir="$BIN/helm-$HELM_VERSION-on-k8s-$K8S_VERSION" mod
  mkdir -p "$dir"
  mod=$(on_k8s_graph helm "helm.sh/helm/v3@$HELM_VERSION")
  build_in_module "$mod" "$dir/helm" "helm.sh/helm/v3/cmd/helm" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(k8s_minor) -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(k8s_minor)"
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
  # What `llmos dev up` and the demo run (the chart rendered by helm): k8s.io first, as the others reuse its
  # compiled packages (on_k8s_graph); etcd overlaps with it.
  demo) k8s & k8s_pid=$!; etcd; wait $k8s_pid; kwok; helm ;;
  all) k8s & k8s_pid=$!; etcd; wait $k8s_pid; kwok; helm; kstatus; gateway_api ;;
  paths)
    echo "K8S_BIN=$BIN/k8s-$K8S_VERSION"; echo "ETCD_BIN=$BIN/etcd-$ETCD_VERSION"
    echo "KWOK_BIN=$BIN/kwok-$KWOK_VERSION-k8s$(k8s_minor)"; echo "HELM_BIN=$BIN/helm-$HELM_VERSION-on-k8s-$K8S_VERSION"
    echo "KSTATUS_BIN=$BIN/kstatus-$CLI_UTILS_VERSION-$(sha256sum "$(dirname "$0")/kstatus/main.go" | cut -c1-12)"
    echo "GATEWAY_API_CRDS=$BIN/gateway-api-$GATEWAY_API_VERSION/standard-install.yaml" ;;
  *) "$1" ;;
esac
