"""What admission reads and answers: tenants, requests, strays, decisions and their messages. Pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from ...api.types import ModelDeployment, Tenant
from ..autoscaling import gang_replicas, wanted_replicas
from .ledger import Ledger, deployment_key, ledger_key, pod_key

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
    # The fewest replicas a first admission may grant (the rest as quota allows); None: all of them or nothing.
    min_replicas: int | None = None
    # A scale-up of a reservation held may be granted in part (as many whole replicas as fit). False while a new pod
    # shape waits: replicas of two shapes are not mixed.
    partial: bool = True

    @property
    def key(self) -> str:
        return ledger_key(self.namespace, self.name)

    @property
    def demand(self) -> int:
        return self.replicas * self.gpus_per_replica

    @classmethod
    def from_model_deployment(cls, mdep: ModelDeployment, tenant: str | None, *, surge: int | None = None,
                              frozen: tuple[str, str] | None = None, partial: bool = True) -> Request:
        meta = mdep.metadata
        return cls(
            generation=meta.generation,
            surge=surge,
            frozen=frozen,
            partial=partial,
            min_replicas=gang_replicas(mdep),
            namespace=meta.namespace or "",
            name=meta.name,
            uid=meta.uid or "",
            tenant=tenant,
            gpu_class=mdep.spec.gpu.class_,
            replicas=wanted_replicas(mdep),
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
    wanted_replicas: int = 0  # replicas asked for (the spec's, or the autoscaler's)
    pool: str = ""  # while granted in part: "<class> <used>/<quota>" of its tenant after the pass

    @property
    def complete(self) -> bool:
        """The whole spec is admitted."""
        return self.reason == ADMITTED

    @property
    def limited(self) -> bool:
        """Admitted, with fewer replicas than asked for: the rest waits in the queue."""
        return self.admitted and self.replicas < self.wanted_replicas


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


def frozen_decision(r: Request, held_entry: Mapping[str, Any] | None) -> Decision:
    """A request that may not change now: it keeps what it holds, or waits for the reason it was frozen for."""
    reason, why = r.frozen  # type: ignore[misc]
    if held_entry is None:
        return not_a_candidate(r, reason, why)
    held = held_entry["gpus"]
    replicas = min(r.replicas, held // r.gpus_per_replica) if r.gpus_per_replica else 0
    if held == r.demand:
        return replace(admitted_decision(r, f"; {why}"), reserved=held)
    return Decision(
        key=r.key, tenant=r.tenant, admitted=True, reason=RESERVATION_HELD,
        message=f"the {held} {r.gpu_class} GPUs already reserved stay reserved; the change to {shape(r)} waits: {why}",
        gpu_class=r.gpu_class, requested=r.demand, reserved=held, replicas=replicas,
    )


def not_a_candidate(r: Request, reason: str, message: str) -> Decision:
    """The decision for a deployment that reserves nothing and waits for nothing in the queue: the platform's policy
    refuses it, or its Model may not be served."""
    return Decision(key=r.key, tenant=r.tenant, admitted=False, reason=reason, message=message,
                    gpu_class=r.gpu_class, requested=r.demand, reserved=0, replicas=0, generation=r.generation,
                    wanted_replicas=r.replicas)


def admitted_decision(r: Request, suffix: str = "") -> Decision:
    return Decision(
        key=r.key, tenant=r.tenant, admitted=True, reason=ADMITTED,
        message=f"{r.demand} {r.gpu_class} GPUs reserved ({shape(r)}){suffix}",
        gpu_class=r.gpu_class, requested=r.demand, reserved=r.demand, replicas=r.replicas,
    )


def waiting_decision(
    r: Request, held: int, holds: bool, reason: str, message: str, position: int | None = None
) -> Decision:
    """A request that (partly) waits. If it ``holds`` a reservation (of ``held`` GPUs: what it held, or what part of
    its scale-up fitted) it runs on that."""
    replicas = min(r.replicas, held // r.gpus_per_replica) if r.gpus_per_replica else 0
    if holds:
        message = (
            f"{replicas} of {r.replicas} replicas granted ({held} {r.gpu_class} GPUs reserved); the other "
            f"{r.replicas - replicas} wait: {message}"
        )
    return Decision(
        key=r.key, tenant=r.tenant, admitted=holds, reason=reason, message=message, gpu_class=r.gpu_class,
        requested=r.demand, reserved=held, replicas=replicas, queue_position=position,
    )


def shape(r: Request) -> str:
    return f"{r.replicas} × {r.gpus_per_replica}"


def quota_message(r: Request, held: int, tenant: str, in_use: int, limit: int) -> str:
    need = f"{r.demand - held} more" if held else str(r.demand)  # held > 0 only for a scale-up
    return (
        f"needs {need} {r.gpu_class} GPUs ({shape(r)}) but tenant {tenant} uses {in_use} of its "
        f"{limit} {r.gpu_class} GPUs"
    )


def gpu_summary(used: Mapping[str, int], allowed: Mapping[str, int]) -> str:
    """``"h100 4/8, l4 0/4"``: GPUs used/allowed per class, classes of the quota first, in quota order."""
    classes = list(allowed) + sorted(c for c in used if c not in allowed)
    return ", ".join(f"{c} {used.get(c, 0)}/{allowed.get(c, 0)}" for c in classes)
