"""Fixtures shared by the integration and engine tests (a pytest plugin, loaded once by tests/conftest.py, so a run
has one platform install and one operator whichever folders it collects): what the Helm chart installs for the platform (CRDs, RBAC, tenant
roles, admission policies; llmos_operator.dev.platform), the operator running as its own process (`llmos operator
run`, exactly as a user starts it) with a token of the chart's operator ServiceAccount — never the admin's
kubeconfig, so the chart's RBAC is what the tests prove enough — and helpers to make objects."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from tests.support import processes
from tests.support.ports import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "llmos.dev", "v1alpha1"


class OperatorProcess:
    """The operator under test. `kill()` and `start()` let a test restart it mid-flight."""

    def __init__(self, kubeconfig: Path, log_dir: Path, cluster_name: str, *, standalone: bool = True,
                 name: str = "test"):
        """``standalone=False``: the process first waits for the leader Lease (kube/leader.py), as a replica of
        the chart's Deployment does; ``name`` tells the log files of several processes apart."""
        self.kubeconfig, self.log_dir, self.cluster_name = kubeconfig, log_dir, cluster_name
        self.standalone, self.name = standalone, name
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.starts = 0
        self.env: dict[str, str] = {}  # a test's overrides for the next start()

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"llmos-operator-{self.name}-{self.starts}.log"
        log = self.log_path.open("wb")
        from llmos_operator.dev import platform

        # The chart's configuration and namespace, as its Deployment gives them.
        # The production resync period (10 min): watches, not the safety net, must make every test pass.
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "LLMOS_RESYNC_SECONDS": "600",
               **platform.operator_environment(self.cluster_name), **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmos_operator.cli", "operator", "run", *(["--standalone"] * self.standalone),
             "--metrics-port", str(self.metrics_port), "--liveness", f"http://127.0.0.1:{self.health_port}/healthz"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        wait_for(self._alive, timeout=60, message="the operator's liveness endpoint")

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the operator exited with {self.proc.returncode}; see {self.log_dir}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        processes.kill(self.proc)

    def stop(self) -> None:
        processes.stop(self.proc, grace=15)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture(scope="session")
def crds(cluster):
    """The chart's CRDs, RBAC, tenant roles and admission policies (release `llmos` in `llmos-system`)."""
    install_platform(cluster.name)
    return True


def install_platform(cluster_name: str) -> None:
    """The release as the test run has it (again after a test, such as the demo's, installed the chart's defaults)."""
    from llmos_operator.dev import platform

    # The chart and image tests install further releases of llmos on this cluster; their operators write GPU
    # Deployments into tenant namespaces too, so this release's admission policies must know them as operators.
    others = [f"system:serviceaccount:{release}:{release}-operator" for release in ("llmos-chart", "llmos-image")]
    # A workload kind of a CRD (tests/support/hostile.py) under the GPU and tenant pod policies, as a platform lists
    # LeaderWorkerSet or RayCluster.
    from tests.support.hostile import GANG_WORKLOAD

    platform.install(cluster_name, values={"isolation": {"extraOperatorUsernames": others,
                                                         "extraGpuWorkloads": [GANG_WORKLOAD]}})


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster, crds) -> Path:
    """A kubeconfig with a token of the chart's operator ServiceAccount (server + CA + token, as in a pod)."""
    from llmos_operator.dev import platform

    return platform.operator_kubeconfig(cluster.name)


@pytest.fixture(scope="session")
def operator(cluster, operator_kubeconfig):
    from llmos_operator.dev import cluster as dev_cluster
    from llmos_operator.dev import operator_process

    # A demo operator on the same cluster would compete with the one under test.
    if operator_process.stop(cluster.name):
        print("stopped the demo operator of this cluster for the test run", file=sys.stderr)
    op = OperatorProcess(operator_kubeconfig, dev_cluster.logs_dir(cluster.name), cluster.name)
    op.start()
    yield op
    op.stop()


