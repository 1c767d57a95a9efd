"""GPU pods of tenant and released namespaces: every pod holding GPUs is accounted to an admitted reservation, or it
is a stray counted against the tenant, and a stray that is not leaving by itself is an intruder the operator removes
(core/gpu_pods.py decides; this reconciler reads the links the store lacks live, deletes, reports and asks admission
to count again). Key: ``("GPUPods", namespace)``, queued by pod and ReplicaSet events of the namespace.

The operator may delete pods and ReplicaSets in tenant namespaces for this (docs/security.md, "What the operator may
change"): an intruder's ReplicaSet would otherwise make the pod again. Every delete names the uid it judged, so an
object of the same name made meanwhile is not touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from ..api.names import LABEL_RELEASED
from ..core.gpu_pods import Accounting, Intruder, Lookup, account, orphan_maker
from .state import Context

log = logging.getLogger("llmos.controller.gpu_pods")


class GPUPodReconciler:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._lock = threading.Lock()
        self._counted: dict[str, frozenset[tuple[Any, ...]]] = {}  # namespace → what admission last counted

    def watched(self, namespace: str | None) -> bool:
        """Tenant namespaces and released ones (a released namespace may hold no GPU at all)."""
        ns = self.ctx.cache["Namespace"].get(namespace or "")
        labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
        return namespace in self.ctx.cache.ownership().owners or LABEL_RELEASED in labels

    def account(self, namespaces: Mapping[str, str | None], *, live: bool = False) -> Accounting:
        """The GPU pods of ``namespaces`` (namespace → owning tenant), accounted for. ``live``: read the links the
        store lacks from the API server (the reconciler does before deleting; admission does not, and counts
        them)."""
        cache = self.ctx.cache
        nodes = cache["Node"]
        live_deployments = {f"{ns}/{raw['metadata']['name']}": raw["metadata"].get("uid")
                            for ns in namespaces for raw in cache["ModelDeployment"].list(ns)
                            if not raw["metadata"].get("deletionTimestamp")}
        return account(
            [pod for ns in namespaces for pod in cache["Pod"].list(ns)],
            tenant_of=lambda ns: namespaces.get(ns), lookup_in=lambda ns: self._lookup(ns, live),
            live_deployments=live_deployments, config=self.ctx.config,
            node_labels=lambda name: ((nodes.get(name) or {}).get("metadata") or {}).get("labels"), complete=live,
        )

    def _lookup(self, namespace: str, live: bool) -> Lookup:
        def lookup(kind: str, name: str) -> Mapping[str, Any] | None:
            stored = self.ctx.cache[kind].get(name, namespace)
            if stored is None and live:
                return self.ctx.kube.get(kind, name, namespace)
            return stored
        return lookup

    def reconcile(self, namespace: str) -> None:
        if not self.watched(namespace):
            with self._lock:
                self._counted.pop(namespace, None)
            return
        tenant = self.ctx.cache.ownership().owners.get(namespace)
        accounting = self.account({namespace: tenant}, live=True)
        stored = self.ctx.cache["Namespace"].get(namespace) or {}
        if (stored.get("status") or {}).get("phase") != "Terminating":  # else everything in it is going anyway
            for intruder in accounting.intruders:
                self._remove(intruder, tenant)
        present = {pod["metadata"].get("uid") for pod in self.ctx.cache["Pod"].list(namespace)}
        self.ctx.state.removed_intruders(namespace, present)  # forgets those that are gone
        counted = frozenset((s.uid, s.gpu_class, s.gpus) for s in accounting.strays) | frozenset(
            (key, gpus) for key, (_, gpus) in accounting.held.items())
        with self._lock:
            changed = self._counted.get(namespace) != counted
            self._counted[namespace] = counted
        if changed:
            self.ctx.admit_again(namespace=namespace)

    def _remove(self, intruder: Intruder, tenant: str | None) -> None:
        """Delete the pod and, when its ReplicaSet is not llmos's own chain's, that ReplicaSet (it would make the pod
        again); an Event on the pod names why."""
        kube, ns = self.ctx.kube, intruder.namespace
        owner = intruder.owner
        if owner is not None and owner[0] == "ReplicaSet":
            rs = self.ctx.cache["ReplicaSet"].get(owner[1], ns) or kube.get("ReplicaSet", owner[1], ns)
            if orphan_maker(rs):
                kube.delete("ReplicaSet", owner[1], ns, uid=owner[2])
        removed = kube.delete("Pod", intruder.name, ns, uid=intruder.uid)
        if not removed:
            return
        self.ctx.state.removed_intruder(ns, intruder.uid, f"{ns}/{intruder.name} ({intruder.why}; removed)")
        held = f"{intruder.gpus} {intruder.gpu_class or 'unknown-class'} GPUs"
        log.warning("removed intruder pod %s/%s (%s): %s", ns, intruder.name, held, intruder.why)
        self.ctx.events({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": intruder.name, "namespace": ns, "uid": intruder.uid}}, "Warning", "IntruderRemoved",
            f"pod {intruder.name} holds {held} that no admitted ModelDeployment accounts for ({intruder.why}): "
            f"removed by llmos; GPUs in {'tenant ' + tenant if tenant else 'this namespace'} are given only through "
            "a ModelDeployment")
