"""The Helm chart, with the helm built from source, against the real API server: it lints, installs the CRDs and
the operator with its RBAC, and the CRDs it carries are the generated ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from kubernetes import client

from tests.support.waiting import wait_for

CHART = Path(__file__).resolve().parents[2] / "helm" / "llmos"


def _helm(cluster, *args: str) -> subprocess.CompletedProcess:
    from llmos_operator.dev.cluster import binaries

    return subprocess.run([str(binaries(build=False).helm_bin), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=120)


def test_chart_lints_and_installs_the_operator(cluster):
    lint = _helm(cluster, "lint", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr

    rendered = _helm(cluster, "template", "llmos", str(CHART), "--namespace", "llmos-system")
    assert rendered.returncode == 0, rendered.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d}
    assert {"Deployment", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap"} <= kinds

    release = "llmos-helm-test"
    install = _helm(cluster, "upgrade", "--install", release, str(CHART), "--namespace", "llmos-helm-test",
                    "--create-namespace", "--set", "replicas=1", "--wait", "--timeout", "90s")
    try:
        assert install.returncode == 0, install.stdout + install.stderr
        apps = client.AppsV1Api(cluster.api)
        deployment = apps.read_namespaced_deployment(f"{release}-operator", "llmos-helm-test")
        command = deployment.spec.template.spec.containers[0].command
        assert command[:3] == ["llmos", "operator", "run"] and "--peering" in command
        ext = client.ApiextensionsV1Api(cluster.api)
        for crd in ("tenants.llmos.dev", "models.llmos.dev", "modeldeployments.llmos.dev",
                    "clusterkopfpeerings.kopf.dev"):
            wait_for(lambda: any(c.type == "Established" and c.status == "True"
                                 for c in ext.read_custom_resource_definition(crd).status.conditions or []),
                     message=f"CRD {crd} established")
        rules = client.RbacAuthorizationV1Api(cluster.api).read_cluster_role(f"{release}-operator").rules
        assert any("modeldeployments/status" in (r.resources or []) for r in rules)
    finally:
        _helm(cluster, "uninstall", release, "--namespace", "llmos-helm-test")
        client.CoreV1Api(cluster.api).delete_namespace("llmos-helm-test")
