"""The operator as a background process against the local cluster (for `make demo` and the tests), with a token of
the chart's operator ServiceAccount (dev.platform.operator_kubeconfig): the chart's RBAC, not the admin's rights.

One per cluster: its pid and log live in the cluster's folder, and `llmos dev down` stops it with the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import cluster, platform


def pid_file(name: str) -> Path:
    return cluster.cluster_dir(name) / "operator.pid"


def log_file(name: str) -> Path:
    return cluster.cluster_dir(name) / "logs" / "llmos-operator.log"


def running_pid(name: str) -> int | None:
    try:
        pid = int(pid_file(name).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(name: str, *, metrics_port: int = 9090, health_port: int = 8080, extra_env: dict | None = None,
          timeout: float = 60) -> subprocess.Popen | int:
    """Start the operator (standalone) unless one runs; wait until its liveness endpoint answers."""
    pid = running_pid(name)
    if pid is not None:
        return pid
    busy = sorted({port for port in (metrics_port, health_port) if cluster.port_in_use(port)})
    if busy:  # (else the liveness wait would take another process's answer for this one's)
        raise cluster.ClusterError(
            f"port {', '.join(map(str, busy))} is in use: another operator (of another cluster: `llmos dev down "
            f"--name <it>`), or another program (`ss -ltnp` names it)")
    log = log_file(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    platform.install(name)  # idempotent: the ServiceAccount and its RBAC must exist before its token
    # extra_env wins over the chart's environment (the demo gives its own configuration file)
    env = {**os.environ, "KUBECONFIG": str(platform.operator_kubeconfig(name)), **platform.operator_environment(name),
           **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmos_operator.cli", "operator", "run", "--standalone",
         "--metrics-port", str(metrics_port), "--liveness", f"http://127.0.0.1:{health_port}/healthz"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    pid_file(name).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise cluster.ClusterError(f"the operator exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    raise cluster.ClusterError(f"the operator did not answer its liveness probe within {timeout} s; see {log}")



def stop(name: str, timeout: float = 15) -> bool:
    """Stop the cluster's operator process (if it runs)."""
    if running_pid(name) is None:
        return False
    cluster.stop_processes(name, timeout)
    return True
