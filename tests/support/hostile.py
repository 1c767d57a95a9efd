"""A hostile tenant against the chart's admission policies (tests/integration/test_isolation_*.py and
test_tenancy_baseline.py): real Tenants whose namespaces the operator makes, the tenant's own credentials (a
ServiceAccount bound to the built-in `admin` ClusterRole in those namespaces only), the operator's identity for what
the operator writes, and objects that meet Pod Security `restricted` and the tenant pod rules, so that only the policy
under test refuses them. Fixtures are imported by the test modules (module scope: each module has its tenants)."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml
from kubernetes import client

from tests.support.tenant import Credentials, credentials_for_token, make_user
from tests.support.waiting import wait_for

GROUP, VERSION = "llmos.dev", "v1alpha1"
GPU = "nvidia.com/gpu"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
MANAGED = {"app.kubernetes.io/managed-by": "llmos"}
POLICY = "llmos-operator-"  # the release `llmos`'s policies are named llmos-operator-<policy>

# Tenant namespaces enforce Pod Security `restricted`: test pods meet it, so that only the policy under test refuses.
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

# A workload kind the chart does not know, listed in isolation.extraGpuWorkloads by the session's install
# (tests/support/cluster_fixtures.py): a leader and workers, each with a pod template (as LeaderWorkerSet has).
GANG_WORKLOAD = {"group": "test.llmos.dev", "version": "v1", "resource": "gangs",
                 "podSpecs": "[object.spec.leader.template.spec] + "
                             "object.spec.?workers.orValue([]).map(w, w.template.spec)"}
GANG_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gangs.test.llmos.dev"},
    "spec": {"group": "test.llmos.dev", "scope": "Namespaced",
             "names": {"plural": "gangs", "singular": "gang", "kind": "Gang", "listKind": "GangList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


def container(name: str, image: str = "registry.example/app:1", **extra) -> dict:
    """A container a tenant may run: restricted, pulls Always."""
    return {"name": name, "image": image, "imagePullPolicy": "Always", "securityContext": dict(RESTRICTED_CONTAINER),
            **extra}


def pod_spec(*containers: dict, **extra) -> dict:
    return {"securityContext": dict(RESTRICTED_POD), "containers": list(containers) or [container("app")], **extra}


def gpu_pod_spec(containers: int = 1) -> dict:
    return pod_spec(*[container(f"c{i}", "registry.example/cuda:12",
                                resources={"limits": {GPU: "8"}, "requests": {GPU: "8"}}) for i in range(containers)],
                    nodeSelector=dict(H100), tolerations=[dict(GPU_TOLERATION)])


def workload(kind: str, name: str, *, labels: dict | None = None, replicas: int = 1, pod: dict | None = None,
             template_labels: dict | None = None) -> dict:
    """A Pod or workload of `kind` (GPU pod spec unless `pod` says otherwise)."""
    labels = labels or {"app": name}
    template_labels = template_labels or labels
    pod = pod or gpu_pod_spec()
    template = {"metadata": {"labels": template_labels}, "spec": pod}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": pod}
    if kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"):
        spec = {"selector": {"matchLabels": template_labels}, "template": template}
        if kind != "DaemonSet":
            spec["replicas"] = replicas
        if kind == "StatefulSet":
            spec["serviceName"] = name
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "labels": labels}, "spec": spec}
    if kind == "ReplicationController":
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "labels": labels},
                "spec": {"replicas": replicas, "selector": template_labels, "template": template}}
    job_template = {"metadata": {"labels": template_labels}, "spec": {**pod, "restartPolicy": "Never"}}
    if kind == "Job":
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
                "spec": {"parallelism": 8, "template": job_template}}
    if kind == "CronJob":
        return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, "labels": labels},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": job_template}}}}
    if kind == "Gang":
        return {"apiVersion": "test.llmos.dev/v1", "kind": "Gang", "metadata": {"name": name, "labels": labels},
                "spec": {"leader": {"template": {"spec": pod_spec()}},
                         "workers": [{"template": {"spec": pod_spec()}}, {"template": template}]}}
    raise ValueError(kind)


def create(creds: Credentials, namespace: str, obj: dict) -> tuple[int, str]:
    """Create `obj` as `creds` (kubectl create, so any kind); (exit code, stderr)."""
    out = creds.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))
    return out.returncode, out.stderr


def assert_refused_by(stderr: str, policy: str, *needles: str) -> None:
    """Refused by `policy`'s validation itself (a CEL error would also deny, fail-closed: not what is tested)."""
    assert "denied request" in stderr and policy in stderr, stderr
    assert "resulted in error" not in stderr and "failed to evaluate" not in stderr.lower(), stderr
    for needle in needles:
        assert needle in stderr, stderr


