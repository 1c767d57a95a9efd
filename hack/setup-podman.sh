#!/usr/bin/env bash
# Installs what `make images` needs on a Debian/Ubuntu machine (podman, buildah, mmdebstrap, runc) and writes the
# containers.conf this kind of VM needs (runc, cgroupfs, no default ulimits: crun refuses hybrid cgroups, setrlimit
# is not permitted). Idempotent: does nothing when everything is in place. Machines with docker or a working podman
# skip it (LLMOS_SKIP_PODMAN_SETUP=1).
set -euo pipefail
CACHE="${LLMOS_CACHE:-$HOME/.cache/llmos}"
CONF="$CACHE/containers.conf"
log() { printf '[setup-podman] %s\n' "$*" >&2; }

if [[ "${LLMOS_SKIP_PODMAN_SETUP:-}" == 1 ]]; then exit 0; fi

missing=()
for tool in podman mmdebstrap runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  log "installing podman buildah mmdebstrap runc (missing: ${missing[*]})"
  start=$(date +%s)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    podman buildah mmdebstrap runc uidmap fuse-overlayfs >/dev/null
  log "installed in $(( $(date +%s) - start )) s"
fi

mkdir -p "$CACHE"
want='[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"'
if [[ ! -f "$CONF" || "$(cat "$CONF")" != "$want" ]]; then
  printf '%s\n' "$want" > "$CONF"
  log "wrote $CONF (use it with CONTAINERS_CONF=$CONF)"
fi
