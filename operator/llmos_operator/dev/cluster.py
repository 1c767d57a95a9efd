"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the KWOK controller
started by `kwokctl --runtime binary` from binaries built from source (hack/build-binaries.sh), plus fake GPU nodes.

State lives under ~/.cache/llmos/kwok/clusters/<name>/ (kwokctl's work dir): kubeconfig.yaml and logs/*.log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
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
# What KWOK's fake pods do (become ready, slowly, never, crash-loop), chosen per test by the Model's source URI.
STAGES = Path(__file__).with_name("kwok-stages.yaml")
# A cluster whose kwok.yaml lacks it was made by an older `llmos dev up` (the newest change to dev/kwok-stages.yaml).
STAGES_MARK = "llmos.dev/test-hold"


class ClusterError(RuntimeError):
    pass


def port_in_use(port: int) -> bool:
    """Does something accept connections on this loopback port?"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


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


def has_llmos_stages(name: str = DEFAULT_CLUSTER) -> bool:
    """Was the cluster started with llmos's KWOK stages (dev/kwok-stages.yaml)?"""
    config = cluster_dir(name) / "kwok.yaml"
    return config.exists() and STAGES_MARK in config.read_text()


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


# The local control plane is sized for the scale benchmark (bench/scale.py, up to 10,000 ModelDeployments):
# - a Service range of 65,534 addresses: kube-apiserver's default is a /24, so the 255th Service failed with
#   "failed to allocate a serviceIP: range is full";
# - kwokctl's --disable-qps-limits: kube-controller-manager and kube-scheduler get --kube-api-qps=5000
#   --kube-api-burst=10000 instead of client-side limits of 20 and 50 requests/s, and the API server
#   --max-requests-inflight=0 --max-mutating-requests-inflight=0 --enable-priority-and-fairness=false. Measured
#   with 250 nodes: 300 plain 1-GPU Deployments were all available 75 s after the apply with the defaults (the
#   controller-manager's limiter: about 4 Deployments/s), 3 s after the apply ended with the limits lifted.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
AUDIT_LOG_MAX_MB = 100_000  # the scale benchmark's audit log is never rotated (see kwokctl_create_command)


def kwokctl_create_command(name: str, bins: Binaries, timeout: float, audit_policy: Path | None = None) -> list[str]:
    """The `kwokctl create cluster` command line for the binary runtime (apart from `up` so a unit test reads it)."""
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
        "--disable-qps-limits",
        "--extra-args", f"kube-apiserver=service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--config", str(STAGES),
        "--kubeconfig", os.devnull,  # leave ~/.kube/config alone; the cluster's own kubeconfig.yaml is used
        "--wait", f"{int(timeout)}s",
    ]
    if audit_policy is not None:  # the API server then writes logs/audit.log (the scale benchmark counts requests)
        # One file for the whole run: the API server otherwise rotates it at 100 MB, which a 10,000-deployment run
        # passes (its request counts came out 0).
        cmd += ["--kube-audit-policy", str(audit_policy),
                "--extra-args", f"kube-apiserver=audit-log-maxsize={AUDIT_LOG_MAX_MB}"]
    return cmd


def node_wait_timeout(count: int) -> float:
    """Seconds to wait for `count` fake nodes to turn Ready. KWOK takes them over one by one, so the wait grows with
    the pool: 60 s, plus 0.5 s per node beyond 100."""
    return 60.0 + 0.5 * max(0, count - 100)


def up(name: str = DEFAULT_CLUSTER, pools: tuple[NodePool, ...] = DEFAULT_POOLS, timeout: float = 120,
       node_timeout: float | None = None, audit_policy: Path | None = None) -> Path:
    """Start the cluster (or reuse a running one), make sure the fake nodes exist and are Ready; returns the
    kubeconfig path. Idempotent. ``node_timeout`` defaults to `node_wait_timeout` of the pools' size;
    ``audit_policy`` (applies when a cluster is created) turns on the API server's audit log."""
    bins = binaries()
    running = is_running(name, bins)
    if running and not has_llmos_stages(name):
        print(f"cluster {name!r} was made by an older `llmos dev up` (no llmos KWOK stages): recreating it",
              file=sys.stderr)
        running = False
    if not running:
        if cluster_dir(name).exists():
            # A stopped or half-created cluster: start from clean state rather than guess what survived.
            subprocess.run([str(bins.kwokctl), "delete", "cluster", "--name", name], env=_kwok_env(bins),
                           capture_output=True)
            shutil.rmtree(cluster_dir(name), ignore_errors=True)
        start = time.monotonic()
        result = subprocess.run(kwokctl_create_command(name, bins, timeout, audit_policy), env=_kwok_env(bins),
                                capture_output=True, text=True)
        if result.returncode != 0 or not is_running(name, bins):
            raise ClusterError(
                f"kwokctl could not start cluster {name!r} (exit {result.returncode}):\n{result.stderr.strip()}\n"
                f"{_log_tails(name)}"
            )
        print(f"cluster {name!r} started in {time.monotonic() - start:.1f} s", file=sys.stderr)
    if node_timeout is None:
        node_timeout = node_wait_timeout(sum(pool.count for pool in pools))
    ensure_nodes(name, pools, bins, timeout=node_timeout)
    return kubeconfig_path(name)


