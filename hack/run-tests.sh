#!/usr/bin/env bash
# The README's test command runs this: every test (unit, integration on the local control plane, real vLLM engine).
# One cluster for the whole run (the `cluster` fixture), engines started as few times as the tests allow.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# Lint and types first: a few seconds, and a failure here is cheaper to read than one 40 minutes in.
if [[ $# -eq 0 ]]; then
  .venv/bin/ruff check . || { echo "[run-tests] ruff found problems (fix them, or .venv/bin/ruff check --fix .)" >&2; exit 1; }
  .venv/bin/mypy || { echo "[run-tests] mypy found type errors" >&2; exit 1; }
fi
.venv/bin/python -m pytest --durations=25 "$@"
rc=$?
echo "[run-tests] pytest exit code $rc after $(( $(date +%s) - start )) s" >&2
if [[ $rc -eq 5 ]]; then
  echo "[run-tests] no tests ran: that is a failure, not a pass" >&2
fi
exit $rc
