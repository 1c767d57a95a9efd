"""What the reconcilers tell each other, in one place with one lock, forgotten when its object goes.

- admission → deployments: the decisions of the last pass (``decision``), published only after the ledger they rest
  on is stored in the Tenants' status;
- deployments → admission: the surge GPUs each rollout wants (``ask_surge``);
- admission → triggers: which deployments' departing pods still hold GPUs (``releasing``);
- models → deployments: the last verification of each Model (``verification``);
- tenants → admission: the namespaces and keys each tenant may not have, shown in its status;
- autoscaler → deployments: what it last found of each autoscaled deployment (``autoscaler_report``);
- what each namespace's ResourceQuota (GPU backstop and tenant quota) was made of, as last written.

And :class:`AdmissionScope`, what the next admission pass must decide again, as events report it. Everything a
reconciler keeps only for itself (what it last applied, memos) stays in that reconciler.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..config import OperatorConfig
from ..core.autoscaling import AutoscalerReport
from ..core.quota import Decision
from ..core.verification import Verification
from ..kube.client import Kube
from ..kube.events import EventRecorder
from ..kube.workqueue import WorkQueue
from .cache import Cache

ADMISSION: tuple[str] = ("admission",)


class AdmissionScope:
    """What the next admission pass must decide again (thread-safe): tenants by name (None: the namespaces no
    tenant owns), namespaces (whichever tenant owns them when the pass runs), or everything (the first pass, a
    resync, a namespace relabelled, a Tenant deleted)."""

    @dataclass(frozen=True)
    class Taken:
        everything: bool
        tenants: frozenset
        namespaces: frozenset

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._everything = True  # nothing is decided yet
        self._tenants: set[str | None] = set()
        self._namespaces: set[str] = set()

    def mark(self, *, namespace: str | None = None, tenants: tuple[str | None, ...] = (),
             everything: bool = False) -> None:
        with self._lock:
            self._everything |= everything
            self._tenants.update(tenants)
            if namespace is not None:
                self._namespaces.add(namespace)

    def take(self) -> Taken:
        with self._lock:
            taken = self.Taken(self._everything, frozenset(self._tenants), frozenset(self._namespaces))
            self._everything, self._tenants, self._namespaces = False, set(), set()
        return taken

    def give_back(self, taken: Taken) -> None:
        """A pass that failed: what it should have decided is still to decide."""
        with self._lock:
            self._everything |= taken.everything
            self._tenants |= taken.tenants
            self._namespaces |= taken.namespaces


class SharedState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: dict[str, tuple[str, Decision]] = {}  # deployment key → (its uid, decision)
        self._surge_asks: dict[str, int] = {}  # absent: not known since a restart (admission keeps what is held)
        self._releasing: frozenset[str] = frozenset()
        self._verified: dict[tuple[str, str], tuple[str | None, int | None, Verification]] = {}
        self._refusals: dict[str, tuple[dict[str, str], list[str]]] = {}  # tenant → (namespaces, keys) refused
        # namespace → (what its ResourceQuota was rendered from, the quota as written), as last written
        self._backstops: dict[str, tuple[Hashable, dict[str, Any]]] = {}
        # namespace → {pod uid: "<namespace>/<pod> (why)"} of intruders removed whose pods are still terminating
        self._removed_intruders: dict[str, dict[str, str]] = {}
        # tenant → {what: why} of objects in the way of its children (its namespaces' policies, quotas, runtime
        # identity) that are not its own: nothing is written into them; its status says so
        self._tenant_conflicts: dict[str, dict[str, str]] = {}
        # deployment key → (its uid, (kind, name) of the object in the way of a child, why): not even a candidate
        self._child_conflicts: dict[str, tuple[str, tuple[str, str], str]] = {}
        # deployment key → (its uid, the autoscaler's last report)
        self._autoscaler_reports: dict[str, tuple[str, AutoscalerReport]] = {}

    # Decisions ------------------------------------------------------------------------------------------------------

    def decisions(self) -> dict[str, tuple[str, Decision]]:
        with self._lock:
            return dict(self._decisions)

    def publish_decisions(self, decisions: dict[str, tuple[str, Decision]]) -> None:
        with self._lock:
            self._decisions = decisions

    def decision(self, key: str, uid: str | None) -> Decision | None:
        """The decision for the deployment ``key`` with this uid (not one of a deleted namesake)."""
        with self._lock:
            found = self._decisions.get(key)
        return found[1] if found is not None and found[0] == (uid or "") else None

    # Surge ----------------------------------------------------------------------------------------------------------

    def ask_surge(self, key: str, gpus: int) -> bool:
        """Record what a rollout wants for its surge; True if that changed."""
        with self._lock:
            if self._surge_asks.get(key) == gpus:
                return False
            self._surge_asks[key] = gpus
            return True

    def surge_ask(self, key: str) -> int | None:
        with self._lock:
            return self._surge_asks.get(key)

    # Departing pods -------------------------------------------------------------------------------------------------

    @property
    def releasing(self) -> frozenset[str]:
        return self._releasing

    def set_releasing(self, keys: set[str]) -> None:
        with self._lock:
            self._releasing = frozenset(keys)

    # Verifications --------------------------------------------------------------------------------------------------

    def remember_verification(self, namespace: str, name: str, uid: str | None, generation: int | None,
                              outcome: Verification) -> None:
        with self._lock:
            self._verified[(namespace, name)] = (uid, generation, outcome)

    def verification(self, namespace: str, name: str, uid: str | None, generation: int | None) -> Verification | None:
        with self._lock:
            found = self._verified.get((namespace, name))
        return found[2] if found is not None and found[:2] == (uid, generation) else None

    # Tenants' refusals ----------------------------------------------------------------------------------------------

    def set_refusals(self, tenant: str, namespaces: dict[str, str], keys: list[str]) -> None:
        with self._lock:
            self._refusals[tenant] = (namespaces, keys)

    def refusals(self, tenant: str) -> tuple[dict[str, str], list[str]]:
        with self._lock:
            return self._refusals.get(tenant, ({}, []))

    # Backstops ------------------------------------------------------------------------------------------------------

    def backstop(self, namespace: str) -> tuple[Hashable, dict[str, Any]] | None:
        with self._lock:
            return self._backstops.get(namespace)

    def set_backstop(self, namespace: str, inputs: Hashable | None,
                     written: dict[str, Any] | None = None) -> None:
        with self._lock:
            if inputs is None or written is None:
                self._backstops.pop(namespace, None)
            else:
                self._backstops[namespace] = (inputs, written)

    def set_tenant_conflicts(self, tenant: str, source: str, conflicts: dict[str, str]) -> None:
        """What ``source`` (its reconciler, admission's backstops) found in the way of the tenant's children."""
        with self._lock:
            mine = {k: v for k, v in self._tenant_conflicts.get(tenant, {}).items() if not k.startswith(source + ":")}
            mine.update({f"{source}:{k}": v for k, v in conflicts.items()})
            self._tenant_conflicts[tenant] = mine

    def tenant_conflicts(self, tenant: str) -> list[str]:
        with self._lock:
            return sorted(self._tenant_conflicts.get(tenant, {}).values())

    # Children in the way ----------------------------------------------------------------------------------------

    def set_child_conflict(self, key: str, uid: str | None, obstacle: tuple[str, str], why: str) -> None:
        with self._lock:
            self._child_conflicts[key] = (uid or "", obstacle, why)

    def child_conflict(self, key: str, uid: str | None) -> tuple[tuple[str, str], str] | None:
        """(kind, name) of an object in the way of the deployment's children that is not its own, and why."""
        with self._lock:
            found = self._child_conflicts.get(key)
        return (found[1], found[2]) if found is not None and found[0] == (uid or "") else None

    def clear_child_conflict(self, key: str) -> None:
        with self._lock:
            self._child_conflicts.pop(key, None)

    # The autoscaler's reports ---------------------------------------------------------------------------------

    def set_autoscaler_report(self, key: str, uid: str | None, report: AutoscalerReport | None) -> bool:
        """Record what the autoscaler found (None: forget it); True if that changed what it says."""
        with self._lock:
            before = self._autoscaler_reports.get(key)
            if report is None:
                self._autoscaler_reports.pop(key, None)
                return before is not None
            self._autoscaler_reports[key] = (uid or "", report)
            return before != (uid or "", report)

    def autoscaler_report(self, key: str, uid: str | None) -> AutoscalerReport | None:
        with self._lock:
            found = self._autoscaler_reports.get(key)
        return found[1] if found is not None and found[0] == (uid or "") else None

    # Intruders removed ------------------------------------------------------------------------------------------

    def removed_intruder(self, namespace: str, uid: str, description: str) -> None:
        with self._lock:
            self._removed_intruders.setdefault(namespace, {})[uid] = description

    def removed_intruders(self, namespace: str, present: set[str] | None = None) -> dict[str, str]:
        """The intruders removed in ``namespace`` whose pods still exist (``present``: the uids of its GPU pods now;
        the others are forgotten)."""
        with self._lock:
            mine = self._removed_intruders.get(namespace, {})
            if present is not None:
                mine = {uid: d for uid, d in mine.items() if uid in present}
                if mine:
                    self._removed_intruders[namespace] = mine
                else:
                    self._removed_intruders.pop(namespace, None)
            return dict(mine)

    # Forgetting -----------------------------------------------------------------------------------------------------

    def forget_model_deployment(self, key: str) -> None:
        with self._lock:
            self._surge_asks.pop(key, None)
            self._child_conflicts.pop(key, None)
            self._autoscaler_reports.pop(key, None)

    def forget_model(self, namespace: str, name: str) -> None:
        with self._lock:
            self._verified.pop((namespace, name), None)

    def forget_tenant(self, tenant: str) -> None:
        with self._lock:
            self._refusals.pop(tenant, None)
            self._tenant_conflicts.pop(tenant, None)


@dataclass
class Context:
    """What every reconciler works with: the API, Events, configuration, the work queue, the cache and the shared
    state."""

    kube: Kube
    events: EventRecorder
    config: OperatorConfig
    queue: WorkQueue
    cache: Cache
    state: SharedState = field(default_factory=SharedState)
    scope: AdmissionScope = field(default_factory=AdmissionScope)

    def admit_again(self, *, namespace: str | None = None, tenants: tuple[str | None, ...] = (),
                    everything: bool = False) -> None:
        """Queue an admission pass that decides again what an event touched: the tenant owning ``namespace``, the
        ``tenants`` named (None: namespaces no tenant owns), or ``everything``."""
        self.scope.mark(namespace=namespace, tenants=tenants, everything=everything)
        self.queue.add(ADMISSION)

    def wake(self, kind: str, *key: Any) -> None:
        self.queue.add((kind, *key))

    def wake_later(self, delay: float, kind: str, *key: Any) -> None:
        self.queue.add((kind, *key), delay=delay)


def fairness_group(key: Hashable) -> Hashable:
    """Work is served round-robin across namespaces, so one tenant's burst of events cannot delay another's."""
    if isinstance(key, tuple) and len(key) == 3:
        return key[1]
    return ""
