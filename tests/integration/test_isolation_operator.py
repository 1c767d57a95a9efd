"""Isolation by construction, the operator's side (issue 18), on the real control plane with the tenant's own token:
the operator writes only objects it created, and no GPU pod outlives the admission that allowed it.

The API server's policies stop these attacks first (test_isolation_policies.py). To show that the operator holds by
itself, the intruder tests take the platform's GPU policy binding and the namespace's GPU ResourceQuota away (as the
cluster admin: "a hole in the policies") and restore them afterwards; what the tenant does, it does with its token."""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client, watch

from tests.integration.conftest import Objects
from tests.support.tenant import make_user
from tests.support.waiting import wait_for

GPU_POD_SPEC = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always",
                    "resources": {"limits": {"nvidia.com/gpu": "4"}, "requests": {"cpu": "100m", "memory": "64Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
}
POLICY_PREFIX = "llmos-operator-"


@pytest.fixture
def as_tenant(cluster, namespace, objects, tmp_path):
    user = make_user(cluster.api, cluster.name, f"{namespace[:50]}-u", "tenant-admin", admin_of=[namespace],
                     workdir=tmp_path)
    tenant_objects = Objects(cluster.api, namespace, tenant_api=user.api)
    yield tenant_objects
    tenant_objects.cleanup()
    user.close()
    client.CoreV1Api(cluster.api).delete_namespace(f"{namespace[:50]}-u")


@pytest.fixture
def policy_hole(cluster, namespace):
    """Every llmos admission policy binding of tenant namespaces taken away, and this namespace's GPU quota on
    demand; the bindings are restored afterwards."""
    admission = client.AdmissionregistrationV1Api(cluster.api)
    bindings = [b for b in admission.list_validating_admission_policy_binding().items
                if b.metadata.name.startswith(POLICY_PREFIX) and b.metadata.name.endswith("-tenant")]
    for binding in bindings:
        admission.delete_validating_admission_policy_binding(binding.metadata.name)

    def drop_quota() -> None:
        try:
            client.CoreV1Api(cluster.api).delete_namespaced_resource_quota("llmos-tenant-quota", namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
    try:
        time.sleep(1)  # the API server's policy cache follows the deletion
        yield drop_quota
    finally:
        for binding in bindings:
            binding.metadata = client.V1ObjectMeta(name=binding.metadata.name, labels=binding.metadata.labels)
            admission.create_validating_admission_policy_binding(binding)


def _reservations(objects: Objects, namespace: str) -> dict:
    return objects.get("tenants", namespace).get("status", {}).get("reservations") or {}


def test_a_deployment_planted_by_the_tenant_gets_no_write_and_no_gpus(as_tenant, namespace, cluster):
    # Attack 2: the tenant makes a Deployment named like its ModelDeployment first (no GPUs, an extra init container
    # and a PYTHONPATH), then the ModelDeployment: the operator used to merge its GPU pod template into it.
    apps = client.AppsV1Api(as_tenant.custom.api_client)
    as_tenant.tenant(gpus={"h100": 8})
    as_tenant.model()
    planted = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "chat"}},
                 "template": {"metadata": {"labels": {"app": "chat"}}, "spec": {
                     "initContainers": [{"name": "inject", "image": "evil", "imagePullPolicy": "Always"}],
                     "containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always",
                                     "env": [{"name": "PYTHONPATH", "value": "/evil"}]}]}}},
    }
    apps.create_namespaced_deployment(namespace, planted)
    before = apps.read_namespaced_deployment("chat", namespace)
    as_tenant.deployment("chat", count=4)
    degraded = as_tenant.wait_condition("modeldeployments", "chat", "Degraded", "True", "ChildConflict", timeout=60)
    assert "Deployment chat exists and is not llmos's" in degraded["message"]
    admitted = as_tenant.wait_condition("modeldeployments", "chat", "QuotaAdmitted", "False", "ChildConflict")
    assert "no GPUs are reserved" in admitted["message"]
    assert f"{namespace}/chat" not in _reservations(as_tenant, namespace)
    after = apps.read_namespaced_deployment("chat", namespace)
    # Not one field written by llmos (the Deployment controller still writes its status).
    assert after.spec == before.spec and after.metadata.labels == before.metadata.labels
    assert not after.metadata.owner_references
    assert not [m for m in after.metadata.managed_fields or [] if m.manager == "llmos"]

    apps.delete_namespaced_deployment("chat", namespace)  # the tenant gives up: llmos makes its own
    as_tenant.wait_condition("modeldeployments", "chat", "QuotaAdmitted", "True", timeout=60)
    ours = wait_for(lambda: _llmos_deployment(apps, namespace, "chat"), timeout=60, message="llmos's Deployment")
    spec = ours.spec.template.spec
    assert not spec.init_containers and not any(e.name == "PYTHONPATH" for e in spec.containers[0].env or [])
    assert _reservations(as_tenant, namespace)[f"{namespace}/chat"]["gpus"] == 4


