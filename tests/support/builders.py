"""The objects tests make, as the API server would hold them (dicts): one set of builders for the in-memory API
(tests/support/memory_api.py) and the unit tests of the controller."""

from __future__ import annotations

from typing import Any

GROUP = "llmos.dev/v1alpha1"
T0 = "2026-01-01T00:00:00Z"


def tenant(name: str, namespaces: list[str], gpus: dict[str, int], *, priority: int = 0,
           policy: dict | None = None, **spec: Any) -> dict:
    return {"apiVersion": GROUP, "kind": "Tenant",
            "metadata": {"name": name, "uid": f"uid-tenant-{name}", "creationTimestamp": T0},
            "spec": {"namespaces": namespaces, "quota": {"gpus": gpus}, "priority": priority,
                     **({"policy": policy} if policy else {}), **spec},
            "status": {}}


def namespace(name: str, tenant_name: str | None = None, **labels: str) -> dict:
    all_labels = dict(labels)
    if tenant_name:
        all_labels["llmos.dev/tenant"] = tenant_name
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": all_labels}}


def unsigned_model(ns: str, name: str = "m", **spec: Any) -> dict:
    """A Model whose signature policy is Disabled and whose reconciler said so: servable where the tenant allows it."""
    return {"apiVersion": GROUP, "kind": "Model",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-model-{ns}-{name}", "generation": 1,
                         "creationTimestamp": T0},
            "spec": {"source": {"uri": "hf://a/b"}, "signature": {"policy": "Disabled"}, **spec},
            "status": {"observedGeneration": 1, "conditions": [
                {"type": "Verified", "status": "False", "reason": "SignatureDisabled", "message": "m",
                 "lastTransitionTime": T0}]}}


def model_deployment(ns: str, name: str, *, replicas: int = 1, gpus: int = 1, gpu_class: str = "h100",
                     model: str = "m", created: str = T0, **spec: Any) -> dict:
    return {"apiVersion": GROUP, "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-mdep-{ns}-{name}", "creationTimestamp": created},
            "spec": {"model": model, "replicas": replicas, "gpu": {"class": gpu_class, "count": gpus}, **spec},
            "status": {}}


def pod(ns: str, name: str, *, gpus: int = 0, labels: dict | None = None, phase: str = "Running",
        node: str | None = None, owner: dict | None = None, **spec: Any) -> dict:
    resources = {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "main", "image": "busybox", "resources": resources}],
                     **({"nodeName": node} if node else {}), **spec},
            "status": {"phase": phase}}


def gpu_node(name: str, product: str = "NVIDIA-H100-80GB-HBM3", gpus: int = 8) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product,
                                                  "nvidia.com/gpu.count": str(gpus)}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi", "pods": "110"}}}


def owner_ref(owner: dict, api_version: str) -> dict:
    """A controller ownerReference to ``owner`` (as stored: it has a uid)."""
    return {"apiVersion": api_version, "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def workload(kind: str, ns: str, name: str, *, labels: dict | None = None, owner: dict | None = None,
             replicas: int = 1) -> dict:
    """A Deployment or ReplicaSet with an empty pod template (what GPU pod accounting reads is its metadata)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta,
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels or {}},
                     "template": {"metadata": {"labels": labels or {}}, "spec": {"containers": []}}},
            "status": {}}
