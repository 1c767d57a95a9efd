"""Who may run: admission of ModelDeployments against per-tenant, per-GPU-class quotas.

:func:`admit` is a pure function of (the ledger, the current deployments, the tenants, the known GPU classes). It
returns the new ledger and one :class:`Decision` per deployment. Rules:

- A deployment's demand is ``replicas × gpu.count`` GPUs of ``gpu.class``.
- A deployment that holds a reservation keeps it. Scaling down shrinks the reservation at once; scaling up asks for
  the difference only, and when the difference does not fit it gets as many whole replicas of it as fit
  (``Request.partial``; not while a new pod shape waits) and the rest waits in the queue, in order, blocking the
  later requests of its pool like any other (``admitted=True``, ``reason=QuotaExceeded``, ``replicas`` = what the
  reservation now pays for, ``limited``). A first admission is all or nothing, unless the request names
  ``min_replicas`` (autoscaled deployments: minReplicas): then those come all together, the rest as above.
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
from dataclasses import replace
from datetime import datetime
from typing import Any

from .decisions import (
    INSUFFICIENT_CAPACITY,
    NO_TENANT,
    QUOTA_EXCEEDED,
    TENANT_CORDONED,
    TOO_MANY_DEPLOYMENTS,
    UNKNOWN_GPU_CLASS,
    AdmissionResult,
    Decision,
    Request,
    Stray,
    TenantInfo,
    admitted_decision,
    frozen_decision,
    quota_message,
    waiting_decision,
)
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
    reconcile_ledger,
    releasing_key,
    surge_key,
)

Pool = tuple[str | None, str]  # (tenant, GPU class)


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
    run = _Pass(requests, {k: v for k, v in ledger.items() if not is_pod(k)}, tenants, gpu_classes, capacity or {},
                backfill)
    waiting = run.keep_reservations()
    surge_growth = run.keep_surge()
    run.keep_what_pods_hold(held_by_pods or {}, strays)
    run.count_usage()
    for r, held in sorted(waiting, key=run.order):
        run.decide(r, held)
    for r in sorted(surge_growth, key=lambda r: run.order((r, 0))):
        run.grant_surge(r)
    return run.result()


class _Pass:
    """One admission pass: the new ledger and the decisions, built phase by phase (see ``admit``)."""

    def __init__(self, requests: list[Request], ledger: Mapping[str, Mapping[str, Any]],
                 tenants: Mapping[str, TenantInfo], gpu_classes: Collection[str], capacity: Mapping[str, int],
                 backfill: bool):
        self.requests, self.ledger, self.tenants = requests, ledger, tenants
        self.gpu_classes, self.capacity, self.backfill = gpu_classes, capacity, backfill
        self.by_key = {r.key: r for r in requests}
        self.kept, self.dropped = reconcile_ledger(ledger, {r.key: r.uid for r in requests})
        self.new_ledger: Ledger = {}
        self.decisions: dict[str, Decision] = {}
        self.held_owners: dict[str, str | None] = {}
        self.used: dict[Pool, int] = {}
        self.class_used: dict[str, int] = {}
        self.deployments: dict[str | None, int] = {}
        self.blocked_pools: dict[Pool, str] = {}  # pool → key of the first request that did not fit
        self.blocked_classes: dict[str, str] = {}
        self.queue_length: dict[Pool, int] = {}

    def keep_reservations(self) -> list[tuple[Request, int]]:
        """What each request keeps of its reservation: all of it (frozen), its new smaller demand (decided), or what
        it held while it waits for more; returns those that wait, with the GPUs they hold."""
        waiting: list[tuple[Request, int]] = []
        for r in self.requests:
            held_entry = self.kept.get(r.key)
            if held_entry is not None and held_entry["class"] != r.gpu_class:
                # The class changed (the CRD forbids it; be safe anyway): the old reservation buys nothing now.
                self.dropped.append(r.key)
                held_entry = None
            held = held_entry["gpus"] if held_entry else 0
            if r.frozen is not None:
                self.decisions[r.key] = frozen_decision(r, held_entry)
                if held_entry is not None:
                    self.new_ledger[r.key] = dict(held_entry)
            elif held_entry is not None and r.demand <= held:
                self.new_ledger[r.key] = entry(r.gpu_class, r.demand, r.uid)
                self.decisions[r.key] = admitted_decision(r, "")
            else:
                if held_entry is not None:
                    self.new_ledger[r.key] = entry(r.gpu_class, held, r.uid)
                waiting.append((r, held))
        return waiting

    def keep_surge(self) -> list[Request]:
        """Surge already reserved stays reserved (and counts as used) until its rollout no longer wants it; returns
        the requests whose rollout wants more."""
        for key, e in self.kept.items():
            if not is_surge(key):
                continue
            r = self.by_key[deployment_key(key)]
            if r.gpu_class != e["class"] or r.surge == 0:
                self.dropped.append(key)
                continue
            gpus = e["gpus"] if r.surge is None else min(e["gpus"], r.surge)
            self.new_ledger[key] = entry(r.gpu_class, gpus, r.uid, SURGE)
        return [r for r in self.requests
                if r.surge and r.surge > self.new_ledger.get(surge_key(r.key), {}).get("gpus", 0)]

    def keep_what_pods_hold(self, held_by_pods: Mapping[str, tuple[str | None, int]], strays: Iterable[Stray]) -> None:
        """What departing pods still hold stays reserved: a deployment's pods beyond its reservation (scale-down,
        lost admission: ``#releasing``, bounded by what the ledger held for it before, of the class it was reserved
        as), and strays (``#pod``, of their node's class)."""
        before_total: dict[str, int] = {}
        before_entry: dict[str, Mapping[str, Any]] = {}  # deployment → its main entry before
        for key, held in self.ledger.items():
            dk = deployment_key(key)
            before_total[dk] = before_total.get(dk, 0) + held["gpus"]
            if not is_surge(key) and not is_releasing(key) or dk not in before_entry:
                before_entry[dk] = held
        for key, (owner, gpus) in sorted(held_by_pods.items()):
            if key not in before_entry:
                continue
            reserved_now = (self.new_ledger.get(key, {}).get("gpus", 0)
                            + self.new_ledger.get(surge_key(key), {}).get("gpus", 0))
            extra = min(gpus, before_total[key]) - reserved_now
            if extra <= 0:
                continue
            previous = self.ledger.get(releasing_key(key)) or before_entry[key]
            r = self.by_key.get(key)
            gpu_class, uid = (r.gpu_class, r.uid) if r is not None else (previous["class"], previous["uid"])
            self.new_ledger[releasing_key(key)] = entry(gpu_class, extra, uid, RELEASING)
            if r is None:
                self.held_owners[key] = owner
        for stray in strays:
            if stray.gpus > 0:
                self.new_ledger[stray.key] = entry(stray.gpu_class, stray.gpus, stray.uid, POD)
                self.held_owners[deployment_key(stray.key)] = stray.tenant

    def count_usage(self) -> None:
        tenant_of = {**self.held_owners, **{r.key: r.tenant for r in self.requests}}
        for key, e in self.new_ledger.items():
            owner = tenant_of[deployment_key(key)]
            pool = (owner, e["class"])
            self.used[pool] = self.used.get(pool, 0) + e["gpus"]
            self.class_used[e["class"]] = self.class_used.get(e["class"], 0) + e["gpus"]
            if not is_surge(key) and not is_releasing(key) and not is_pod(key):
                self.deployments[owner] = self.deployments.get(owner, 0) + 1

    def order(self, item: tuple[Request, int]) -> tuple[int, datetime, str]:
        """The queue: tenant priority (higher first), then creation time, then namespace/name."""
        r = item[0]
        priority = self.tenants[r.tenant].priority if r.tenant is not None and r.tenant in self.tenants else 0
        return (-priority, r.created, r.key)

    def decide(self, r: Request, held: int) -> None:
        """Admit a waiting request if its tenant's quota (and the class's capacity) allows, in queue order; a
        scale-up (or a first admission above its ``min_replicas``) that does not fit whole gets the whole replicas
        that fit, and the rest waits in the queue."""
        holds = r.key in self.new_ledger  # admitted before (possibly with 0 GPUs): it keeps its reservation
        refusal = self._refusal(r, held, holds)
        if refusal is not None:
            self.decisions[r.key] = waiting_decision(r, held, holds, *refusal)
            return
        tenant = self.tenants[r.tenant or ""]
        pool, limit = (r.tenant, r.gpu_class), tenant.gpus.get(r.gpu_class, 0)
        room = self._room(r, pool, limit)
        if room is not None and r.demand - held <= room:
            self._reserve(r, pool, held, r.demand, holds)
            # No tenant-wide figure in the message: it would change with every other deployment the tenant admits,
            # each change a new decision, a reconcile and a status write of every deployment the tenant has (the
            # Tenant's status carries what it uses).
            self.decisions[r.key] = admitted_decision(r)
            return
        granted = self._part_that_fits(r, held, holds, room)
        if granted > held or (granted > 0 and not holds):
            self._reserve(r, pool, held, granted, holds)
            holds = True
        reason, message = self._wait_reason(r, granted, tenant, pool, limit, r.demand - granted)
        assert reason is not None  # what is left does not fit: that is why only part was granted
        position = self.queue_length[pool] = self.queue_length.get(pool, 0) + 1
        self.decisions[r.key] = waiting_decision(r, granted, holds, reason, f"{message} (queue position {position})",
                                                 position)
        if reason == INSUFFICIENT_CAPACITY:
            self.blocked_pools.setdefault(pool, r.key)  # keep order inside the tenant too

    def _room(self, r: Request, pool: Pool, limit: int) -> int | None:
        """GPUs this request may take now: what is left of its tenant's quota (and of the class's capacity); None
        when an earlier request of its pool (or class) waits, which it may not overtake."""
        if not self.backfill and (pool in self.blocked_pools or r.gpu_class in self.blocked_classes):
            return None
        room = limit - self.used.get(pool, 0)
        cap = self.capacity.get(r.gpu_class)
        if cap is not None:
            room = min(room, cap - self.class_used.get(r.gpu_class, 0))
        return max(room, 0)

    def _part_that_fits(self, r: Request, held: int, holds: bool, room: int | None) -> int:
        """GPUs to reserve when the whole request does not fit: ``held`` plus as many whole replicas as ``room``
        allows — for a reservation held, or a first admission of at least ``min_replicas`` — else ``held``."""
        per = r.gpus_per_replica
        if room is None or not r.partial or per <= 0:
            return held
        granted = held + (room // per) * per
        if not holds and granted < (r.replicas if r.min_replicas is None else r.min_replicas) * per:
            return held  # a new deployment's first replicas come all together (minReplicas) or not at all
        return granted

    def _reserve(self, r: Request, pool: Pool, held: int, gpus: int, holds: bool) -> None:
        self.new_ledger[r.key] = entry(r.gpu_class, gpus, r.uid)
        self.used[pool] = self.used.get(pool, 0) + gpus - held
        self.class_used[r.gpu_class] = self.class_used.get(r.gpu_class, 0) + gpus - held
        if not holds:
            self.deployments[r.tenant] = self.deployments.get(r.tenant, 0) + 1

    def _refusal(self, r: Request, held: int, holds: bool) -> tuple[str, str] | None:
        """Why a request cannot be admitted whatever the quota: no tenant, cordoned, unknown class, too many."""
        tenant = self.tenants.get(r.tenant) if r.tenant is not None else None
        if tenant is None:
            return NO_TENANT, f"namespace {r.namespace} belongs to no Tenant"
        if tenant.cordoned:
            return TENANT_CORDONED, f"tenant {tenant.name} is cordoned: nothing new is admitted"
        if r.gpu_class not in self.gpu_classes:
            known = ", ".join(sorted(self.gpu_classes)) or "none"
            return UNKNOWN_GPU_CLASS, f"GPU class {r.gpu_class!r} is not configured (known: {known})"
        limit = tenant.max_model_deployments
        if not holds and limit is not None and self.deployments.get(r.tenant, 0) >= limit:
            return (TOO_MANY_DEPLOYMENTS,
                    f"tenant {tenant.name} already has {self.deployments.get(r.tenant, 0)} admitted ModelDeployments, "
                    f"its limit (quota.maxModelDeployments) is {limit}")
        return None

    def _wait_reason(self, r: Request, held: int, tenant: TenantInfo, pool: Pool, limit: int,
                     delta: int) -> tuple[str | None, str]:
        """Why a request waits for quota or capacity (None: it fits now)."""
        in_use = self.used.get(pool, 0)
        cap = self.capacity.get(r.gpu_class)
        if pool in self.blocked_pools and not self.backfill:
            return QUOTA_EXCEEDED, (quota_message(r, held, tenant.name, in_use, limit)
                                    + f"; waits behind {self.blocked_pools[pool]}")
        if in_use + delta > limit:
            self.blocked_pools.setdefault(pool, r.key)
            return QUOTA_EXCEEDED, quota_message(r, held, tenant.name, in_use, limit)
        if r.gpu_class in self.blocked_classes and not self.backfill:
            return INSUFFICIENT_CAPACITY, (f"needs {delta} {r.gpu_class} GPUs; waits behind "
                                           f"{self.blocked_classes[r.gpu_class]} for the cluster's {r.gpu_class} "
                                           "capacity")
        if cap is not None and self.class_used.get(r.gpu_class, 0) + delta > cap:
            self.blocked_classes.setdefault(r.gpu_class, r.key)
            return INSUFFICIENT_CAPACITY, (f"needs {delta} {r.gpu_class} GPUs but all tenants together hold "
                                           f"{self.class_used.get(r.gpu_class, 0)} of the cluster's {cap}")
        return None, ""

    def grant_surge(self, r: Request) -> None:
        """New surge, after every other admission of the pass, all or nothing, in queue order."""
        decision = self.decisions[r.key]
        sk = surge_key(r.key)
        held = self.new_ledger.get(sk, {}).get("gpus", 0)
        tenant = self.tenants.get(r.tenant) if r.tenant is not None else None
        if not decision.admitted or tenant is None or r.surge is None:
            return
        pool = (r.tenant, r.gpu_class)
        limit, in_use = tenant.gpus.get(r.gpu_class, 0), self.used.get(pool, 0)
        cap = self.capacity.get(r.gpu_class)
        delta = r.surge - held
        if in_use + delta > limit:
            why = (f"a rollout surge of {r.surge} {r.gpu_class} GPUs waits: tenant {tenant.name} uses {in_use} of its "
                   f"{limit} {r.gpu_class} GPUs")
        elif cap is not None and self.class_used.get(r.gpu_class, 0) + delta > cap:
            why = (f"a rollout surge of {r.surge} {r.gpu_class} GPUs waits: all tenants together hold "
                   f"{self.class_used.get(r.gpu_class, 0)} of the cluster's {cap}")
        else:
            self.new_ledger[sk] = entry(r.gpu_class, r.surge, r.uid, SURGE)
            self.used[pool] = in_use + delta
            self.class_used[r.gpu_class] = self.class_used.get(r.gpu_class, 0) + delta
            return
        self.decisions[r.key] = replace(decision, surge_message=why)

    def result(self) -> AdmissionResult:
        decisions = {key: replace(d, generation=self.by_key[key].generation,
                                  surge=self.new_ledger.get(surge_key(key), {}).get("gpus", 0),
                                  surge_wanted=self.by_key[key].surge or 0,
                                  wanted_replicas=self.by_key[key].replicas)
                     for key, d in self.decisions.items()}
        for key, d in decisions.items():
            tenant = self.tenants.get(d.tenant) if d.tenant is not None else None
            if d.limited and tenant is not None:  # what ScalingLimited names: the class, its use and its quota
                used = self.used.get((d.tenant, d.gpu_class), 0)
                decisions[key] = replace(d, pool=f"{d.gpu_class} {used}/{tenant.gpus.get(d.gpu_class, 0)}")
        return AdmissionResult(ledger=dict(sorted(self.new_ledger.items())), decisions=dict(sorted(decisions.items())),
                               dropped=sorted(set(self.dropped)), held_owners=self.held_owners)
