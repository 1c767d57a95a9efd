"""`make demo`'s shared limit store: Valkey or Redis from Debian's packages (`make tools`) on a loopback port, its pid
in the cluster's folder (so `llmos dev down` stops it with the rest), and the operator configured to render it into
the model pods (``limits.storeURL``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import yaml

from . import cluster, platform

PORT = 6389


def start(name: str = cluster.DEFAULT_CLUSTER, port: int = PORT) -> str:
    """Start the store unless it runs; returns its URL."""
    url = f"redis://127.0.0.1:{port}"
    if cluster.port_in_use(port):
        return url
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise cluster.ClusterError("no valkey-server or redis-server: run `make tools`")
    folder = cluster.cluster_dir(name) / "limits-store"
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=(folder / "server.log").open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    (cluster.cluster_dir(name) / "limits-store.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 10
    while not cluster.port_in_use(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise cluster.ClusterError(f"the limit store did not start; see {folder / 'server.log'}")
        time.sleep(0.05)
    return url


def operator_config(name: str, url: str) -> Path:
    """The chart's operator configuration with the store, as a file for $LLMOS_OPERATOR_CONFIG."""
    path = Path(platform.operator_environment(name)["LLMOS_OPERATOR_CONFIG"])
    config = yaml.safe_load(path.read_text()) or {}
    config["limits"] = {"storeURL": url}
    out = path.with_name("operator-config-demo.yaml")
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out

