"""The local cluster's command line for kwokctl and its node wait, without starting a cluster (the real thing is
exercised by every integration test run, and by `llmos dev up --nodes` with 250 nodes: see bench/README.md)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from llmos_operator.cli import build_parser
from llmos_operator.dev import cluster
from llmos_operator.dev.cluster import Binaries, kwokctl_create_command, node_is_ready, node_wait_timeout
from llmos_operator.dev.nodes import DEFAULT_POOLS, node_manifests

BINS = Binaries(Path("/b/k8s"), Path("/b/etcd"), Path("/b/kwok"), Path("/b/helm"))


def _extra_args(cmd: list[str]) -> dict[str, str]:
    out = {}
    for i, arg in enumerate(cmd):
        if arg == "--extra-args":
            component, key, value = cmd[i + 1].split("=", 2)
            out[f"{component}={key}"] = value
    return out


def test_the_api_server_gets_a_service_range_for_ten_thousand_services():
    cmd = kwokctl_create_command("c", BINS, 120)
    cidr = _extra_args(cmd)["kube-apiserver=service-cluster-ip-range"]
    # Less the network address, the broadcast address and the `kubernetes` Service.
    assert ipaddress.ip_network(cidr).num_addresses - 3 >= 10_000


def test_client_and_server_rate_limits_are_lifted():
    cmd = kwokctl_create_command("c", BINS, 120)
    assert "--disable-qps-limits" in cmd


def test_controllers_act_as_their_own_service_accounts():
    assert _extra_args(kwokctl_create_command("c", BINS, 120))[
        "kube-controller-manager=use-service-account-credentials"] == "true"


def test_the_binaries_built_from_source_are_used_and_no_kubeconfig_is_touched():
    cmd = kwokctl_create_command("c", BINS, 90)
    flags = dict(zip(cmd[3::1], cmd[4::1], strict=False))
    assert flags["--kube-apiserver-binary"] == "/b/k8s/kube-apiserver"
    assert flags["--etcd-binary"] == "/b/etcd/etcd"
    assert flags["--kwok-controller-binary"] == "/b/kwok/kwok"
    assert flags["--runtime"] == "binary" and flags["--name"] == "c"
    assert flags["--kubeconfig"] == "/dev/null"
    assert flags["--wait"] == "90s"
    assert "--kube-audit-policy" not in cmd
    audited = kwokctl_create_command("c", BINS, 90, audit_policy=Path("/p.yaml"))
    assert audited[audited.index("--kube-audit-policy") + 1] == "/p.yaml"
    # never rotated: a 10,000-deployment run writes more than the API server's default 100 MB
    assert _extra_args(audited)["kube-apiserver=audit-log-maxsize"] == "100000"


def test_the_node_wait_grows_with_the_pool():
    assert node_wait_timeout(10) == 60
    assert node_wait_timeout(250) > 120  # the fixed 120 s wait failed with 250 nodes
    assert node_wait_timeout(2500) > 10 * node_wait_timeout(250) / 2


def test_node_readiness_reads_the_ready_condition():
    ready = {"status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                       {"type": "Ready", "status": "True"}]}}
    assert node_is_ready(ready)
    assert not node_is_ready({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    assert not node_is_ready({"metadata": {"name": "n"}})


def test_dev_up_takes_a_node_timeout(monkeypatch):
    seen = {}
    monkeypatch.setattr(cluster, "up", lambda name, **kw: seen.update(name=name, **kw) or Path("/k"))
    args = build_parser().parse_args(["dev", "up", "--name", "x", "--node-timeout", "300"])
    assert args.func(args) == 0
    assert seen == {"name": "x", "node_timeout": 300.0, "pools": DEFAULT_POOLS}


def test_dev_up_can_advertise_gpus_per_class(monkeypatch):
    seen = {}
    monkeypatch.setattr(cluster, "up", lambda name, **kw: seen.update(name=name, **kw) or Path("/k"))
    args = build_parser().parse_args(["dev", "up", "--per-class-gpu-resources"])
    assert args.func(args) == 0
    resources = {p.name: p.gpu_resource for p in seen["pools"] if p.gpus}
    assert resources == {"h100": "nvidia.com/h100", "l4": "nvidia.com/l4"}
    nodes = {n["metadata"]["labels"]["llmos.dev/pool"]: n["status"]["allocatable"] for n in node_manifests(seen["pools"])}
    assert nodes["h100"]["nvidia.com/h100"] == "8" and "nvidia.com/gpu" not in nodes["h100"]


def test_fake_pods_get_loopback_addresses():
    """KWOK gives a node's pods addresses from its podCIDR: in 127.0.0.0/8, whatever connects to a fake pod (the
    operator's autoscaler) stays on this machine."""
    import ipaddress

    cidrs = [n["spec"]["podCIDR"] for n in node_manifests(DEFAULT_POOLS)]
    assert len(set(cidrs)) == len(cidrs)
    assert all(ipaddress.ip_network(c).subnet_of(ipaddress.ip_network("127.0.0.0/8")) for c in cidrs)


def test_the_demo_operator_refuses_a_port_another_program_holds(tmp_path, monkeypatch):
    """Else its liveness wait takes the other program's answer (an operator left by an earlier demo) for its own."""
    from llmos_operator.dev import operator_process

    monkeypatch.setenv("LLMOS_CACHE", str(tmp_path))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(cluster.ClusterError, match=f"port {port} is in use"):
            operator_process.start("no-such-cluster", metrics_port=port, health_port=port)


def test_the_operator_refuses_one_port_for_metrics_and_liveness(capsys):
    from llmos_operator import cli

    rc = cli.main(["operator", "run", "--metrics-port", "18093", "--liveness", "http://127.0.0.1:18093/healthz"])
    assert rc == 2
    assert "--metrics-port 18093 is also the port of --liveness" in capsys.readouterr().err


def test_free_ports_of_the_tests_are_never_handed_out_twice():
    from tests.support.ports import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
