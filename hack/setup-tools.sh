#!/usr/bin/env bash
# Servers the tests and `make demo` start themselves, from Debian's packages: Redis (the shared limit store of API
# keys; the API-compatible Valkey where the distribution has it) and Prometheus (metering). Idempotent.
set -euo pipefail
want=()
command -v valkey-server >/dev/null || command -v redis-server >/dev/null || want+=(redis-server)
command -v prometheus >/dev/null || want+=(prometheus)
if ((${#want[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup-tools: install ${want[*]} (apt-get install ${want[*]}) and run again" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
