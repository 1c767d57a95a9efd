"""The Tenant reconciler: its namespaces (refused, and nothing written, if protected or if they existed without llmos
having made them for this tenant and without the platform's adopt annotation), their labels, NetworkPolicies and the
runtime's ServiceAccount and RoleBinding, re-applied only when what it renders changed (or after
``REAPPLY_SECONDS``); the namespaces it gave up, or all of them when it is deleted, are released. Then its Models are
re-verified when its keys or namespaces changed, and admission decides again when what it reads of the tenant
changed. The ResourceQuota (GPU backstop and the tenant's quota) is admission's to write, from the ledger."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

from kubernetes.client import ApiException

from ..api.names import LABEL_MANAGED_BY, LABEL_RELEASED, LABEL_TENANT, MANAGED_BY, TENANT_QUOTA_NAME
from ..api.types import Tenant
from ..core import policy
from ..core.gpu_pods import controller_of
from ..kube.client import Gone, NotOwned, with_owner
from ..render import render_released_namespace, render_tenant_children
from ..render.tenant import RELEASED_CHILDREN, TENANT_CHILDREN
from .state import Context
from .triggers import Triggers

log = logging.getLogger("llmos.controller.tenant")

# What a Tenant renders is applied again, unchanged, this often at most (a safety net for hand edits of its children);
# in between a reconcile whose rendering did not change writes nothing.
REAPPLY_SECONDS = float(os.environ.get("LLMOS_REAPPLY_SECONDS", "3600"))


class TenantReconciler:
    def __init__(self, ctx: Context, triggers: Triggers):
        self.ctx, self.triggers = ctx, triggers
        # tenant → (digest of what was applied, when, (uid, generation, owned namespaces) its Models were queued for)
        self._applied: dict[str, tuple[str | None, float, tuple | None]] = {}
        # tenant → what its last reconcile asked admission to decide on
        self._admission_inputs: dict[str, tuple] = {}
        # (namespace, kind, name) → a Tenant child as last written (its uid guards the next write)
        self._written: dict[tuple[str | None, str, str], dict] = {}

    def reconcile(self, name: str) -> None:
        raw = self.ctx.cache["Tenant"].get(name)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            self._gone(name)
            return
        tenant = self.ctx.cache.stored(Tenant, name)
        if tenant is None:
            return  # invalid (logged)
        owned, refused, reclaimed = self._namespaces(tenant)
        refused_keys = list(policy.refused_keys(tenant, self.ctx.config).values())
        self.ctx.state.set_refusals(name, refused, refused_keys)
        self._apply_children(tenant, raw, owned, reclaimed)
        for ns in owned:
            self.ctx.wake("ApiKeys", ns)  # its limits are in each namespace's key table (writes only on change)
        self._release_given_up(name, owned)
        verified_for = (tenant.metadata.uid, tenant.metadata.generation, tuple(sorted(owned)))
        self._reverify_models(name, verified_for)
        # Admission decides again when what it reads of this tenant changed (spec, namespaces, refusals shown in its
        # status), not on every reconcile: a resync reconciles every Tenant, and its own full pass covers them.
        inputs = (*verified_for, tuple(sorted(refused.items())), tuple(refused_keys),
                  tuple(self.ctx.state.tenant_conflicts(name)))
        if self._admission_inputs.get(name) != inputs:
            self._admission_inputs[name] = inputs
            self.ctx.admit_again(tenants=(name, None))  # None: namespaces it gave up

    def _gone(self, name: str) -> None:
        for ns, owner in self.ctx.cache.labelled_namespaces().items():
            if owner == name:
                self.release_namespace(ns, name, "was deleted")
        self.ctx.state.forget_tenant(name)
        self._applied.pop(name, None)
        self._admission_inputs.pop(name, None)
        self.ctx.admit_again(everything=True)  # its namespaces fall to no tenant, or to another

    def _namespaces(self, tenant: Tenant) -> tuple[list[str], dict[str, str], list[str]]:
        """(namespaces it owns, {namespace: why it may not take it}, released namespaces it takes back)."""
        name = tenant.metadata.name
        ownership = self.ctx.cache.ownership()
        owned, refused, reclaimed = [], {}, []
        for ns in tenant.spec.namespaces:
            if ownership.claimed.get(ns) != name:
                continue  # another tenant holds it: NamespaceConflict in the status
            if ownership.labelled.get(ns) == name and not policy.protected_namespace(ns, self.ctx.config):
                owned.append(ns)
                continue
            existing = self.ctx.kube.get("Namespace", ns)  # live: a stale answer could hand it a namespace
            why = policy.namespace_refusal(ns, name, existing, self.ctx.config)
            if why is not None:
                refused[ns] = why  # nothing is written to it
                continue
            owned.append(ns)
            if existing is not None and (existing["metadata"].get("labels") or {}).get(policy.LABEL_RELEASED):
                reclaimed.append(ns)
        return owned, refused, reclaimed

    def _apply_children(self, tenant: Tenant, raw: dict, owned: list[str], reclaimed: list[str]) -> None:
        name = tenant.metadata.name
        children = []
        writable = [ns for ns in owned if not self.ctx.cache.terminating(ns)]
        for child in render_tenant_children(tenant, self.ctx.config, namespaces=writable):
            if child["kind"] == "Namespace":
                children.append(child)  # namespaces are not owned: deleting a tenant must not delete workloads
            elif child["metadata"]["name"] != TENANT_QUOTA_NAME:  # the quota is admission's, from the ledger
                children.append(with_owner(child, raw))
        digest = hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()
        last_digest, applied_at, models_for = self._applied.get(name, (None, 0.0, None))
        if digest != last_digest or reclaimed or time.monotonic() - applied_at > REAPPLY_SECONDS:
            self._write(tenant, children)
            applied_at = time.monotonic()
        for ns in reclaimed:
            for kind, child_name in RELEASED_CHILDREN:
                self.ctx.kube.delete(kind, child_name, ns)
        self._applied[name] = (digest, applied_at, models_for)

    def _write(self, tenant: Tenant, children: list[dict]) -> None:
        """Namespaces get their labels (server-side apply: a namespace is never the tenant's object); every other
        child is written only as the Tenant's own (``Kube.write_owned``): an object of its name that is not is left
        alone and named in the Tenant's status."""
        name, conflicts = tenant.metadata.name, {}
        for child in children:
            meta = child["metadata"]
            if child["kind"] == "Namespace":
                self.ctx.kube.apply(child)
                continue
            key = (meta.get("namespace"), child["kind"], meta["name"])
            try:
                self._written[key] = self.ctx.kube.write_owned(child, tenant.metadata.uid or "", self._written.get(key))
            except NotOwned as exc:
                conflicts[f"{key[0]}/{key[1]}/{key[2]}"] = f"namespace {key[0]}: {exc}"
                self._written.pop(key, None)
            except Gone:
                self._written.pop(key, None)
                raise
        self.ctx.state.set_tenant_conflicts(name, "tenant", conflicts)

    def _release_given_up(self, name: str, owned: list[str]) -> None:
        for ns, owner in self.ctx.cache.ownership().labelled.items():
            if owner != name:
                continue
            if policy.protected_namespace(ns, self.ctx.config):
                self.ctx.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})  # no labels
            elif ns not in owned:
                self.release_namespace(ns, name, "no longer lists it")

    def _reverify_models(self, name: str, verified_for: tuple) -> None:
        """The Models of its namespaces are verified with its keys: again when those (its generation) or the
        namespaces changed, not on every reconcile."""
        digest, applied_at, models_for = self._applied[name]
        if verified_for == models_for:
            return
        same_keys = models_for is not None and models_for[:2] == verified_for[:2]
        before = set(models_for[2]) if models_for is not None else set()
        owned = set(verified_for[2])
        # all of them if its keys changed; else those of namespaces it took or gave up
        for ns in (owned | before) if not same_keys else (owned ^ before):
            self.triggers.models_in(ns)
        self._applied[name] = (digest, applied_at, verified_for)

    def _unlabel_terminating(self, namespace: str, tenant: str) -> None:
        """A namespace being deleted keeps no label of a Tenant that is gone: admission wakes the Tenant of every
        such label to release it, and the wake would come back at once, a hot loop until the namespace is gone
        (seen in CI, 1,386 Tenant reconciles in 10 s). A merge patch, not an apply: an apply would make the
        namespace again were it gone meanwhile."""
        try:
            self.ctx.kube.merge_patch("Namespace", namespace, None, {"metadata": {"labels": {
                LABEL_TENANT: None, LABEL_RELEASED: tenant}}})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def release_namespace(self, namespace: str, tenant: str, why: str) -> None:
        """The tenant is gone from this namespace: no GPUs, no ingress, no llmos pods; its users and data stay."""
        stored = self.ctx.cache["Namespace"].get(namespace)
        if stored is not None and (stored.get("status") or {}).get("phase") == "Terminating":
            self._unlabel_terminating(namespace, tenant)
            return  # being deleted: nothing to keep safe, and nothing may be created in it
        kube = self.ctx.kube
        try:
            for child in render_released_namespace(namespace, tenant, self.ctx.config):
                kube.apply(child)  # first: the zero quota holds before anything else changes
        except ApiException:
            live = kube.get("Namespace", namespace)
            if live is None:
                return  # deleted meanwhile (the store had not heard yet)
            if (live.get("status") or {}).get("phase") == "Terminating":
                self._unlabel_terminating(namespace, tenant)
                return
            raise
        for dep in kube.list("Deployment", namespace, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"):
            # A live read: the store holds only deployments labelled with their ModelDeployment. Only llmos's own
            # (controlled by a ModelDeployment), by uid.
            if (controller_of(dep) or ("",))[0] == "ModelDeployment":
                kube.delete("Deployment", dep["metadata"]["name"], namespace, uid=dep["metadata"].get("uid"))
        for kind, child_name in TENANT_CHILDREN:
            found = kube.get(kind, child_name, namespace)
            if found is not None and (controller_of(found) or ("", ""))[:2] == ("Tenant", tenant):
                kube.delete(kind, child_name, namespace, uid=found["metadata"].get("uid"))
            self._written.pop((namespace, kind, child_name), None)
        self.ctx.state.set_backstop(namespace, None)
        self.ctx.events({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace,
                                                                              "namespace": namespace}},
                        "Warning", "TenantReleased",
                        f"tenant {tenant} {why}: llmos Deployments removed, GPUs limited to 0 and ingress denied "
                        f"in namespace {namespace} (the platform may give it to another tenant with the "
                        f"{policy.ANNOTATION_ADOPT} annotation)")
        log.info("released namespace %s of tenant %s (%s)", namespace, tenant, why)
