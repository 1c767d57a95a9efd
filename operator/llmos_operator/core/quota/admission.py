"""Who may run: admission of ModelDeployments against per-tenant, per-GPU-class quotas.

:func:`admit` is a pure function of (the ledger, the current deployments, the tenants, the known GPU classes). It
returns the new ledger and one :class:`Decision` per deployment. Rules:

- A deployment's demand is ``replicas × gpu.count`` GPUs of ``gpu.class``.
- A deployment that holds a reservation keeps it. Scaling down shrinks the reservation at once; scaling up asks for
  the difference only, and while the difference does not fit it keeps running on its old reservation
  (``admitted=True``, ``reason=QuotaExceeded``, ``replicas`` = what the old reservation pays for).
- Everything else waits in one queue ordered by tenant priority (higher first), then creation time, then
  ``namespace/name``. In order, each is admitted if its tenant's unused quota of that class covers it (and the
  cluster capacity of the class, if given).
- Admission is strictly in order within a tenant's GPU class: a request that does not fit blocks the later ones of
  the same tenant and class (so a big deployment is not starved by a stream of small ones). ``backfill=True`` lets
  later, smaller requests overtake instead. A request blocked by cluster capacity blocks the later ones of its
  class in every tenant: that is where tenant priority matters.
- Refusal reasons: QuotaExceeded, InsufficientCapacity, UnknownGPUClass, NoTenant, TenantCordoned,
  TooManyDeployments. Lowering a quota below current use evicts nothing; the excess frees as deployments shrink.
- A ``frozen`` request (its Model's new revision is not verified yet, or was rejected: the old revision keeps
  serving) keeps its reservation exactly as it is and asks for nothing; holding none, it waits with the reason given.
- **Surge**: a request's ``surge`` is the GPUs its rollout wants above its reservation (None: unknown, keep what is
  held). A surge entry already held is kept (shrunk when less is wanted, freed at 0), and counts as used, so no
  admission can take it. New surge GPUs are granted after the pass's other admissions, all or nothing, in queue
  order, only to deployments that are admitted and only from the tenant's unused quota: deployments of one tenant
  roll one after another as the reservations allow.
- Each decision records the ModelDeployment ``generation`` it was made for.
- **Stray pods**: GPUs held by pods that no live deployment accounts for (``strays``: a deleted deployment's pods
  still terminating, an intruder being removed) are counted against their tenant, with the class of the node they
  run on, before anything is admitted: nothing queued is admitted onto GPUs still in use.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from ...api.types import ModelDeployment, Tenant
from .ledger import (
    POD,
    RELEASING,
    SURGE,
    Ledger,
    deployment_key,
    entry,
    is_pod,
    is_releasing,
    is_surge,
    ledger_key,
    pod_key,
    reconcile_ledger,
    releasing_key,
    surge_key,
)

ADMITTED = "Admitted"
QUOTA_EXCEEDED = "QuotaExceeded"
INSUFFICIENT_CAPACITY = "InsufficientCapacity"
UNKNOWN_GPU_CLASS = "UnknownGPUClass"
NO_TENANT = "NoTenant"
TENANT_CORDONED = "TenantCordoned"
TOO_MANY_DEPLOYMENTS = "TooManyDeployments"
RESERVATION_HELD = "ReservationHeld"  # frozen: the reservation is kept as it is, the change waits
REASONS = (
    ADMITTED, QUOTA_EXCEEDED, INSUFFICIENT_CAPACITY, UNKNOWN_GPU_CLASS, NO_TENANT, TENANT_CORDONED,
    TOO_MANY_DEPLOYMENTS, RESERVATION_HELD,
)

_NEVER = datetime.max.replace(tzinfo=UTC)


def parse_time(value: str | datetime | None) -> datetime:
    """An RFC 3339 timestamp as Kubernetes writes it (``2026-01-02T03:04:05Z``); None sorts last."""
    if value is None:
        return _NEVER
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class TenantInfo:
    """What admission needs of a Tenant."""

    name: str
    gpus: Mapping[str, int] = field(default_factory=dict)
    max_model_deployments: int | None = None
    priority: int = 0
    cordoned: bool = False

    @classmethod
    def from_tenant(cls, tenant: Tenant) -> TenantInfo:
        return cls(
            name=tenant.metadata.name,
            gpus=dict(tenant.spec.quota.gpus),
            max_model_deployments=tenant.spec.quota.max_model_deployments,
            priority=tenant.spec.priority,
            cordoned=tenant.spec.cordoned,
        )


@dataclass(frozen=True)
class Request:
    """A ModelDeployment as admission sees it."""

    namespace: str
    name: str
    uid: str
    tenant: str | None  # owner of the namespace, None if no tenant owns it
    gpu_class: str
    replicas: int
    gpus_per_replica: int
    created: datetime = _NEVER
    generation: int | None = None  # of the ModelDeployment: the decision is for this spec
    surge: int | None = None  # GPUs its rollout wants above the reservation; None: unknown, keep what is held
    frozen: tuple[str, str] | None = None  # (reason, message): keep the reservation as it is, ask for nothing

    @property
    def key(self) -> str:
        return ledger_key(self.namespace, self.name)

    @property
    def demand(self) -> int:
        return self.replicas * self.gpus_per_replica

    @classmethod
    def from_model_deployment(cls, mdep: ModelDeployment, tenant: str | None, *, surge: int | None = None,
                              frozen: tuple[str, str] | None = None) -> Request:
        meta = mdep.metadata
        return cls(
            generation=meta.generation,
            surge=surge,
            frozen=frozen,
            namespace=meta.namespace or "",
            name=meta.name,
            uid=meta.uid or "",
            tenant=tenant,
            gpu_class=mdep.spec.gpu.class_,
            replicas=mdep.spec.replicas,
            gpus_per_replica=mdep.spec.gpu.count,
            created=parse_time(meta.creation_timestamp),
        )


@dataclass(frozen=True)
class Stray:
    """A pod holding GPUs that no live ModelDeployment accounts for (core/gpu_pods.py says which)."""

    namespace: str
    pod: str
    uid: str
    tenant: str | None
    gpu_class: str
    gpus: int

    @property
    def key(self) -> str:
        return pod_key(self.namespace, self.pod)


@dataclass(frozen=True)
class Decision:
    """Admission's answer for one deployment.

    ``admitted``: it holds a reservation and may run ``replicas`` replicas (render the Deployment with that many).
    ``reason``: ``Admitted`` when the whole spec is admitted, else why (part of) it waits; a deployment can be
    admitted and still wait for a scale-up (``admitted`` and ``reason == QuotaExceeded``).
    """

    key: str
    tenant: str | None
    admitted: bool
    reason: str
    message: str
    gpu_class: str
    requested: int  # GPUs the spec asks for
    reserved: int  # GPUs reserved after this decision
    replicas: int  # replicas the reservation pays for
    queue_position: int | None = None  # 1-based, among the waiting requests of the same tenant and class
    generation: int | None = None  # the ModelDeployment generation this decision is for
    surge: int = 0  # surge GPUs reserved for its rollout
    surge_wanted: int = 0  # surge GPUs asked for (more than ``surge`` while the rollout waits for quota)
    surge_message: str = ""  # why the surge waits

    @property
    def complete(self) -> bool:
        """The whole spec is admitted."""
        return self.reason == ADMITTED


@dataclass(frozen=True)
class AdmissionResult:
    ledger: Ledger  # the new ledger, all tenants together
    decisions: dict[str, Decision]  # "<namespace>/<name>" → decision
    dropped: list[str]  # ledger entries freed because their deployment is gone
    # Tenant of each ledger entry whose key has no decision (a deleted deployment's ``#releasing``, a ``#pod``), by
    # its deployment_key: that tenant's ledger holds it.
    held_owners: dict[str, str | None] = field(default_factory=dict)

    @cached_property
    def _by_tenant(self) -> tuple[dict[str | None, Ledger], dict[str | None, list[Decision]]]:
        """The ledger and the decisions grouped by tenant, once: asking per tenant stays linear in the whole."""
        ledgers: dict[str | None, Ledger] = {}
        decisions: dict[str | None, list[Decision]] = {}
        for key, e in self.ledger.items():
            dk = deployment_key(key)
            decision = self.decisions.get(dk)
            owner = decision.tenant if decision is not None else self.held_owners.get(dk)
            ledgers.setdefault(owner, {})[key] = e
        for d in self.decisions.values():
            decisions.setdefault(d.tenant, []).append(d)
        return ledgers, decisions

    def ledger_for(self, tenant: str) -> Ledger:
        """The part of the ledger to persist in ``tenant``'s status."""
        return {k: dict(v) for k, v in self._by_tenant[0].get(tenant, {}).items()}

    def usage(self, tenant: str) -> dict[str, int]:
        """GPU class → GPUs reserved by ``tenant`` (surge reservations included)."""
        used: dict[str, int] = {}
        for e in self._by_tenant[0].get(tenant, {}).values():
            used[e["class"]] = used.get(e["class"], 0) + e["gpus"]
        return used

    def admitted_count(self, tenant: str) -> int:
        return sum(1 for d in self._by_tenant[1].get(tenant, ()) if d.admitted)

    def queued_count(self, tenant: str) -> int:
        return sum(1 for d in self._by_tenant[1].get(tenant, ()) if not d.admitted)


