"""Writing a ModelDeployment's children: server-side apply of what was rendered (skipped when the same rendering was
applied and nobody changed the stored child since), the Events of a rollout's phases, trust ConfigMaps collected once
nothing names them, and the one live read of a whole ReplicaSet a rollback needs."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Hashable, Mapping
from typing import Any

from cachetools import LRUCache
from kubernetes.client import ApiException

from ..api.names import LABEL_MODEL
from ..api.types import ModelDeployment
from ..core.errors import RenderError
from ..core.rollout import COMPLETE, ROLLED_BACK, ROLLING_OUT, ROLLOUT_STOPPED, RolloutPlan, template_hash
from ..kube.client import Gone, controller_uid, later_version, with_owner
from .cache import spec_version
from .state import Context
from .summaries import SUMMARY

# What is applied is applied again, unchanged, this often at most (a safety net for hand edits nobody watches).
REAPPLY_SECONDS = float(os.environ.get("LLMOS_REAPPLY_SECONDS", "3600"))


class ChildWriter:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._lock = threading.Lock()
        # (namespace, ModelDeployment) → {(kind, name) of a child: (digest of what was applied, the stored version it
        # produced, when)}; dropped with the deployment (a fixed cap, once 50,000, re-applied every child of a
        # 10,000-deployment fleet whenever it was reached)
        self._applied: dict[tuple[str, str], dict[tuple[str, str], tuple[str, Any, float]]] = {}
        # id of a rendered object → (the object, its digest); the object is kept so that its id is not reused
        self._digests: LRUCache = LRUCache(maxsize=20_000)
        # A Model's trust ConfigMap is shared by its deployments: written one at a time, and (namespace, name) → the
        # object as last written, which stands in for the store's until the watch brings it. Without both, the
        # deployments of one Model made together could each try to create it: refused as AlreadyExists, read again,
        # and charged to the namespace's ConfigMap quota until the quota controller recounts.
        self._shared_lock = threading.Lock()
        self._shared_written: LRUCache = LRUCache(maxsize=1_000)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._applied.pop((namespace, name), None)

    def apply(self, child: dict, owner_obj: Mapping[str, Any]) -> dict:
        """Write a ModelDeployment's child (its ownerReference names the deployment): created, or replaced whole if
        it is the deployment's own (``Kube.write_owned``: raises NotOwned for an object in the way that is not,
        Gone if it vanished meanwhile) — unless the same rendering was written already and the stored child has not
        been changed since (its generation, or resourceVersion for kinds without one; a hand edit of the spec is
        put back at once) and was last written within ``REAPPLY_SECONDS``: a reconcile woken by a pod or a status
        change then writes nothing. ``owner_obj``: the deployment, or the Model (its trust ConfigMap)."""
        if (child["metadata"].get("labels") or {}).get(LABEL_MODEL):
            with self._shared_lock:
                return self._apply(child, owner_obj, shared=True)
        return self._apply(child, owner_obj, shared=False)

    def _apply(self, child: dict, owner_obj: Mapping[str, Any], *, shared: bool) -> dict:
        digest = self._digest(child)  # of the rendering, before the owner is added: the same owner per name
        child = with_owner(child, owner_obj)
        meta = child["metadata"]
        key = (child["kind"], meta["name"])
        owner = (meta["namespace"], owner_obj["metadata"]["name"])
        informer = self.ctx.cache.store.informers.get(child["kind"])
        stored = informer.get(meta["name"], meta.get("namespace")) if informer is not None else None
        if shared:
            written = self._shared_written.get((meta["namespace"], meta["name"]))
            if (written is not None and controller_uid(written) == controller_uid(child)
                    and (stored is None or later_version(written, stored))):
                stored = written  # the watch has not brought our write yet
        with self._lock:
            last = self._applied.get(owner, {}).get(key)
        if (stored is not None and last is not None and last[0] == digest and last[1] == spec_version(stored)
                and controller_uid(stored) == controller_uid(child) and time.monotonic() - last[2] < REAPPLY_SECONDS):
            return stored
        try:
            applied = self.ctx.kube.write_owned(child, controller_uid(child) or "", stored,
                                                absent=informer is not None and informer.synced.is_set())
        except Gone:
            if shared:  # what we wrote is gone: the next try goes by the store
                self._shared_written.pop((meta["namespace"], meta["name"]), None)
            raise
        with self._lock:
            self._applied.setdefault(owner, {})[key] = (digest, spec_version(applied), time.monotonic())
        if shared:
            self._shared_written[(meta["namespace"], meta["name"])] = applied
        return applied

    def _digest(self, child: dict) -> str:
        """sha256 of a rendering, once per rendered object (the renderings of an unchanged spec are reused:
        controller/model_deployment.py)."""
        with self._lock:
            known = self._digests.get(id(child))
        if known is not None and known[0] is child:
            return known[1]
        digest = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()
        with self._lock:
            self._digests[id(child)] = (child, digest)
        return digest

    def write_failure(self, child: dict, exc: ApiException, key: Hashable) -> RenderError:
        """The API server refused a child (quota, admission policy, "range is full"): its words and when llmos
        tries again, for the status."""
        try:
            detail = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            detail = exc.reason
        retry_in = self.ctx.queue.next_backoff(key)
        return RenderError("ChildWriteFailed",
                           f"the API server refused {child['kind']} {child['metadata']['name']} (HTTP {exc.status}): "
                           f"{detail}; llmos tries again in {retry_in:.0f} s (failures so far: "
                           f"{self.ctx.queue.failures(key)})")

    def rollout_events(self, raw: dict, mdep: ModelDeployment, before: dict | None, after: dict,
                       plan: RolloutPlan) -> None:
        """An Event per rollout phase: started (with the surge reserved), completed, rolled back, stopped."""
        old_hash, new_hash = template_hash(before), template_hash(after)
        events = self.ctx.events
        if plan.phase == ROLLED_BACK and old_hash != new_hash:
            events(raw, "Warning", "RolledBack", plan.message)
        elif plan.phase == ROLLOUT_STOPPED and not ((before or {}).get("spec") or {}).get("paused"):
            events(raw, "Warning", "RolloutStopped", plan.message)
        elif before is not None and old_hash != new_hash and plan.phase == ROLLING_OUT:
            events(raw, "Normal", "RolloutStarted", plan.message)
        elif plan.phase == COMPLETE and plan.serving_template != mdep.status.serving_template \
                and mdep.status.serving_template is not None:
            events(raw, "Normal", "RolloutCompleted", f"all replicas serve template {plan.serving_template}")

    def collect_trust_configmaps(self, namespace: str, model: str, children: list[dict]) -> None:
        """Delete the Model's trust ConfigMaps that nothing uses: not the one just rendered, not one a Deployment,
        ReplicaSet (a rollback may need one) or pod of the namespace mounts — whichever deployment of the Model it
        belongs to."""
        cache = self.ctx.cache
        mine = [cm for cm in cache["ConfigMap"].list(namespace)
                if (cm["metadata"].get("labels") or {}).get(LABEL_MODEL) == model]
        if len(mine) <= 1:
            return  # the one in use (the common case: nothing to read further)
        used = {c["metadata"]["name"] for c in children if c["kind"] == "ConfigMap"}
        for kind in ("Deployment", "ReplicaSet", "Pod"):
            for obj in cache[kind].list(namespace):
                spec = obj.get("spec") or {}
                pod_spec = (spec.get("template") or {}).get("spec") or spec
                used |= {v["configMap"].get("name") for v in pod_spec.get("volumes") or [] if v.get("configMap")}
        for cm in mine:
            if cm["metadata"]["name"] not in used:
                with self._shared_lock:
                    self._shared_written.pop((namespace, cm["metadata"]["name"]), None)
                    self.ctx.kube.delete("ConfigMap", cm["metadata"]["name"], namespace,
                                         uid=cm["metadata"].get("uid"))

    def whole_replica_set(self, replica_sets: list[dict], template: str | None) -> list[dict]:
        """``replica_sets`` with the one of ``template`` read live, whole (or left out if it is gone)."""
        out = []
        for rs in replica_sets:
            if rs.get(SUMMARY) and template_hash(rs) == template:
                whole = self.ctx.kube.get("ReplicaSet", rs["metadata"]["name"], rs["metadata"].get("namespace"))
                if whole is None:
                    continue
                rs = whole
            out.append(rs)
        return out