def _llmos_deployment(apps: client.AppsV1Api, namespace: str, name: str):
    try:
        dep = apps.read_namespaced_deployment(name, namespace)
    except client.ApiException:
        return None
    refs = dep.metadata.owner_references or []
    return dep if any(r.kind == "ModelDeployment" for r in refs) else None


def _watch_pods(core: client.CoreV1Api, namespace: str, seen: dict, stop: threading.Event) -> None:
    """When each pod was first seen created, scheduled and deleted (monotonic seconds)."""
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, namespace, timeout_seconds=120):
        pod, now = event["object"], time.monotonic()
        times = seen.setdefault(pod.metadata.name, {})
        times.setdefault("created", now)
        if pod.spec.node_name:
            times.setdefault("scheduled", now)
        if pod.metadata.deletion_timestamp or event["type"] == "DELETED":
            times.setdefault("deleted", now)
        if stop.is_set():
            w.stop()


def test_an_intruder_gpu_pod_is_counted_reported_and_removed_within_seconds(as_tenant, namespace, cluster,
                                                                         policy_hole):
    core = client.CoreV1Api(cluster.api)
    as_tenant.tenant(gpus={"h100": 8})
    wait_for(lambda: _quota_exists(core, namespace), timeout=30, message="the namespace's GPU quota written")
    policy_hole()  # and the GPU quota of the namespace
    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_pods, args=(core, namespace, seen, stop), daemon=True)
    watcher.start()
    time.sleep(0.5)
    tenant_core = as_tenant.tenant_core
    tenant_core.create_namespaced_pod(namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sneaky"},
                                                  "spec": GPU_POD_SPEC})
    wait_for(lambda: "deleted" in seen.get("sneaky", {}), timeout=30, message="the intruder removed")
    times = seen["sneaky"]
    held = times["deleted"] - times.get("scheduled", times["created"])
    print(f"intruder pod: deleted {times['deleted'] - times['created']:.2f} s after creation, "
          f"{held:.2f} s after it was scheduled")
    assert held <= 5
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=sneaky").items
    assert any(e.reason == "IntruderRemoved" for e in events)
    stop.set()


def test_an_orphaned_replica_set_loses_its_gpu_pods(as_tenant, namespace, cluster, policy_hole):
    # Attack 1 with the policies away: the finalizer `orphan` on llmos's Deployment, then the ModelDeployment deleted:
    # the garbage collector orphans the ReplicaSet, whose GPU pod would keep running outside any reservation.
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    tenant_apps = client.AppsV1Api(as_tenant.custom.api_client)
    as_tenant.tenant(gpus={"h100": 8})
    as_tenant.model()
    as_tenant.deployment("batch", count=4)
    as_tenant.wait_condition("modeldeployments", "batch", "Ready", "True", timeout=90)
    (rs,) = [r for r in apps.list_namespaced_replica_set(namespace).items if r.spec.replicas]
    (pod,) = core.list_namespaced_pod(namespace, label_selector="llmos.dev/model-deployment=batch").items
    tenant_apps.patch_namespaced_deployment("batch", namespace, {"metadata": {"finalizers": ["orphan"]}})
    as_tenant.delete("modeldeployments", "batch")
    wait_for(lambda: _gone_or_deleting(core, namespace, pod.metadata.name), timeout=60,
             message="the orphaned ReplicaSet's pod removed")
    wait_for(lambda: _gone_or_deleting_rs(apps, namespace, rs.metadata.name), timeout=30,
             message="the orphaned ReplicaSet removed")
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items
    assert any(e.reason == "IntruderRemoved" and "orphaned" in e.message for e in events)


