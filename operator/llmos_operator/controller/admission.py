"""The admission pass (one key for the whole cluster, under a lock): decide again the tenants an event touched, store
their ledgers in the Tenants' status (with their resourceVersion: a 409 means another writer came first, decide
again), set each namespace's GPU backstop to what the ledger reserves there, and only then publish the decisions to
the deployment reconcilers — so no pod ever runs on GPUs that are not recorded, whatever the operator's restarts.

Admission never couples tenants (the operator gives ``admit`` no cluster capacity), so a pass that decides only the
tenants in its scope is exact: its cost grows with what changed, not with every deployment of the cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiException

from .. import metrics
from ..api.names import (
    CHILD_CONFLICT,
    LABEL_MANAGED_BY,
    LEGACY_GPU_QUOTA_NAME,
    MANAGED_BY,
    OVER_QUOTA,
    TENANT_QUOTA_NAME,
)
from ..api.types import InvalidObject, Model, ModelDeployment, Tenant
from ..core import policy
from ..core.ownership import Ownership
from ..core.quota import (
    AdmissionResult,
    Decision,
    Request,
    TenantInfo,
    admit,
    deployment_key,
    is_releasing,
    merge_ledgers,
    not_a_candidate,
    parse_ledger,
)
from ..core.status import model_servable, model_serving, status_changed, tenant_status, transitions
from ..core.status.model import verified_condition
from ..core.usage import reserved_gpus
from ..core.workloads import pod_gpus
from ..kube.client import Gone, NotOwned, controller_uid, with_owner
from ..render import render_tenant_quota
from .gpu_pods import GPUPodReconciler
from .state import AdmissionScope, Context
from .usage import UsageMeter

log = logging.getLogger("llmos.controller.admission")
PARALLEL_WRITES = 8  # Tenant statuses and GPU backstops a pass writes at once


class Conflict(Exception):
    """Another writer changed an object between our read and our write; the pass starts again."""


@dataclass
class _Candidates:
    requests: list[Request]
    mdeps: dict[str, ModelDeployment]
    refused: dict[str, Decision]  # not even candidates: the platform refuses them, or their Model is not servable


class Admission:
    def __init__(self, ctx: Context, gpu_pods: GPUPodReconciler, usage: UsageMeter | None = None):
        self.ctx, self.gpu_pods, self.usage = ctx, gpu_pods, usage
        self._lock = threading.Lock()
        self._series = metrics.TenantSeries()
        # the tenant gauges as last published: admitted, queued (by tenant), GPUs used, allowed (by tenant and class)
        self._series_values: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
        self._writers = ThreadPoolExecutor(PARALLEL_WRITES, thread_name_prefix="llmos-admission-write")

    def reconcile(self) -> None:
        with self._lock:
            scope = self.ctx.scope.take()
            try:
                for attempt in range(5):
                    try:
                        self._pass(scope)
                        return
                    except Conflict:
                        if attempt == 4:
                            raise
                        time.sleep(0.05 * (attempt + 1))
            except BaseException:
                self.ctx.scope.give_back(scope)  # the queue's retry decides it all the same
                raise

    def _each(self, write: Callable[[Any], None], items: list) -> None:
        """``write`` each item, up to ``PARALLEL_WRITES`` at once: a pass that decided a burst of 100 tenants
        writes a status per tenant and a backstop per namespace, 200 round trips to a busy API server one after the
        other while every decision of the burst waited for them. Returns when all are done; then raises ``Conflict``
        if any write met one (the pass decides again), else the first other failure."""
        if len(items) <= 1:
            for item in items:
                write(item)
            return
        futures = [self._writers.submit(write, item) for item in items]
        errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        conflict = next((e for e in failed if isinstance(e, Conflict)), None)
        if conflict is not None or failed:
            raise conflict or failed[0]

    def _deciding(self, scope: AdmissionScope.Taken, ownership: Ownership,
                  previous: Mapping[str, tuple[str, Decision]]) -> set[str | None]:
        """The tenants this pass decides again (None: the namespaces no tenant owns)."""
        if scope.everything:
            return {*ownership.by_name, None}
        deciding = set(scope.tenants) | {ownership.owners.get(ns) for ns in scope.namespaces}
        # A decision made under another owner than its namespace's now (ownership moved): both decide again.
        for key, (_, decision) in previous.items():
            owner = ownership.owners.get(key.split("/", 1)[0])
            if decision.tenant != owner:
                deciding |= {decision.tenant, owner}
        return deciding

    def _pass(self, scope: AdmissionScope.Taken) -> None:
        ownership = self.ctx.cache.ownership()
        for tenant_name in set(ownership.labelled.values()) - set(ownership.by_name):
            self.ctx.wake("Tenant", tenant_name)  # its namespaces are still labelled: release them
        previous = self.ctx.state.decisions()
        deciding = self._deciding(scope, ownership, previous)
        deciding_tenants = [t for t in ownership.tenants if t.metadata.name in deciding]
        deciding_owners = {ns: t for ns, t in ownership.owners.items() if t in deciding}
        ledger = merge_ledgers([parse_ledger({k: v.to_dict() for k, v in t.status.reservations.items()})
                                for t in deciding_tenants])
        candidates = self._candidates(deciding, ownership, ledger)
        pods = self.gpu_pods.account(deciding_owners)
        result = admit(
            candidates.requests, ledger, {t.metadata.name: TenantInfo.from_tenant(t) for t in deciding_tenants},
            self.ctx.config.gpu_classes.keys(), held_by_pods=pods.held, strays=pods.strays,
        )
        releasing = {k for k in self.ctx.state.releasing if ownership.owners.get(k.split("/", 1)[0]) not in deciding}
        self.ctx.state.set_releasing(releasing | {deployment_key(k) for k in result.ledger if is_releasing(k)})
        intruders: dict[str, list[str]] = {}
        for intruder in pods.intruders:
            owner = deciding_owners.get(intruder.namespace)
            if owner is not None:
                intruders.setdefault(owner, []).append(f"{intruder.namespace}/{intruder.name} ({intruder.why})")
        for ns, owner in deciding_owners.items():  # removed, still terminating: still reported
            intruders.setdefault(owner, []).extend(self.ctx.state.removed_intruders(ns).values())
        self._each(lambda tenant: self._write_tenant_status(tenant, ownership, result,
                                                           intruders.get(tenant.metadata.name, [])), deciding_tenants)
        self._publish_series(ownership.by_name, deciding_tenants, result)
        # The ledger is stored. Each namespace's GPU backstop follows it before any pod may use the decisions.
        self._write_backstops(deciding_tenants, deciding_owners, result)
        self._publish(scope, deciding, previous, {**result.decisions, **candidates.refused}, candidates.mdeps)

    def _candidates(self, deciding: set[str | None], ownership: Ownership, ledger: Mapping[str, Any]) -> _Candidates:
        """The deciding tenants' deployments (and, with None, those of namespaces no tenant owns: never every
        deployment's) as requests, or as decisions when they are not even candidates."""
        store = self.ctx.cache["ModelDeployment"]
        owners = ownership.owners
        namespaces = (store.namespaces() if None in deciding
                      else [ns for ns, owner in owners.items() if owner in deciding])
        out = _Candidates([], {}, {})
        for ns in namespaces:
            owner = owners.get(ns or "")
            if owner not in deciding:
                continue
            for raw in store.list(ns):
                if raw["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    mdep = self.ctx.cache.parse(ModelDeployment, raw)
                except InvalidObject:
                    continue
                out.mdeps[mdep.key] = mdep
                self._candidate(mdep, owner, ownership.by_name.get(owner) if owner else None, ledger, out)
        return out

    def _candidate(self, mdep: ModelDeployment, owner: str | None, tenant: Tenant | None,
                   ledger: Mapping[str, Any], out: _Candidates) -> None:
        # A scale-up is granted in part (whole replicas that fit), unless the pods change shape: replicas of the
        # old and the new gpu.count are not mixed (the Deployment is left as it is until the new shape fits).
        stored = self.ctx.cache["Deployment"].get(mdep.metadata.name, mdep.metadata.namespace)
        partial = stored is None or pod_gpus(stored) in (None, mdep.spec.gpu.count)
        request = Request.from_model_deployment(mdep, owner, surge=self.ctx.state.surge_ask(mdep.key),
                                                partial=partial)
        refusal = policy.deployment_refusal(mdep, tenant, self.ctx.config) if tenant else None
        conflict = self.ctx.state.child_conflict(mdep.key, mdep.metadata.uid)
        if refusal is None and conflict is not None:
            refusal = (CHILD_CONFLICT, f"{conflict[1]}; no GPUs are reserved until it is gone")
        if refusal is not None:
            # What the platform does not allow reserves no GPU: not even a candidate.
            out.refused[mdep.key] = not_a_candidate(request, *refusal)
            return
        model = self._model(mdep.metadata.namespace or "", mdep.spec.model)
        if tenant is not None and (model is None or not model_servable(model)):
            holds = (ledger.get(mdep.key) or {}).get("uid") == mdep.metadata.uid
            if holds and model is not None and model_serving(model):
                # The Model's new revision is being verified, or was rejected: the previous one keeps serving on
                # the GPUs it holds; nothing changes until the newest revision is verified.
                frozen = ("ModelNotVerified", f"Model {model.metadata.name}'s newest revision is not verified")
                out.requests.append(Request.from_model_deployment(mdep, owner, surge=request.surge, frozen=frozen,
                                                                  partial=partial))
            else:
                # An unverified model reserves no GPU: its deployments are not even candidates.
                out.refused[mdep.key] = not_a_candidate(request, "ModelNotVerified", _not_servable(mdep, model))
            return
        out.requests.append(request)

    def _model(self, namespace: str, name: str) -> Model | None:
        try:
            return self.ctx.cache.parse(Model, self.ctx.cache["Model"].get(name, namespace))
        except InvalidObject:
            return None  # admission says "not verified"; the Model reconciler reports why

    def _write_tenant_status(self, tenant: Tenant, ownership: Ownership, result: AdmissionResult,
                             intruders: list[str]) -> None:
        name = tenant.metadata.name
        refused_namespaces, refused_keys = self.ctx.state.refusals(name)
        status = tenant_status(tenant, self.ctx.config, result=result, conflicts=ownership.conflicts.get(name),
                               refused_namespaces=refused_namespaces, refused_keys=refused_keys,
                               intruders=intruders, child_conflicts=self.ctx.state.tenant_conflicts(name))
        before = tenant.status.to_dict()
        if not status_changed(before, status):
            return
        metered = None
        ledger = status.get("reservations", before.get("reservations")) or {}  # a merge patch: None drops an entry
        reserved = reserved_gpus({k: v for k, v in ledger.items() if v is not None})
        if self.usage is not None and reserved != reserved_gpus(before.get("reservations") or {}):
            # The GPU time up to this change goes with the ledger that changes it (the meter would write it next).
            metered = self.usage.fold(name, before.get("usage") or {}, reserved)
            status = {**status, "usage": {**(status.get("usage") or {}), **metered.to_status()}}
        try:
            self.ctx.kube.patch_status("Tenant", name, None, status, tenant.metadata.resource_version)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"Tenant {name} changed during admission") from None
            raise
        if metered is not None and self.usage is not None:
            self.usage.folded(name, metered)
        raw = {"apiVersion": tenant.api_version, "kind": "Tenant",
               "metadata": {"name": name, "uid": tenant.metadata.uid, "namespace": None}}
        for t in transitions([c.to_dict() for c in tenant.status.conditions], status.get("conditions", [])):
            good = (t.status == "True") != (t.type == OVER_QUOTA)  # OverQuota=True is the bad news
            self.ctx.events(raw, "Normal" if good else "Warning", t.reason, t.message)

    def _publish(self, scope: AdmissionScope.Taken, deciding: set[str | None],
                 previous: Mapping[str, tuple[str, Decision]], fresh: dict[str, Decision],
                 mdeps: Mapping[str, ModelDeployment]) -> None:
        """Publish the decisions and wake the deployments whose decision changed. A full pass decided every
        deployment there is: none of the previous decisions stands (those of a deleted Tenant or deployment would
        linger otherwise)."""
        decisions = {} if scope.everything else {k: d for k, d in previous.items()
                                                  if d[1].tenant not in deciding and k not in fresh}
        decisions.update({k: (mdeps[k].metadata.uid or "", d) for k, d in fresh.items()})
        self.ctx.state.publish_decisions(decisions)
        for key in {*fresh, *(set(previous) - set(decisions))}:
            if previous.get(key) != decisions.get(key):
                ns, name = key.split("/", 1)
                self.ctx.wake("ModelDeployment", ns, name)

    def _publish_series(self, by_name: Mapping[str, Tenant], decided: list[Tenant], result: AdmissionResult) -> None:
        """The per-tenant gauges: those of the tenants just decided, the others' as last decided (a Tenant that is
        gone loses its series)."""
        values = self._series_values
        for series in values:
            for key in [k for k in series if (k[0] if isinstance(k, tuple) else k) not in by_name]:
                del series[key]
        admitted, queued, used_gpus, allowed_gpus = values
        names = {t.metadata.name for t in decided}
        for key in [k for k in used_gpus if k[0] in names]:
            del used_gpus[key], allowed_gpus[key]
        for tenant in decided:
            name = tenant.metadata.name
            used = result.usage(name)
            admitted[name] = result.admitted_count(name)
            queued[name] = result.queued_count(name)
            for gpu_class in {*used, *tenant.spec.quota.gpus}:
                used_gpus[(name, gpu_class)] = used.get(gpu_class, 0)
                allowed_gpus[(name, gpu_class)] = tenant.spec.quota.gpus.get(gpu_class, 0)
        self._series.publish(admitted, queued, used_gpus, allowed_gpus, changed=names)

    def _write_backstops(self, tenants: list[Tenant], owners: Mapping[str, str], result: AdmissionResult) -> None:
        """Each owned namespace's ResourceQuota allows exactly the GPUs the ledger reserves there (rollout surge and
        GPUs of departing pods included, as reserved): never the tenant's total copied into every namespace. The same
        quota holds the tenant's CPU, memory and object counts, so it is written again when the Tenant changed."""
        wanted: dict[str, dict[str, int]] = {ns: {} for ns in owners}
        for key, entry in result.ledger.items():
            ns = key.split("/", 1)[0]
            gpu_class = self.ctx.config.gpu_class(entry["class"])
            dk = deployment_key(key)
            if ns not in wanted or gpu_class is None or (result.decisions.get(dk) is None
                                                         and dk not in result.held_owners):
                continue
            wanted[ns][gpu_class.resource_name] = wanted[ns].get(gpu_class.resource_name, 0) + entry["gpus"]
        by_name = {t.metadata.name: t for t in tenants}
        conflicts: dict[str, dict[str, str]] = {t.metadata.name: {} for t in tenants}

        def write(ns: str, reserved: dict[str, int]) -> None:
            tenant = by_name[owners[ns]]
            quota = with_owner(render_tenant_quota(tenant, ns, self.ctx.config, reserved), tenant_ref(tenant))
            inputs = (tenant.metadata.uid, tuple(sorted(quota["spec"]["hard"].items())))
            known = self.ctx.state.backstop(ns)
            if (known is not None and known[0] == inputs) or self.ctx.cache.terminating(ns):
                return
            legacy, stored = [], known[1] if known is not None else None
            if known is None:  # first write of this process: one read finds ours and any left from before issue 22
                found = {q["metadata"]["name"]: q for q in self.ctx.kube.list(
                    "ResourceQuota", ns, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}")}
                stored = found.get(TENANT_QUOTA_NAME)
                legacy = [q for name, q in found.items() if name == LEGACY_GPU_QUOTA_NAME]
            try:
                written = self.ctx.kube.write_owned(quota, tenant.metadata.uid or "", stored, absent=stored is None)
            except NotOwned as exc:
                conflicts[tenant.metadata.name][f"{ns}/ResourceQuota"] = f"namespace {ns}: {exc}"
                return
            except Gone:
                self.ctx.state.set_backstop(ns, None)
                raise
            self.ctx.state.set_backstop(ns, inputs, written)
            for old in legacy:  # after ours is in place: no moment without a GPU backstop
                if controller_uid(old) == tenant.metadata.uid:
                    self.ctx.kube.delete("ResourceQuota", LEGACY_GPU_QUOTA_NAME, ns, uid=old["metadata"].get("uid"))

        self._each(lambda item: write(*item), sorted(wanted.items()))
        for name, found in conflicts.items():
            self.ctx.state.set_tenant_conflicts(name, "backstop", found)


def tenant_ref(tenant: Tenant) -> dict:
    """Enough of a Tenant to be an owner of its children."""
    return {"apiVersion": tenant.api_version, "kind": "Tenant",
            "metadata": {"name": tenant.metadata.name, "uid": tenant.metadata.uid}}


def _not_servable(mdep: ModelDeployment, model: Model | None) -> str:
    """Why a deployment's Model may not be served (missing, unverified, not yet checked)."""
    if model is None:
        return f"Model {mdep.spec.model} does not exist in this namespace; no GPUs are reserved"
    cond = verified_condition(model)
    why = f"{cond.reason}: {cond.message}" if cond else "not verified yet"
    return f"Model {mdep.spec.model} is not verified ({why}); no GPUs are reserved"