def exists(read, *args) -> bool:
    try:
        read(*args)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


@pytest.fixture(scope="module")
def platform(cluster, crds):
    from llmos_operator.dev import platform as dev_platform

    return dev_platform


@pytest.fixture(scope="module")
def tenant_namespaces(cluster, platform, operator):
    """Three namespaces made by the operator for real Tenants: `hostile-<id>` owns the first two (16 H100), and
    `hostile-<id>-rc` the third, where the platform allows --trust-remote-code and exec (the operator labels it
    llmos.dev/allow-remote-code and llmos.dev/allow-exec from Tenant.spec.policy)."""
    core = client.CoreV1Api(cluster.api)
    custom = client.CustomObjectsApi(cluster.api)
    tenant = f"hostile-{uuid.uuid4().hex[:5]}"
    names = [f"{tenant}-{i}" for i in range(3)]
    tenants = {tenant: (names[:2], {"allowUnsignedModels": True}),
               f"{tenant}-rc": (names[2:], {"allowUnsignedModels": True, "allowRemoteCode": True,
                                             "allowExec": True})}
    for tenant_name, (namespaces, policy) in tenants.items():
        custom.create_cluster_custom_object(GROUP, VERSION, "tenants", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": tenant_name},
            "spec": {"namespaces": namespaces, "quota": {"gpus": {"h100": 16}}, "policy": policy}})
    for name in names:
        wait_for(lambda: exists(core.read_namespaced_service_account, "llmos-runtime", name), timeout=60,
                 message=f"the operator's runtime ServiceAccount in {name}")
        wait_for(lambda: exists(core.read_namespaced_service_account, "default", name), timeout=30,
                 message=f"default ServiceAccount in {name}")
    yield names
    for tenant_name in tenants:
        try:
            custom.delete_cluster_custom_object(GROUP, VERSION, "tenants", tenant_name)
        except client.ApiException:
            pass
    for name in [*names, f"{tenant}-home"]:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException:
            pass


@pytest.fixture(scope="module")
def tenant_admin(cluster, tenant_namespaces, tmp_path_factory) -> Credentials:
    home = tenant_namespaces[0].rsplit("-", 1)[0] + "-home"
    creds = make_user(cluster.api, cluster.name, home, "alice", admin_of=tenant_namespaces,
                      workdir=tmp_path_factory.mktemp("creds"))
    yield creds
    creds.close()


@pytest.fixture(scope="module")
def operator_identity(cluster, platform, tmp_path_factory) -> Credentials:
    kubeconfig = platform.operator_kubeconfig(cluster.name)
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    creds = credentials_for_token(cluster.name, token, tmp_path_factory.mktemp("op") / "kubeconfig",
                                  platform.operator_username())
    yield creds
    creds.close()


def model_deployment(name: str, args: list[str] | None = None, *, replicas: int = 1, count: int = 1) -> dict:
    spec = {"model": "m", "replicas": replicas, "gpu": {"class": "h100", "count": count}}
    if args is not None:
        spec["engine"] = {"extraArgs": args}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


# It declares an adapter, so that its deployments have an adapters ConfigMap (there only where adapters are declared).
UNSIGNED_MODEL = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "m"},
                  "spec": {"source": {"uri": "hf://org/m"}, "signature": {"policy": "Disabled"},
                           "adapters": [{"name": "sql", "source": {"uri": "hf://org/sql"}}]}}


def serve(cluster, creds: Credentials, namespace: str, name: str, *, replicas: int = 2, count: int = 8) -> None:
    """The tenant's ModelDeployment, admitted: the operator writes the Deployment (its identity, its labels); its
    ReplicaSet and pods are made by kube-controller-manager. Waits for its pods."""
    rc, err = create(creds, namespace, UNSIGNED_MODEL)
    assert rc == 0 or "AlreadyExists" in err, err
    rc, err = create(creds, namespace, model_deployment(name, replicas=replicas, count=count))
    assert rc == 0, err
    core = client.CoreV1Api(cluster.api)
    wait_for(lambda: len(core.list_namespaced_pod(namespace,
                                                  label_selector=f"llmos.dev/model-deployment={name}").items)
             == replicas, timeout=60, message=f"the llmos Deployment {name}'s pods (made by kube-controller-manager)")


__all__ = ["GANG_CRD", "GANG_WORKLOAD", "GPU", "GROUP", "MANAGED", "POLICY", "VERSION", "UNSIGNED_MODEL", "assert_refused_by",
           "container", "create", "exists", "gpu_pod_spec", "model_deployment", "operator_identity", "platform",
           "pod_spec", "serve", "tenant_admin", "tenant_namespaces", "workload"]