def _quota_exists(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_resource_quota("llmos-tenant-quota", namespace)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _gone_or_deleting(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        return bool(core.read_namespaced_pod(name, namespace).metadata.deletion_timestamp)
    except client.ApiException as exc:
        return exc.status == 404


def _gone_or_deleting_rs(apps: client.AppsV1Api, namespace: str, name: str) -> bool:
    try:
        return bool(apps.read_namespaced_replica_set(name, namespace).metadata.deletion_timestamp)
    except client.ApiException as exc:
        return exc.status == 404


def test_a_per_class_backstop_tells_gpu_classes_apart(cluster, namespace):
    """What each namespace's ResourceQuota backstop holds, measured on the real API server: with one resource name for
    every class (nvidia.com/gpu, the device plugin's default) it bounds the number of GPUs, not their class; with the
    device plugin's per-class names (`llmos dev up --per-class-gpu-resources`, resourceName per GPU class) it bounds
    each class. (Not a tenant namespace: only the quota is under test here, no policy in front of it.)"""
    from llmos_operator.config import parse_config
    from llmos_operator.render.tenant import gpu_backstop

    core = client.CoreV1Api(cluster.api)
    per_class = parse_config({"gpuClasses": {
        "h100": {"nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "resourceName": "nvidia.com/h100"},
        "l4": {"nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-L4"}, "resourceName": "nvidia.com/l4"}}})

    def pod(name: str, resource: str, gpus: int) -> dict:
        spec = {"containers": [{"name": "c", "image": "x", "resources": {"limits": {resource: str(gpus)}}}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}

    def admitted(body: dict) -> bool:
        try:
            core.create_namespaced_pod(namespace, body)
            return True
        except client.ApiException as exc:
            assert exc.status == 403 and "exceeded quota" in exc.body, exc.body
            return False

    # The ledger reserves 4 H100 and no L4 in this namespace.
    def quota(hard: dict) -> dict:  # the GPU lines of the tenant's quota alone
        return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus"}, "spec": {"hard": hard}}

    hard = gpu_backstop(per_class, {"nvidia.com/h100": 4})
    assert hard == {"requests.nvidia.com/h100": "4", "requests.nvidia.com/l4": "0"}
    core.create_namespaced_resource_quota(namespace, quota(hard))
    wait_for(lambda: core.read_namespaced_resource_quota("gpus", namespace).status.hard, timeout=30,
             message="the quota observed")
    assert not admitted(pod("l4-grab", "nvidia.com/l4", 4))  # another class: refused
    assert admitted(pod("h100-own", "nvidia.com/h100", 4))
    assert not admitted(pod("h100-more", "nvidia.com/h100", 1))
    core.delete_namespaced_resource_quota("gpus", namespace)
    for name in ("h100-own",):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    # One name for every class: 4 GPUs reserved as H100 also let 4 "L4" GPUs in; the class is the operator's to check.
    shared = gpu_backstop(parse_config({}), {"nvidia.com/gpu": 4})
    assert shared == {"requests.nvidia.com/gpu": "4"}
    core.create_namespaced_resource_quota(namespace, quota(shared))
    wait_for(lambda: core.read_namespaced_resource_quota("gpus", namespace).status.hard, timeout=30,
             message="the quota observed")
    l4_pod = pod("any-class", "nvidia.com/gpu", 4)
    l4_pod["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert admitted(l4_pod)
    assert not admitted(pod("fifth", "nvidia.com/gpu", 1))
