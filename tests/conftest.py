"""Shared fixtures: one local control plane per test run, a namespace per test.

The cluster is the real thing (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, KWOK) built from source
by hack/build-binaries.sh. A cluster already started by `llmos dev up` is reused and left running; otherwise the run
starts one and stops it at the end.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# The platform (CRDs, chart RBAC), the operator process and the `objects` helper: shared by tests/integration and
# tests/engine (the end-to-end rollout), registered here once so that a run starts one of each.
pytest_plugins = ["tests.support.cluster_fixtures", "tests.support.runtime_harness"]

_MARKER_BY_DIR = {"unit": "unit", "integration": "integration", "engine": "engine"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in _MARKER_BY_DIR.items():
            if folder in parts and not item.get_closest_marker(marker):
                item.add_marker(getattr(pytest.mark, marker))


@dataclass
class Cluster:
    name: str
    kubeconfig: Path
    api: object  # kubernetes.client.ApiClient

    def kubectl(self, *args: str, input: str | None = None, check: bool = True):
        from llmos_operator.dev import cluster as dev_cluster

        return dev_cluster.kubectl(self.name, *args, input=input, check=check)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    from kubernetes import config as k8s_config

    from llmos_operator.dev import cluster as dev_cluster

    name = os.environ.get("LLMOS_TEST_CLUSTER", dev_cluster.DEFAULT_CLUSTER)
    started_here = not dev_cluster.is_running(name, dev_cluster.binaries())
    kubeconfig = dev_cluster.up(name)
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield Cluster(name, kubeconfig, api)
    finally:
        api.close()
        if started_here and not os.environ.get("LLMOS_KEEP_CLUSTER"):
            dev_cluster.down(name)


@pytest.fixture
def namespace(cluster: Cluster, request) -> str:
    """A fresh namespace for one test, deleted afterwards (deletion is not awaited: names never repeat)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api)
    base = request.node.name.lower().replace("_", "-")
    name = f"t-{''.join(c for c in base if c.isalnum() or c == '-')[:40].strip('-')}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"llmos.dev/test": "1"})))
    # The namespace controller creates the default ServiceAccount; pods are refused until it exists.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException:
            time.sleep(0.2)
    yield name
    # Tenants claiming it go first, whatever the test did or failed to do: a leftover Tenant would make the namespace
    # again and keep GPUs of the fake nodes reserved for every later test of the session.
    custom = client.CustomObjectsApi(cluster.api)
    try:
        tenants = custom.list_cluster_custom_object("llmos.dev", "v1alpha1", "tenants")["items"]
    except client.ApiException:
        tenants = []  # no CRDs in this session
    for tenant in tenants:
        if any(ns == name or ns.startswith(name + "-") for ns in tenant.get("spec", {}).get("namespaces", [])):
            try:
                custom.delete_cluster_custom_object("llmos.dev", "v1alpha1", "tenants", tenant["metadata"]["name"])
            except client.ApiException:
                pass
    core.delete_namespace(name, propagation_policy="Background")
