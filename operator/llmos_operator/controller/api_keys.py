"""The API keys of a tenant namespace (key ("ApiKeys", namespace)): the key Secrets the store holds as hashes
(core/api_keys.py) rendered into the ConfigMap ``llmos-api-keys`` that the namespace's model pods watch, with the
tenant's limits and each served model's replicas. Written as the Tenant's own child (created, then replaced only
while the Tenant controls it, as the watched ConfigMap store shows it: no live read); re-written only when what it
renders changed, or after ``REAPPLY_SECONDS``. Secrets of another namespace are never read: a namespace's table
holds only its own keys.

A Secret that grants nothing (no key, a short one, a bad limit) gets an Event saying why, once per version."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

from ..api.names import API_KEYS_CONFIGMAP
from ..api.types import Model, ModelDeployment, Tenant
from ..core import policy
from ..core.api_keys import render_key_table
from ..kube.client import Gone, NotOwned, later_version, with_owner
from .state import Context

log = logging.getLogger("llmos.controller.api_keys")
REAPPLY_SECONDS = float(os.environ.get("LLMOS_REAPPLY_SECONDS", "3600"))
KIND = "ApiKeys"


class ApiKeysReconciler:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._written: dict[str, dict] = {}  # namespace → the ConfigMap as last written (its uid guards the next)
        self._applied: dict[str, tuple[str, float]] = {}  # namespace → (digest of what was written, when)
        self._refusals_told: dict[tuple[str, str], str] = {}  # (namespace, secret) → resourceVersion told about

    def reconcile(self, namespace: str) -> None:
        owner = self.ctx.cache.ownership().labelled.get(namespace)
        raw_tenant = self.ctx.cache["Tenant"].get(owner) if owner else None
        if owner is None or raw_tenant is None or policy.protected_namespace(namespace, self.ctx.config):
            self._forget(namespace)
            return  # not a tenant's namespace (any more): llmos serves nothing here
        tenant = self.ctx.cache.stored(Tenant, owner)
        if tenant is None:
            return
        secrets = self.ctx.cache["ApiKeySecret"].list(namespace)
        self._tell_refusals(namespace, secrets)
        limits = tenant.spec.limits.model_dump(by_alias=True, exclude_none=True)
        # Replicas size each replica's share of a limit; with no valid key every request is refused (or, with
        # apiKeys Disabled, never limited), so a namespace without keys does not rewrite its table at every scale.
        replicas = self._replicas(namespace) if any(s.get("parsed") for s in secrets) else {}
        table = render_key_table(namespace, owner, secrets, limits, replicas)
        child = with_owner(table, raw_tenant)
        digest = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()
        last = self._applied.get(namespace)
        if last is not None and last[0] == digest and time.monotonic() - last[1] < REAPPLY_SECONDS:
            return
        # Go by the watched store (no live read, even the first time after a restart), or by our own last write
        # while the watch has not brought it yet (no second create refused and charged to the ConfigMap quota).
        informer = self.ctx.cache.store.informers.get("ConfigMap")
        stored = informer.get(API_KEYS_CONFIGMAP, namespace) if informer is not None else None
        written = self._written.get(namespace)
        if written is not None and (stored is None or later_version(written, stored)):
            stored = written
        try:
            self._written[namespace] = self.ctx.kube.write_owned(
                child, tenant.metadata.uid or "", stored, absent=informer is not None and informer.synced.is_set())
        except NotOwned as exc:
            self.ctx.state.set_tenant_conflicts(owner, f"api-keys/{namespace}",
                                                {API_KEYS_CONFIGMAP: f"namespace {namespace}: {exc}"})
            self._written.pop(namespace, None)
            return
        except Gone:
            self._written.pop(namespace, None)
            raise
        self.ctx.state.set_tenant_conflicts(owner, f"api-keys/{namespace}", {})
        self._applied[namespace] = (digest, time.monotonic())
        log.info("API keys of %s: %d valid", namespace, sum(1 for s in secrets if s.get("parsed")))

    def _replicas(self, namespace: str) -> dict[str, int]:
        """Served model name → replicas of the deployments serving it (the share one replica enforces alone)."""
        out: dict[str, int] = {}
        for raw in self.ctx.cache["ModelDeployment"].list(namespace):
            mdep = self.ctx.cache.stored(ModelDeployment, raw["metadata"]["name"], namespace)
            if mdep is None:
                continue
            model = self.ctx.cache.stored(Model, mdep.spec.model, namespace)
            name = model.served_name if model is not None else mdep.spec.model
            out[name] = out.get(name, 0) + mdep.spec.replicas
        return out

    def _tell_refusals(self, namespace: str, secrets: list[dict]) -> None:
        for s in secrets:
            meta = s["metadata"]
            if not s.get("refused"):
                continue
            told = (namespace, meta["name"])
            if self._refusals_told.get(told) == meta.get("resourceVersion"):
                continue
            self._refusals_told[told] = meta.get("resourceVersion") or ""
            self.ctx.events(s, "Warning", "ApiKeyRefused", f"API key {meta['name']} grants nothing: {s['refused']}")

    def _forget(self, namespace: str) -> None:
        self._written.pop(namespace, None)
        self._applied.pop(namespace, None)
        for told in [t for t in self._refusals_told if t[0] == namespace]:
            self._refusals_told.pop(told, None)