def admit(
    requests: Iterable[Request],
    ledger: Mapping[str, Mapping[str, Any]],
    tenants: Mapping[str, TenantInfo],
    gpu_classes: Collection[str],
    *,
    capacity: Mapping[str, int] | None = None,
    backfill: bool = False,
    held_by_pods: Mapping[str, tuple[str | None, int]] | None = None,
    strays: Iterable[Stray] = (),
) -> AdmissionResult:
    """Decide who is admitted. Pure: the same inputs always give the same result.

    ``requests``: every existing ModelDeployment (not being deleted) in the namespaces the ledger covers — those
    absent lose their reservation. ``ledger``: the persisted reservations. ``tenants``: by name. ``gpu_classes``:
    names known to the operator configuration. ``capacity``: optional GPU class → GPUs the cluster can give all
    tenants together (classes absent are unlimited). ``held_by_pods``: deployment key → (tenant, GPUs requested by
    its pods that have not finished, terminating ones included), for the namespaces the ledger covers; GPUs they hold
    beyond what the deployment now reserves stay reserved (``#releasing``, at most what the ledger held for it
    before) until the pods are gone, so that nothing queued is admitted onto GPUs still in use. ``strays``: pods
    holding GPUs that no live deployment accounts for, each a ``#pod`` entry of its tenant (recomputed every pass: a
    ``#pod`` entry of the ledger given is kept only if its pod is among them).
    """
    requests = sorted(requests, key=lambda r: r.key)
    if len({r.key for r in requests}) != len(requests):
        raise ValueError("two requests with the same namespace/name")
    ledger = {k: v for k, v in ledger.items() if not is_pod(k)}  # recomputed below from ``strays``
    kept, dropped = reconcile_ledger(ledger, {r.key: r.uid for r in requests})

    new_ledger: Ledger = {}
    decisions: dict[str, Decision] = {}
    waiting: list[tuple[Request, int]] = []  # (request, GPUs it holds already)
    for r in requests:
        held_entry = kept.get(r.key)
        if held_entry is not None and held_entry["class"] != r.gpu_class:
            # The class changed (the CRD forbids it; be safe anyway): the old reservation buys nothing now.
            dropped.append(r.key)
            held_entry = None
        held = held_entry["gpus"] if held_entry else 0
        if r.frozen is not None:
            decisions[r.key] = _frozen(r, held_entry)
            if held_entry is not None:
                new_ledger[r.key] = dict(held_entry)
        elif held_entry is not None and r.demand <= held:
            new_ledger[r.key] = entry(r.gpu_class, r.demand, r.uid)
            decisions[r.key] = _admitted(r, "")
        else:
            if held_entry is not None:
                new_ledger[r.key] = entry(r.gpu_class, held, r.uid)
            waiting.append((r, held))

    # Surge already reserved stays reserved (and counts as used) until its rollout no longer wants it.
    by_key = {r.key: r for r in requests}
    surge_growth: list[Request] = []
    for key, e in kept.items():
        if not is_surge(key):
            continue
        r = by_key[deployment_key(key)]
        if r.gpu_class != e["class"] or r.surge == 0:
            dropped.append(key)
            continue
        gpus = e["gpus"] if r.surge is None else min(e["gpus"], r.surge)
        new_ledger[key] = entry(r.gpu_class, gpus, r.uid, SURGE)
    for r in requests:
        if r.surge and r.surge > new_ledger.get(surge_key(r.key), {}).get("gpus", 0):
            surge_growth.append(r)

    # What departing pods still hold: a deleted deployment's terminating pods, replicas removed by a scale-down or a
    # lost admission. Bounded by what the ledger held for the deployment before, so it only ever shrinks.
    before_total: dict[str, int] = {}
    before_entry: dict[str, Mapping[str, Any]] = {}  # deployment → its main entry before
    for key, held in ledger.items():
        dk = deployment_key(key)
        before_total[dk] = before_total.get(dk, 0) + held["gpus"]
        if not is_surge(key) and not is_releasing(key) or dk not in before_entry:
            before_entry[dk] = held
    held_owners: dict[str, str | None] = {}
    for key, (owner, gpus) in sorted((held_by_pods or {}).items()):
        if key not in before_entry:
            continue
        reserved_now = new_ledger.get(key, {}).get("gpus", 0) + new_ledger.get(surge_key(key), {}).get("gpus", 0)
        extra = min(gpus, before_total[key]) - reserved_now
        if extra <= 0:
            continue
        # Never another class than the GPUs were reserved as: the live deployment's (its class is immutable), else
        # what the entry held before.
        previous = ledger.get(releasing_key(key)) or before_entry[key]
        gpu_class, uid = ((by_key[key].gpu_class, by_key[key].uid) if key in by_key
                          else (previous["class"], previous["uid"]))
        new_ledger[releasing_key(key)] = entry(gpu_class, extra, uid, RELEASING)
        if key not in by_key:
            held_owners[key] = owner
    for stray in strays:
        if stray.gpus > 0:
            new_ledger[stray.key] = entry(stray.gpu_class, stray.gpus, stray.uid, POD)
            held_owners[deployment_key(stray.key)] = stray.tenant

    tenant_of = {**held_owners, **{r.key: r.tenant for r in requests}}
    used: dict[tuple[str | None, str], int] = {}
    class_used: dict[str, int] = {}
    deployments: dict[str | None, int] = {}
    for key, e in new_ledger.items():
        owner = tenant_of[deployment_key(key)]
        pool = (owner, e["class"])
        used[pool] = used.get(pool, 0) + e["gpus"]
        class_used[e["class"]] = class_used.get(e["class"], 0) + e["gpus"]
        if not is_surge(key) and not is_releasing(key) and not is_pod(key):
            deployments[owner] = deployments.get(owner, 0) + 1

    def order(item: tuple[Request, int]) -> tuple[int, datetime, str]:
        r = item[0]
        priority = tenants[r.tenant].priority if r.tenant is not None and r.tenant in tenants else 0
        return (-priority, r.created, r.key)

    blocked_pools: dict[tuple[str | None, str], str] = {}  # pool → key of the first request that did not fit
    blocked_classes: dict[str, str] = {}
    queue_length: dict[tuple[str | None, str], int] = {}
    for r, held in sorted(waiting, key=order):
        tenant = tenants.get(r.tenant) if r.tenant is not None else None
        pool = (r.tenant, r.gpu_class)
        holds = r.key in new_ledger  # admitted before (possibly with 0 GPUs): it keeps its reservation
        delta = r.demand - held
        if tenant is None:
            decisions[r.key] = _refused(r, held, holds, NO_TENANT, f"namespace {r.namespace} belongs to no Tenant")
            continue
        if tenant.cordoned:
            decisions[r.key] = _refused(
                r, held, holds, TENANT_CORDONED, f"tenant {tenant.name} is cordoned: nothing new is admitted"
            )
            continue
        if r.gpu_class not in gpu_classes:
            known = ", ".join(sorted(gpu_classes)) or "none"
            decisions[r.key] = _refused(
                r, held, holds, UNKNOWN_GPU_CLASS, f"GPU class {r.gpu_class!r} is not configured (known: {known})"
            )
            continue
        is_new = not holds
        limit_deployments = tenant.max_model_deployments
        if is_new and limit_deployments is not None and deployments.get(r.tenant, 0) >= limit_deployments:
            decisions[r.key] = _refused(
                r, held, holds, TOO_MANY_DEPLOYMENTS,
                f"tenant {tenant.name} already has {deployments.get(r.tenant, 0)} admitted ModelDeployments, "
                f"its limit (quota.maxModelDeployments) is {limit_deployments}",
            )
            continue
        limit = tenant.gpus.get(r.gpu_class, 0)
        in_use = used.get(pool, 0)
        cap = (capacity or {}).get(r.gpu_class)
        reason = message = None
        if pool in blocked_pools and not backfill:
            reason = QUOTA_EXCEEDED
            message = _quota_message(r, held, tenant.name, in_use, limit) + f"; waits behind {blocked_pools[pool]}"
        elif in_use + delta > limit:
            reason = QUOTA_EXCEEDED
            message = _quota_message(r, held, tenant.name, in_use, limit)
            blocked_pools.setdefault(pool, r.key)
        elif r.gpu_class in blocked_classes and not backfill:
            reason = INSUFFICIENT_CAPACITY
            message = (
                f"needs {delta} {r.gpu_class} GPUs; waits behind {blocked_classes[r.gpu_class]} "
                f"for the cluster's {r.gpu_class} capacity"
            )
        elif cap is not None and class_used.get(r.gpu_class, 0) + delta > cap:
            reason = INSUFFICIENT_CAPACITY
            message = (
                f"needs {delta} {r.gpu_class} GPUs but all tenants together hold "
                f"{class_used.get(r.gpu_class, 0)} of the cluster's {cap}"
            )
            blocked_classes.setdefault(r.gpu_class, r.key)
        if reason is not None:
            position = queue_length[pool] = queue_length.get(pool, 0) + 1
            decisions[r.key] = _refused(r, held, holds, reason, f"{message} (queue position {position})", position)
            if reason == INSUFFICIENT_CAPACITY:
                blocked_pools.setdefault(pool, r.key)  # keep order inside the tenant too
            continue
        new_ledger[r.key] = entry(r.gpu_class, r.demand, r.uid)
        used[pool] = in_use + delta
        class_used[r.gpu_class] = class_used.get(r.gpu_class, 0) + delta
        if is_new:
            deployments[r.tenant] = deployments.get(r.tenant, 0) + 1
        decisions[r.key] = _admitted(r, f" (tenant {tenant.name} now uses {used[pool]} of {limit})")

    # New surge, after every other admission of the pass, all or nothing, in queue order.
    for r in sorted(surge_growth, key=lambda r: order((r, 0))):
        decision = decisions[r.key]
        sk = surge_key(r.key)
        held = new_ledger.get(sk, {}).get("gpus", 0)
        tenant = tenants.get(r.tenant) if r.tenant is not None else None
        if not decision.admitted or tenant is None or r.surge is None:
            continue
        pool = (r.tenant, r.gpu_class)
        limit = tenant.gpus.get(r.gpu_class, 0)
        in_use = used.get(pool, 0)
        cap = (capacity or {}).get(r.gpu_class)
        delta = r.surge - held
        if in_use + delta > limit:
            why = (f"a rollout surge of {r.surge} {r.gpu_class} GPUs waits: tenant {tenant.name} uses {in_use} of its "
                   f"{limit} {r.gpu_class} GPUs")
        elif cap is not None and class_used.get(r.gpu_class, 0) + delta > cap:
            why = (f"a rollout surge of {r.surge} {r.gpu_class} GPUs waits: all tenants together hold "
                   f"{class_used.get(r.gpu_class, 0)} of the cluster's {cap}")
        else:
            new_ledger[sk] = entry(r.gpu_class, r.surge, r.uid, SURGE)
            used[pool] = in_use + delta
            class_used[r.gpu_class] = class_used.get(r.gpu_class, 0) + delta
            continue
        decisions[r.key] = replace(decision, surge_message=why)
    for key, decision in decisions.items():
        r = by_key[key]
        decisions[key] = replace(decision, generation=r.generation,
                                 surge=new_ledger.get(surge_key(key), {}).get("gpus", 0),
                                 surge_wanted=r.surge or 0)
    return AdmissionResult(
        ledger=dict(sorted(new_ledger.items())),
        decisions=dict(sorted(decisions.items())),
        dropped=sorted(set(dropped)),
        held_owners=held_owners,
    )


