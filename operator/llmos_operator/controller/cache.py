"""What the controller watches and how it reads it: one informer per kind (llmos's children selected by the API
server through their label, kept as summaries), typed objects parsed once per resourceVersion and forgotten with the
object, who owns which namespace computed once per change of the Tenant or Namespace store, and the data of
ConfigMaps and Secrets read live only when their watched resourceVersion moved."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

from ..api.names import (
    API_KEY_SECRET_TYPE,
    LABEL_MANAGED_BY,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_TENANT,
    MANAGED_BY,
)
from ..api.types import GROUP, KINDS, VERSION, InvalidObject, Resource, Tenant, parse_as
from ..config import OperatorConfig
from ..core.api_keys import summarize_key_secret
from ..core.ownership import Ownership, ownership
from ..kube.client import KindPath, Kube
from ..kube.informer import Informer, Store
from .summaries import (
    autoscaler_summary,
    child_summary,
    deployment_summary,
    metadata_summary,
    namespace_summary,
    node_summary,
    pods_worth_keeping,
    replica_set_summary,
    without_managed_fields,
)

log = logging.getLogger("llmos.controller.cache")

LLMOS_KINDS: dict[str, KindPath] = {
    cls.KIND: (f"/apis/{GROUP}/{VERSION}", cls.PLURAL, cls.SCOPE == "Namespaced") for cls in KINDS.values()
}
EventHandler = Callable[[str, dict], None]


def build_store(kube: Kube, config: OperatorConfig, on: dict[str, EventHandler]) -> Store:
    """The informers, each calling ``on[<store name>]`` (when given) after its store changed."""
    children = LABEL_MODEL_DEPLOYMENT  # llmos's children only, selected by the API server

    def informer(name: str, kind: str, transform: Callable[[dict], dict | None], **kw: Any) -> Informer:
        return Informer(kube, kind, on_event=on.get(name), transform=transform, **kw)

    routes = {"HTTPRoute": informer("HTTPRoute", "HTTPRoute", child_summary, label_selector=children)} \
        if config.gateway.parent_refs else {}  # the Gateway API's CRDs exist only where a Gateway is configured
    return Store({
        **routes,
        "Tenant": informer("Tenant", "Tenant", without_managed_fields),
        "Model": informer("Model", "Model", without_managed_fields),
        "ModelDeployment": informer("ModelDeployment", "ModelDeployment", without_managed_fields),
        # Every namespace (a few thousand at most): tenants' and released ones, whose GPU pods are watched.
        "Namespace": informer("Namespace", "Namespace", namespace_summary),
        "Node": informer("Node", "Node", node_summary),
        # llmos's pods, and every pod asking for a GPU: an intruder carries no llmos label.
        "Pod": informer("Pod", "Pod", pods_worth_keeping(c.resource_name for c in config.gpu_classes.values())),
        "Deployment": informer("Deployment", "Deployment", deployment_summary, label_selector=children),
        # A rollback applies the template of the last complete rollout, which its ReplicaSet keeps.
        "ReplicaSet": informer("ReplicaSet", "ReplicaSet", replica_set_summary, label_selector=children),
        "Service": informer("Service", "Service", child_summary, label_selector=children),
        # A deployment's adapters ConfigMap and its Model's trust ConfigMaps (shared by the Model's deployments).
        "ConfigMap": informer("ConfigMap", "ConfigMap", child_summary,
                              label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"),
        "PodDisruptionBudget": informer("PodDisruptionBudget", "PodDisruptionBudget", child_summary,
                                        label_selector=children),
        # What Models are verified with, watched so a change re-verifies them: bundle ConfigMaps (any, as tenants
        # name them; metadata only: ~100 bytes each) and trusted-key Secrets of the operator's namespace only.
        "BundleConfigMap": informer("BundleConfigMap", "ConfigMap", metadata_summary, metadata_only=True),
        "KeySecret": informer("KeySecret", "Secret", metadata_summary, metadata_only=True,
                              namespace=config.operator_namespace),
        # API keys (Secrets of type llmos.dev/api-key, selected by the API server): kept as their hash, never
        # their plain text (core/api_keys.py).
        "ApiKeySecret": informer("ApiKeySecret", "Secret", _key_secret_summary,
                                 field_selector=f"type={API_KEY_SECRET_TYPE}"),
        # External autoscalers (KEDA makes HorizontalPodAutoscalers too): one on a ModelDeployment with
        # spec.autoscaling is reported and holds the count, rather than fighting llmos's autoscaler.
        "HorizontalPodAutoscaler": informer("HorizontalPodAutoscaler", "HorizontalPodAutoscaler",
                                            autoscaler_summary),
    })


def _key_secret_summary(secret: dict) -> dict | None:
    return summarize_key_secret(secret) if secret.get("type") == API_KEY_SECRET_TYPE else None


def owned_by(name: str) -> Callable[[dict], bool]:
    """A store filter: children (and pods) of the ModelDeployment ``name``."""
    return lambda obj: (obj["metadata"].get("labels") or {}).get(LABEL_MODEL_DEPLOYMENT) == name


def spec_version(obj: dict) -> Any:
    """What changes when someone changes an object's spec: its generation, where the kind has one (Deployment, PDB:
    status writes do not bump it), else its resourceVersion."""
    meta = obj.get("metadata") or {}
    return ("generation", meta["generation"]) if meta.get("generation") else ("rv", meta.get("resourceVersion"))


class Cache:
    """Typed reads of the store, for every reconciler (thread-safe)."""

    def __init__(self, store: Store, kube: Kube):
        self.store, self.kube = store, kube
        self._lock = threading.Lock()
        self._parsed: dict[tuple, tuple[str | None, Any]] = {}  # (type, ns, name) → (resourceVersion, parsed)
        self._ownership: tuple[tuple[int, int], Ownership] | None = None
        self._labelled: tuple[int, dict[str, str]] | None = None
        # ("ConfigMap" | "Secret", ns, name) → (resourceVersion, data, binaryData) of the last live read
        self._contents: LRUCache = LRUCache(maxsize=10_000)

    def __getitem__(self, kind: str) -> Informer:
        return self.store[kind]

    # Typed objects --------------------------------------------------------------------------------------------------

    def parse(self, cls: type, raw: dict | None) -> Any:
        """The typed form of a stored object, parsed once per resourceVersion (raises InvalidObject)."""
        if raw is None:
            return None
        meta = raw["metadata"]
        key = (cls.__name__, meta.get("namespace"), meta["name"])
        version = meta.get("resourceVersion")
        cached = self._parsed.get(key)
        if cached is not None and cached[0] == version and version is not None:
            return cached[1]
        parsed: Any = parse_as(cls, raw)
        with self._lock:
            self._parsed[key] = (version, parsed)
        return parsed

    def stored(self, cls: type[Resource], name: str, namespace: str | None = None) -> Any:
        """The typed object of kind ``cls.KIND`` from the store; None if absent or invalid (logged)."""
        raw = self.store[cls.KIND].get(name, namespace)
        if raw is None:
            self.forget(cls.__name__, namespace, name)
            return None
        try:
            return self.parse(cls, raw)
        except InvalidObject as exc:
            log.warning("invalid %s %s/%s: %s", cls.KIND, namespace, name, exc)
            return None

    def forget(self, type_name: str, namespace: str | None, name: str | None) -> None:
        """The object is gone: drop its parsed form."""
        with self._lock:
            self._parsed.pop((type_name, namespace, name), None)

    # Ownership ------------------------------------------------------------------------------------------------------

    def tenants(self) -> list[Tenant]:
        out = []
        for raw in self.store["Tenant"].list():
            try:
                out.append(self.parse(Tenant, raw))
            except InvalidObject as exc:  # the CRD schema should make this impossible; never crash on it
                log.warning("ignoring invalid Tenant: %s", exc)
        return out

    def labelled_namespaces(self) -> dict[str, str]:
        """Namespace → the tenant it is labelled for, computed once per change of the Namespace store (the usage
        meter reads it at every change of what it integrates). The same dict is returned until then: read only."""
        version = self.store["Namespace"].version
        memo = self._labelled
        if memo is not None and memo[0] == version:
            return memo[1]
        result = {n["metadata"]["name"]: n["metadata"]["labels"][LABEL_TENANT] for n in self.store["Namespace"].list()
                  if LABEL_TENANT in (n["metadata"].get("labels") or {})}
        self._labelled = (version, result)
        return result

    def terminating(self, namespace: str) -> bool:
        """Being deleted: the API server refuses every new object in it (403), so nothing is written there."""
        stored = self.store["Namespace"].get(namespace)
        return stored is not None and bool(stored["metadata"].get("deletionTimestamp")
                                           or (stored.get("status") or {}).get("phase") == "Terminating")

    def ownership(self) -> Ownership:
        """Who owns which namespace, computed once per change of the Tenant or Namespace store: every admission pass
        and Tenant reconcile reads it, and recomputing it each time (O(tenants)) made an idle operator with 1,000
        tenants busy."""
        version = (self.store["Tenant"].version, self.store["Namespace"].version)
        memo = self._ownership
        if memo is not None and memo[0] == version:
            return memo[1]
        result = ownership(self.tenants(), self.labelled_namespaces())
        self._ownership = (version, result)
        return result

    # Live reads of watched data -------------------------------------------------------------------------------------

    def read_watched(self, kind: str, store_name: str, name: str, namespace: str) -> tuple[dict, dict] | None:
        """(data, binaryData) of a ConfigMap or Secret the store watches (metadata only): read live only when its
        resourceVersion differs from the last read, or when the store has not heard of it (it may be new)."""
        meta = self.store[store_name].get(name, namespace)
        with self._lock:
            cached = self._contents.get((kind, namespace, name))
        if meta is not None and cached is not None and cached[0] == meta["metadata"].get("resourceVersion"):
            return cached[1], cached[2]
        live = self.kube.get(kind, name, namespace)
        with self._lock:
            if live is None:
                self._contents.pop((kind, namespace, name), None)
                return None
            data, binary = live.get("data") or {}, live.get("binaryData") or {}
            self._contents[(kind, namespace, name)] = (live["metadata"].get("resourceVersion"), data, binary)
        return data, binary

    def content_changed(self, kind: str, namespace: str | None, name: str, version: str | None) -> bool:
        """A watch event about a ConfigMap or Secret: is it another version than the one last read? (Then the read
        is forgotten.) An object never read counts as changed."""
        with self._lock:
            cached = self._contents.get((kind, namespace, name))
            if cached is not None and cached[0] == version:
                return False
            self._contents.pop((kind, namespace, name), None)
        return True
