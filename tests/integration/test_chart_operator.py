"""The default chart reconciles: `helm install` with default values, then two operator processes exactly as the
chart's two pods (its command line, configuration, environment, and a token of its ServiceAccount in an
in-cluster-style kubeconfig; never the admin kubeconfig). One holds the leader Lease and reconciles, the other waits;
killing the active one hands over within 30 s; `helm upgrade` to a new chart version with a new GPU class takes effect; a Tenant can be
deleted; `helm uninstall` leaves the CRDs and the tenants' objects.

Runs on the session's cluster with the session's operator stopped for its duration (two controllers would fight)."""

from __future__ import annotations

import shutil
import time

import yaml
from kubernetes import client

from tests.integration.chart import (
    CHART,
    ChartOperator,
    Release,
    forbidden_lines,
    helm,
    lease_holder,
    session_operator_paused,
    wait,
)
from tests.integration.conftest import Objects

FAILOVER_LIMIT = 30.0  # seconds from the active replica's death to the other one reconciling


def _operators(release: Release, tmp_path) -> list[ChartOperator]:
    kubeconfig = release.service_account_kubeconfig(tmp_path / "serviceaccount")
    config = tmp_path / "config.yaml"
    config.write_text(release.config_yaml())
    return [ChartOperator(release, kubeconfig, config, tmp_path / f"operator-{n}.log", hostname=f"{release.name}-{n}")
            for n in ("a", "b")]


def _ready(objects: Objects, name: str) -> bool:
    c = objects.condition("modeldeployments", name, "Ready")
    return bool(c and c["status"] == "True")


def test_default_chart_reconciles_fails_over_upgrades_and_uninstalls(cluster, crds, operator, namespace, tmp_path):
    release = Release(cluster, "llmos-chart", "llmos-chart")
    objects = Objects(cluster.api, namespace)
    operators: list[ChartOperator] = []
    with session_operator_paused(operator):
        try:
            helm(cluster, "install", release.name, str(CHART), "--namespace", release.namespace,
                 "--create-namespace", check=True)
            container = release.container()
            assert client.AppsV1Api(cluster.api).read_namespaced_deployment(
                release.fullname, release.namespace).spec.replicas == 2
            assert "--peering" not in container.command

            operators = _operators(release, tmp_path)
            for op in operators:
                op.start()
            wait(lambda: all(op.alive() for op in operators), 60, "both replicas answering their liveness probe")
            active = wait(lambda: next((op for op in operators if op.leads()), None), 30, "one replica leading")
            standby = next(op for op in operators if op is not active)
            assert standby.metric("llmos_operator_leader") == 0.0
            assert (lease_holder(cluster, release) or "").startswith(active.hostname + "_")

            # The active one reconciles: a Tenant, a Model and two deployments, one of them queued for quota.
            objects.tenant(gpus={"h100": 4})
            objects.model()
            objects.deployment("chat", replicas=1, count=4)
            objects.deployment("queued", replicas=1, count=4)
            wait(lambda: _ready(objects, "chat"), 90, "ModelDeployment chat Ready")
            objects.wait_condition("modeldeployments", "queued", "QuotaAdmitted", "False", timeout=30)
            assert standby.metric("llmos_reconcile_total") is None  # the standby runs no kopf, reconciles nothing
            assert not [line for line in standby.log().splitlines() if "llmos.controller" in line]

            # Failover: kill the active replica (SIGKILL, as when its node dies); the standby takes over and
            # reconciles a change made after the kill.
            active.kill()
            killed_at = time.monotonic()
            objects.delete("modeldeployments", "chat")
            wait(standby.leads, FAILOVER_LIMIT, "the standby taking the leader Lease over")
            took_over = time.monotonic() - killed_at
            assert (lease_holder(cluster, release) or "").startswith(standby.hostname + "_")
            wait(lambda: _ready(objects, "queued"), 60, "the new leader admitting the queued deployment")
            reconciled = time.monotonic() - killed_at
            print(f"failover: Lease taken over {took_over:.1f} s and the queued deployment Ready {reconciled:.1f} s "
                  "after the active replica was killed")
            assert took_over < FAILOVER_LIMIT

            # helm upgrade with a new GPU class: the ConfigMap changes, so do the pods (their template's checksum);
            # the restarted operator knows the class.
            before = client.AppsV1Api(cluster.api).read_namespaced_deployment(
                release.fullname, release.namespace).spec.template.metadata.annotations["checksum/config"]
            values = yaml.safe_load((CHART / "values.yaml").read_text())
            values["config"]["gpuClasses"]["a100"] = {"nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-A100"},
                                                      "memoryGiB": 80}
            (tmp_path / "upgrade.yaml").write_text(yaml.safe_dump({"config": values["config"]}))
            new_chart = tmp_path / "llmos"  # the next chart version
            shutil.copytree(CHART, new_chart)
            chart_yaml = yaml.safe_load((new_chart / "Chart.yaml").read_text())
            chart_yaml["version"] = chart_yaml["version"] + "-next.1"
            (new_chart / "Chart.yaml").write_text(yaml.safe_dump(chart_yaml))
            helm(cluster, "upgrade", release.name, str(new_chart), "--namespace", release.namespace,
                 "-f", str(tmp_path / "upgrade.yaml"), check=True)
            history = helm(cluster, "history", release.name, "--namespace", release.namespace, check=True).stdout
            assert f"llmos-{chart_yaml['version']}" in history and "deployed" in history, history
            after = client.AppsV1Api(cluster.api).read_namespaced_deployment(
                release.fullname, release.namespace).spec.template.metadata.annotations["checksum/config"]
            assert before != after
            assert "a100" in yaml.safe_load(release.config_yaml())["gpuClasses"]
            standby.stop()  # as the kubelet replaces the pods after the template changed
            standby.config_path.write_text(release.config_yaml())
            standby.start()
            wait(lambda: standby.leads(), 40, "the restarted replica leading again")
            objects.tenant(f"{namespace}-a100", gpus={"a100": 2}, namespaces=[f"{namespace}-a100"])
            objects.wait_condition("tenants", f"{namespace}-a100", "Ready", "True", timeout=30)

            # A Tenant can be deleted.
            objects.delete("tenants", f"{namespace}-a100")

            def tenant_gone():
                try:
                    objects.get("tenants", f"{namespace}-a100")
                    return False
                except client.ApiException as exc:
                    return exc.status == 404

            wait(tenant_gone, 30, "the deleted Tenant to disappear")

            forbidden = forbidden_lines(*(op.log() for op in operators))
            assert not forbidden, "the chart's RBAC refused the operator:\n" + "\n".join(forbidden[:20])
        finally:
            for op in operators:
                op.stop()
            uninstall = helm(cluster, "uninstall", release.name, "--namespace", release.namespace)

    # helm uninstall removed the operator and kept the CRDs and the tenants' objects.
    assert uninstall.returncode == 0, uninstall.stdout + uninstall.stderr
    ext = client.ApiextensionsV1Api(cluster.api)
    for crd in ("tenants.llmos.dev", "models.llmos.dev", "modeldeployments.llmos.dev"):
        ext.read_custom_resource_definition(crd)
    assert objects.get("tenants", namespace)
    assert objects.get("models", "m")
    assert objects.get("modeldeployments", "queued")
    objects.cleanup()