def kubectl(name: str, *args: str, bins: Binaries | None = None, input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    bins = bins or binaries(build=False)
    return subprocess.run([str(bins.kubectl), "--kubeconfig", str(kubeconfig_path(name)), *args],
                          input=input, capture_output=True, text=True, check=check)


def ensure_nodes(name: str, pools: tuple[NodePool, ...], bins: Binaries, timeout: float = 120) -> None:
    """Create (or update) the pools' nodes and wait until every one is Ready, watching the node list as a whole."""
    import yaml

    manifests = node_manifests(pools)
    result = kubectl(name, "apply", "--server-side", "--force-conflicts", "-f", "-", bins=bins,
                     input=yaml.safe_dump_all(manifests), check=False)
    if result.returncode != 0:
        raise ClusterError(f"could not create fake nodes: {result.stderr.strip()}")
    # Capacity is status: a node made by an older `llmos dev up` learns a new resource (ephemeral-storage) only so.
    status = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": m["metadata"]["name"]},
               "status": {k: m["status"][k] for k in ("capacity", "allocatable")}} for m in manifests]
    result = kubectl(name, "apply", "--server-side", "--force-conflicts", "--subresource=status",
                     "--field-manager=llmos-dev-nodes", "-f", "-", bins=bins, input=yaml.safe_dump_all(status),
                     check=False)
    if result.returncode != 0:
        raise ClusterError(f"could not set the fake nodes' capacity: {result.stderr.strip()}")
    start = time.monotonic()
    not_ready = wait_nodes_ready(kubeconfig_path(name), {m["metadata"]["name"] for m in manifests}, timeout)
    if not_ready:
        shown = ", ".join(sorted(not_ready)[:10]) + (", …" if len(not_ready) > 10 else "")
        raise ClusterError(f"{len(not_ready)} of {len(manifests)} fake nodes not Ready after {timeout:.0f} s "
                           f"({shown}); `llmos dev up --node-timeout` waits longer\n{_log_tails(name)}")
    if len(manifests) > 20:
        print(f"{len(manifests)} fake nodes Ready in {time.monotonic() - start:.1f} s", file=sys.stderr)


def node_is_ready(node: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def wait_nodes_ready(kubeconfig: Path, wanted: set[str], timeout: float) -> set[str]:
    """One LIST of the nodes, then one WATCH from its resourceVersion (listed again if the watch expires), until
    every name in ``wanted`` is Ready or ``timeout`` passes. Returns the names not Ready (empty on success)."""
    from kubernetes import client, watch
    from kubernetes import config as k8s_config

    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    not_ready = set(wanted)

    def see(node: dict, deleted: bool = False) -> None:
        node_name = node["metadata"]["name"]
        if node_name not in wanted:
            return
        if not deleted and node_is_ready(node):
            not_ready.discard(node_name)
        else:
            not_ready.add(node_name)

    try:
        while not_ready and time.monotonic() < deadline:
            listing = json.loads(core.list_node(_preload_content=False).data)  # type: ignore[attr-defined]
            for node in listing["items"]:
                see(node)
            version = listing["metadata"]["resourceVersion"]
            try:
                while not_ready and (left := deadline - time.monotonic()) > 0:
                    stream = watch.Watch().stream(core.list_node, resource_version=version, allow_watch_bookmarks=True,
                                                  timeout_seconds=max(1, int(min(left, 60))))
                    for event in stream:
                        node = api.sanitize_for_serialization(event["object"])
                        version = node["metadata"].get("resourceVersion") or version
                        if event["type"] != "BOOKMARK":
                            see(node, deleted=event["type"] == "DELETED")
                        if not not_ready or time.monotonic() > deadline:
                            break
            except client.ApiException as exc:
                if exc.status != 410:  # 410 Gone: the watch's resourceVersion expired; list again
                    raise
    finally:
        api.close()
    return not_ready


def down(name: str = DEFAULT_CLUSTER) -> bool:
    """Stop the cluster and remove its state. Returns False when there was nothing to stop."""
    if not cluster_dir(name).exists():
        return False
    stop_processes(name)
    bins = binaries(build=False)
    subprocess.run([str(bins.kwokctl), "delete", "cluster", "--name", name], env=_kwok_env(bins),
                   capture_output=True, text=True)
    shutil.rmtree(cluster_dir(name), ignore_errors=True)
    return True


def stop_processes(name: str, timeout: float = 15) -> None:
    """Stop every process started for this cluster: each left its pid in a ``*.pid`` file of the cluster's folder
    (dev/operator_process.py does), in a process group of its own."""
    for pid_path in cluster_dir(name).glob("*.pid"):
        try:
            pid = int(pid_path.read_text().strip())
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pid_path.unlink(missing_ok=True)
            continue
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        pid_path.unlink(missing_ok=True)


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
