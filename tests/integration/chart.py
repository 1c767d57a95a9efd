"""Helpers for the tests that install the Helm chart and run the operator exactly as the chart's pods would: with
the chart's command line, configuration and environment, and the chart ServiceAccount's token (never the admin
kubeconfig)."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client

from tests.support import processes
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "llmos"
GROUP, VERSION = "llmos.dev", "v1alpha1"


def helm(cluster, *args: str, check: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
    from llmos_operator.dev.cluster import binaries

    out = subprocess.run([str(binaries(build=False).helm_bin), "--kubeconfig", str(cluster.kubeconfig), *args],
                         capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


@dataclass
class Release:
    """An installed release: what its operator pods would run and with which identity."""

    cluster: object
    name: str
    namespace: str

    @property
    def fullname(self) -> str:
        return f"{self.name}-operator"

    def container(self) -> client.V1Container:
        deployment = client.AppsV1Api(self.cluster.api).read_namespaced_deployment(self.fullname, self.namespace)
        return deployment.spec.template.spec.containers[0]

    def config_yaml(self) -> str:
        cm = client.CoreV1Api(self.cluster.api).read_namespaced_config_map(f"{self.fullname}-config", self.namespace)
        return cm.data["config.yaml"]

    def token(self, duration: str = "2h") -> str:
        return self.cluster.kubectl("create", "token", self.fullname, "-n", self.namespace,
                                    f"--duration={duration}").stdout.strip()

    def api_server(self) -> tuple[str, bytes]:
        """The API server's URL and CA certificate, from the admin kubeconfig (its credentials are not used)."""
        kc = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        c = kc["clusters"][0]["cluster"]
        if "certificate-authority-data" in c:
            ca = base64.b64decode(c["certificate-authority-data"])
        else:
            ca = Path(c["certificate-authority"]).read_bytes()
        return c["server"], ca

    def service_account_kubeconfig(self, directory: Path) -> Path:
        """An in-cluster-style kubeconfig: the server, its CA and the ServiceAccount's token, nothing else."""
        server, ca = self.api_server()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(ca)
        path = directory / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": {"server": server,
                                                   "certificate-authority": str(directory / "ca.crt")}}],
            "users": [{"name": "sa", "user": {"token": self.token()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": self.namespace}}],
        }))
        return path


def chart_command(release: Release, config_path: Path, metrics_port: int, health_port: int) -> list[str]:
    """The chart's container command with the config path and the two ports of this process substituted (pods each
    have their own network namespace; processes on one machine do not)."""
    command = list(release.container().command)
    assert command[:3] == ["llmos", "operator", "run"], command
    args = command[3:]
    for flag, value in (("--config", str(config_path)), ("--metrics-port", str(metrics_port)),
                        ("--liveness", f"http://127.0.0.1:{health_port}/healthz")):
        args[args.index(flag) + 1] = value
    return [sys.executable, "-m", "llmos_operator.cli", "operator", "run", *args]


@dataclass
class ChartOperator:
    """One operator process as one of the chart's pods: its arguments, its environment, the SA token."""

    release: Release
    kubeconfig: Path
    config_path: Path
    log_path: Path
    hostname: str
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env.update(KUBECONFIG=str(self.kubeconfig), HOSTNAME=self.hostname, LLMOS_RESYNC_SECONDS="5")
        for var in self.release.container().env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from and var.value_from.field_ref and var.value_from.field_ref.field_path == \
                    "metadata.namespace":
                env[var.name] = self.release.namespace
        self.proc = subprocess.Popen(
            chart_command(self.release, self.config_path, self.metrics_port, self.health_port),
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def leads(self) -> bool:
        return self.metric("llmos_operator_leader") == 1.0

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        processes.kill(self.proc)

    def stop(self) -> None:
        processes.stop(self.proc, grace=15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def session_operator_paused(operator):
    """The session's operator stops while the chart's operators run (two controllers on one cluster would fight)."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


def forbidden_lines(*logs: str) -> list[str]:
    """Log lines where the API server refused the ServiceAccount something (a permission the chart lacks)."""
    return [line for log in logs for line in log.splitlines() if "403" in line and "orbidden" in line]


def lease_holder(cluster, release: Release) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(release.fullname, release.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.holder_identity


def wait(predicate, timeout: float, message: str, interval: float = 0.25):
    from tests.support.waiting import wait_for

    return wait_for(predicate, timeout=timeout, interval=interval, message=message)


__all__ = ["CHART", "ChartOperator", "Release", "chart_command", "forbidden_lines", "free_port", "helm",
           "lease_holder", "session_operator_paused", "time", "wait"]
