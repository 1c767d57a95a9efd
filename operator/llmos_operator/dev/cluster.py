"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the KWOK controller
started by `kwokctl --runtime binary` from binaries built from source (hack/build-binaries.sh), plus fake GPU nodes.

State lives under ~/.cache/llmos/kwok/clusters/<name>/ (kwokctl's work dir): kubeconfig.yaml and logs/*.log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .nodes import DEFAULT_POOLS, NodePool, node_manifests

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
DEFAULT_CLUSTER = "llmos"
CONTROLLER_CREDENTIALS_FLAG = "use-service-account-credentials"


class ClusterError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("LLMOS_CACHE", Path.home() / ".cache" / "llmos"))


def kwok_workdir() -> Path:
    return cache_dir() / "kwok"


def cluster_dir(name: str = DEFAULT_CLUSTER) -> Path:
    return kwok_workdir() / "clusters" / name


def kubeconfig_path(name: str = DEFAULT_CLUSTER) -> Path:
    return cluster_dir(name) / "kubeconfig.yaml"


def logs_dir(name: str = DEFAULT_CLUSTER) -> Path:
    return cluster_dir(name) / "logs"


@dataclass(frozen=True)
class Binaries:
    k8s: Path
    etcd: Path
    kwok: Path
    helm: Path

    @property
    def kubectl(self) -> Path:
        return self.k8s / "kubectl"

    @property
    def helm_bin(self) -> Path:
        return self.helm / "helm"

    @property
    def kwokctl(self) -> Path:
        return self.kwok / "kwokctl"

    def missing(self) -> list[Path]:
        wanted = [self.k8s / n for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")]
        wanted += [self.etcd / "etcd", self.kwok / "kwok", self.kwok / "kwokctl", self.helm / "helm"]
        return [p for p in wanted if not os.access(p, os.X_OK)]


def binaries(build: bool = True) -> Binaries:
    """Paths of the pinned binaries; builds the missing ones first (minutes on a fresh machine, nothing after)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "paths"], check=True, capture_output=True, text=True).stdout
    paths = dict(line.split("=", 1) for line in out.split())
    bins = Binaries(Path(paths["K8S_BIN"]), Path(paths["ETCD_BIN"]), Path(paths["KWOK_BIN"]), Path(paths["HELM_BIN"]))
    if bins.missing() and build:
        subprocess.run(["bash", str(BUILD_SCRIPT), "all"], check=True)
    if bins.missing():
        raise ClusterError(f"missing binaries: {', '.join(map(str, bins.missing()))}; run `make binaries`")
    return bins


def _kwok_env(bins: Binaries) -> dict[str, str]:
    env = dict(os.environ)
    env["KWOK_WORKDIR"] = str(kwok_workdir())
    env["KWOK_KUBECTL_BINARY"] = str(bins.kubectl)
    env["KWOK_KUBE_BINARY_PREFIX"] = str(bins.k8s)
    return env


def is_running(name: str = DEFAULT_CLUSTER, bins: Binaries | None = None) -> bool:
    """True when the cluster's API server answers /readyz."""
    kubeconfig = kubeconfig_path(name)
    if not kubeconfig.exists():
        return False
    bins = bins or binaries(build=False)
    probe = subprocess.run(
        [str(bins.kubectl), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz", "--request-timeout=3s"],
        capture_output=True, text=True,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "ok"


def controllers_use_service_accounts(name: str = DEFAULT_CLUSTER) -> bool:
    """Was the cluster started with kube-controller-manager --use-service-account-credentials (by this version)?"""
    config = cluster_dir(name) / "kwok.yaml"
    return config.exists() and CONTROLLER_CREDENTIALS_FLAG in config.read_text()


def _log_tails(name: str, lines: int = 20) -> str:
    parts = []
    for log in sorted(logs_dir(name).glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def up(name: str = DEFAULT_CLUSTER, pools: tuple[NodePool, ...] = DEFAULT_POOLS, timeout: float = 120) -> Path:
    """Start the cluster (or reuse a running one), make sure the fake nodes exist and are Ready; returns the
    kubeconfig path. Idempotent."""
    bins = binaries()
    if not is_running(name, bins):
        if cluster_dir(name).exists():
            # A stopped or half-created cluster: start from clean state rather than guess what survived.
            subprocess.run([str(bins.kwokctl), "delete", "cluster", "--name", name], env=_kwok_env(bins),
                           capture_output=True)
            shutil.rmtree(cluster_dir(name), ignore_errors=True)
        start = time.monotonic()
        cmd = [
            str(bins.kwokctl), "create", "cluster", "--name", name, "--runtime", "binary",
            "--etcd-binary", str(bins.etcd / "etcd"),
            "--kube-apiserver-binary", str(bins.k8s / "kube-apiserver"),
            "--kube-controller-manager-binary", str(bins.k8s / "kube-controller-manager"),
            "--kube-scheduler-binary", str(bins.k8s / "kube-scheduler"),
            "--kwok-controller-binary", str(bins.kwok / "kwok"),
            "--kube-authorization", "--kube-admission",
            # Each controller acts as its own ServiceAccount (system:serviceaccount:kube-system:<controller>), as in
            # kubeadm clusters: the chart's GPU admission policy lets exactly the Deployment and ReplicaSet
            # controllers make llmos's GPU pods (isolation.controllerUsernames), not the admin's identity.
            "--extra-args", f"kube-controller-manager={CONTROLLER_CREDENTIALS_FLAG}=true",
            "--kubeconfig", os.devnull,  # leave ~/.kube/config alone; the cluster's own kubeconfig.yaml is used
            "--wait", f"{int(timeout)}s",
        ]
        result = subprocess.run(cmd, env=_kwok_env(bins), capture_output=True, text=True)
        if result.returncode != 0 or not is_running(name, bins):
            raise ClusterError(
                f"kwokctl could not start cluster {name!r} (exit {result.returncode}):\n{result.stderr.strip()}\n"
                f"{_log_tails(name)}"
            )
        print(f"cluster {name!r} started in {time.monotonic() - start:.1f} s", file=sys.stderr)
    ensure_nodes(name, pools, bins, timeout=timeout)
    return kubeconfig_path(name)


def kubectl(name: str, *args: str, bins: Binaries | None = None, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    bins = bins or binaries(build=False)
    return subprocess.run([str(bins.kubectl), "--kubeconfig", str(kubeconfig_path(name)), *args],
                          input=input, capture_output=True, text=True, check=check)


def ensure_nodes(name: str, pools: tuple[NodePool, ...], bins: Binaries, timeout: float = 120) -> None:
    import yaml

    manifests = node_manifests(pools)
    docs = yaml.safe_dump_all(manifests)
    result = kubectl(name, "apply", "--server-side", "--force-conflicts", "-f", "-", bins=bins, input=docs,
                     check=False)
    if result.returncode != 0:
        raise ClusterError(f"could not create fake nodes: {result.stderr.strip()}")
    names = [m["metadata"]["name"] for m in manifests]
    deadline = time.monotonic() + timeout
    while True:
        result = kubectl(name, "wait", "--for=condition=Ready", "--timeout=10s", *[f"node/{n}" for n in names],
                         bins=bins, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"fake nodes did not become Ready: {result.stderr.strip()}\n{_log_tails(name)}")


def down(name: str = DEFAULT_CLUSTER) -> bool:
    """Stop the cluster and remove its state. Returns False when there was nothing to stop."""
    if not cluster_dir(name).exists():
        return False
    from . import operator_process

    operator_process.stop(name)
    bins = binaries(build=False)
    subprocess.run([str(bins.kwokctl), "delete", "cluster", "--name", name], env=_kwok_env(bins),
                   capture_output=True, text=True)
    shutil.rmtree(cluster_dir(name), ignore_errors=True)
    return True


def status(name: str = DEFAULT_CLUSTER) -> str:
    if not cluster_dir(name).exists():
        return f"cluster {name!r}: not created (run `llmos dev up`)"
    bins = binaries(build=False)
    state = "running" if is_running(name, bins) else "stopped"
    lines = [f"cluster {name!r}: {state}", f"kubeconfig: {kubeconfig_path(name)}", f"logs: {logs_dir(name)}"]
    if state == "running":
        nodes = kubectl(name, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count", bins=bins,
                        check=False)
        lines.append(nodes.stdout.rstrip())
    return "\n".join(lines)
