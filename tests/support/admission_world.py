"""An in-memory world for the controller's admission: Tenants, namespaces, Models (signature policy Disabled, so
servable) and ModelDeployments in a Store filled by hand, and a fake API that applies the writes an admission pass
makes (Tenant status as a JSON merge patch, ResourceQuotas, Events) to that store, as the watch would report them.
No cluster: for unit tests of what admission decides (tests/unit/test_admission_scope.py) and bench/admission.py."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from llmos_operator.config import default_config
from llmos_operator.handlers.controller import ADMISSION, Controller
from llmos_operator.handlers.store import Informer, Store

GROUP = "llmos.dev/v1alpha1"
T0 = "2026-01-01T00:00:00Z"
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)  # deployments are created a second apart from here


def _merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch, as the API server applies Kube.patch_status."""
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class FakeKube:
    """The writes an admission pass makes, applied to the store the way the watch would report them."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.writes: list[tuple] = []
        self.version = 1000

    def patch_status(self, kind, name, namespace, status, resource_version=None):
        obj = self.store[kind].get(name, namespace)
        assert resource_version is None or obj["metadata"]["resourceVersion"] == resource_version
        self.writes.append(("status", kind, namespace, name))
        self.version += 1
        obj = _merge(obj, {"status": status})
        obj["metadata"] = dict(obj["metadata"], resourceVersion=str(self.version))
        self.store[kind]._apply("MODIFIED", obj)
        return obj

    def apply(self, obj):
        self.writes.append(("apply", obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]))
        return obj

    def event(self, *args, **kwargs):
        self.writes.append(("event",))


class World:
    """Tenants, namespaces, Models (verified) and ModelDeployments in a store, and the controller reading it."""

    def __init__(self) -> None:
        self.kube = FakeKube()
        kinds = ("Tenant", "Model", "ModelDeployment", "Namespace", "Node", "Pod", "Deployment", "ReplicaSet",
                 "Service", "ConfigMap", "PodDisruptionBudget", "BundleConfigMap", "KeySecret")
        self.store = Store({k: Informer(None, k) for k in kinds})
        self.kube.store = self.store
        self.controller = Controller(self.kube, default_config(), store=self.store)
        self.version = 0
        self.created = 0

    def _put(self, kind: str, obj: dict, event: str = "ADDED") -> dict:
        self.version += 1
        obj["metadata"]["resourceVersion"] = f"w{self.version}"
        self.store[kind]._apply(event, obj)
        return obj

    def tenant(self, name: str, namespaces: list[str], quota: dict[str, int], priority: int = 0) -> None:
        old = self.store["Tenant"].get(name)
        obj = {"apiVersion": GROUP, "kind": "Tenant",
               "metadata": {"name": name, "uid": f"uid-{name}", "generation": 1, "creationTimestamp": T0},
               "spec": {"namespaces": namespaces, "quota": {"gpus": quota}, "priority": priority},
               "status": {}}
        if old is not None:
            obj["metadata"]["generation"] = old["metadata"]["generation"] + 1
            obj["status"] = old.get("status") or {}
        self._put("Tenant", obj, "MODIFIED" if old else "ADDED")
        for ns in namespaces:
            if self.store["Namespace"].get(ns) is None:
                self._put("Namespace", {"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": ns, "labels": {"llmos.dev/tenant": name}}})
                self._put("Model", {"apiVersion": GROUP, "kind": "Model",
                                    "metadata": {"name": "m", "namespace": ns, "uid": f"uid-m-{ns}", "generation": 1,
                                                 "creationTimestamp": T0},
                                    "spec": {"source": {"uri": "hf://a/b"}, "signature": {"policy": "Disabled"}},
                                    "status": {"observedGeneration": 1, "conditions": [
                                        {"type": "Verified", "status": "False", "reason": "SignatureDisabled",
                                         "message": "m", "lastTransitionTime": T0}]}})

    def deploy(self, ns: str, name: str, replicas: int, count: int, gpu_class: str) -> None:
        old = self.store["ModelDeployment"].get(name, ns)
        self.created += 1
        obj = {"apiVersion": GROUP, "kind": "ModelDeployment",
               "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}",
                            "generation": old["metadata"]["generation"] + 1 if old else 1,
                            "creationTimestamp": old["metadata"]["creationTimestamp"] if old
                            else (EPOCH + timedelta(seconds=self.created)).strftime("%Y-%m-%dT%H:%M:%SZ")},
               "spec": {"model": "m", "replicas": replicas, "gpu": {"class": gpu_class, "count": count}},
               "status": {}}
        self._put("ModelDeployment", obj, "MODIFIED" if old else "ADDED")
        self.controller.model_deployment_event("MODIFIED" if old else "ADDED", obj)

    def delete(self, ns: str, name: str) -> None:
        obj = self.store["ModelDeployment"].get(name, ns)
        self.store["ModelDeployment"]._apply("DELETED", obj)
        self.controller.model_deployment_event("DELETED", obj)

    def pod(self, ns: str, mdep: str, name: str, gpus: int, event: str = "ADDED") -> None:
        """A pod of ``mdep`` requesting ``gpus`` (a store summary, as the Pod informer keeps it); ``event``
        DELETED removes it."""
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": {"llmos.dev/model-deployment": mdep}},
               "spec": {"containers": [{"name": "runtime", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]},
               "status": {"phase": "Running"}}
        self._put("Pod", obj, event)
        self.controller.pod_event(event, obj)

    def run_admission(self) -> list[tuple]:
        before = len(self.kube.writes)
        self.controller.handle(ADMISSION)
        return [w for w in self.kube.writes[before:] if w[0] != "event"]