class Objects:
    """Create llmos objects in a test's namespace; tenants made here are deleted after the test."""

    def __init__(self, api: client.ApiClient, namespace: str, tenant_api: client.ApiClient | None = None):
        """``api``: the platform's (cluster admin) client, for Tenants and namespace annotations. ``tenant_api``:
        whose credentials make the namespaced objects (Models, ModelDeployments); default the same admin client."""
        self.platform = client.CustomObjectsApi(api)
        self.custom = client.CustomObjectsApi(tenant_api or api)
        self.tenant_core = client.CoreV1Api(tenant_api or api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.tenants: list[str] = []

    def tenant(self, name: str | None = None, *, gpus: dict | None = None, namespaces: list[str] | None = None,
               policy: dict | None = None, adopt: bool = True, **spec) -> dict:
        """A Tenant, as the platform team makes one. The test's namespaces already exist, so (``adopt``) the
        platform first annotates them for adoption. ``policy`` defaults to allowing unsigned models, since most
        tests serve fake weights; tests of signature policy pass their own."""
        name = name or self.namespace
        namespaces = namespaces if namespaces is not None else [self.namespace]
        if adopt:
            for ns in namespaces:
                try:
                    self.core.patch_namespace(ns, {"metadata": {"annotations": {"llmos.dev/adopt": name}}})
                except client.ApiException as exc:
                    if exc.status != 404:  # a namespace llmos will create
                        raise
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": name},
                "spec": {"namespaces": namespaces, "quota": {"gpus": gpus or {"h100": 8}},
                         "policy": policy if policy is not None else {"allowUnsignedModels": True}, **spec}}
        self.tenants.append(name)
        return self.platform.create_cluster_custom_object(GROUP, VERSION, "tenants", body)

    def model(self, name: str = "m", *, policy: str = "Disabled", uri: str = "hf://org/tiny", **spec) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": name},
                "spec": {"source": {"uri": uri}, "signature": {"policy": policy, **spec.pop("signature", {})}, **spec}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "models", body)

    def deployment(self, name: str, *, model: str = "m", replicas: int = 1, gpu_class: str = "h100",
                   count: int = 1, namespace: str | None = None, **spec) -> dict:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
                "spec": {"model": model, "replicas": replicas, "gpu": {"class": gpu_class, "count": count}, **spec}}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace or self.namespace,
                                                           "modeldeployments", body)

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict:
        if plural == "tenants":
            return self.platform.get_cluster_custom_object(GROUP, VERSION, plural, name)
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace or self.namespace, plural, name)

    def patch(self, plural: str, name: str, body: dict, namespace: str | None = None) -> dict:
        if plural == "tenants":
            return self.platform.patch_cluster_custom_object(GROUP, VERSION, plural, name, body)
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace or self.namespace, plural,
                                                          name, body)

    def delete(self, plural: str, name: str, namespace: str | None = None) -> None:
        if plural == "tenants":
            self.platform.delete_cluster_custom_object(GROUP, VERSION, plural, name)
        else:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace or self.namespace, plural, name)

    def condition(self, plural: str, name: str, type_: str, namespace: str | None = None) -> dict | None:
        try:
            obj = self.get(plural, name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)

    def wait_condition(self, plural: str, name: str, type_: str, status: str, reason: str | None = None,
                       timeout: float = 30, namespace: str | None = None) -> dict:
        def check():
            c = self.condition(plural, name, type_, namespace)
            if c and c["status"] == status and (reason is None or c["reason"] == reason):
                return c
            return None

        return wait_for(check, timeout=timeout, message=f"{plural}/{name} {type_}={status} ({reason or 'any'})")

    def cleanup(self) -> None:
        for name in self.tenants:
            try:
                self.delete("tenants", name)
            except client.ApiException:
                pass


@pytest.fixture
def objects(cluster, namespace, operator):
    objs = Objects(cluster.api, namespace)
    yield objs
    objs.cleanup()


def deployment_exists(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    try:
        apps.read_namespaced_deployment(name, namespace)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


__all__ = ["Objects", "OperatorProcess", "deployment_exists", "time"]