def _frozen(r: Request, held_entry: Mapping[str, Any] | None) -> Decision:
    """A request that may not change now: it keeps what it holds, or waits for the reason it was frozen for."""
    reason, why = r.frozen  # type: ignore[misc]
    if held_entry is None:
        return not_a_candidate(r, reason, why)
    held = held_entry["gpus"]
    replicas = min(r.replicas, held // r.gpus_per_replica) if r.gpus_per_replica else 0
    if held == r.demand:
        return replace(_admitted(r, f"; {why}"), reserved=held)
    return Decision(
        key=r.key, tenant=r.tenant, admitted=True, reason=RESERVATION_HELD,
        message=f"the {held} {r.gpu_class} GPUs already reserved stay reserved; the change to {_shape(r)} waits: {why}",
        gpu_class=r.gpu_class, requested=r.demand, reserved=held, replicas=replicas,
    )


def not_a_candidate(r: Request, reason: str, message: str) -> Decision:
    """The decision for a deployment that reserves nothing and waits for nothing in the queue: the platform's policy
    refuses it, or its Model may not be served."""
    return Decision(key=r.key, tenant=r.tenant, admitted=False, reason=reason, message=message,
                    gpu_class=r.gpu_class, requested=r.demand, reserved=0, replicas=0, generation=r.generation)


def _admitted(r: Request, suffix: str) -> Decision:
    return Decision(
        key=r.key, tenant=r.tenant, admitted=True, reason=ADMITTED,
        message=f"{r.demand} {r.gpu_class} GPUs reserved ({_shape(r)}){suffix}",
        gpu_class=r.gpu_class, requested=r.demand, reserved=r.demand, replicas=r.replicas,
    )


def _refused(
    r: Request, held: int, holds: bool, reason: str, message: str, position: int | None = None
) -> Decision:
    """A request that (partly) waits. If it ``holds`` a reservation (of ``held`` GPUs) it keeps running on it."""
    replicas = min(r.replicas, held // r.gpus_per_replica) if r.gpus_per_replica else 0
    if holds:
        message = (
            f"scale-up to {r.replicas} replicas waits: {message}; "
            f"meanwhile {replicas} replicas run on the {held} GPUs already reserved"
        )
    return Decision(
        key=r.key, tenant=r.tenant, admitted=holds, reason=reason, message=message, gpu_class=r.gpu_class,
        requested=r.demand, reserved=held, replicas=replicas, queue_position=position,
    )


def _shape(r: Request) -> str:
    return f"{r.replicas} × {r.gpus_per_replica}"


def _quota_message(r: Request, held: int, tenant: str, in_use: int, limit: int) -> str:
    need = f"{r.demand - held} more" if held else str(r.demand)  # held > 0 only for a scale-up
    return (
        f"needs {need} {r.gpu_class} GPUs ({_shape(r)}) but tenant {tenant} uses {in_use} of its "
        f"{limit} {r.gpu_class} GPUs"
    )


def gpu_summary(used: Mapping[str, int], allowed: Mapping[str, int]) -> str:
    """``"h100 4/8, l4 0/4"``: GPUs used/allowed per class, classes of the quota first, in quota order."""
    classes = list(allowed) + sorted(c for c in used if c not in allowed)
    return ", ".join(f"{c} {used.get(c, 0)}/{allowed.get(c, 0)}" for c in classes)
