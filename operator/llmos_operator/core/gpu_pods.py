"""Which GPU pods of a tenant's namespaces an admitted reservation accounts for, and which are intruders. Pure.

A pod is **accounted** to ModelDeployment ``M`` when its controller chain is llmos's own: the pod's controller is a
ReplicaSet whose controller is a Deployment labelled for ``M`` whose controller is ``M`` — each link checked by uid,
not by name or label (a tenant can copy labels, not uids). Its GPUs are part of ``M``'s reservation (what it holds
beyond that stays reserved as ``#releasing``).

Every other pod that holds GPUs is a **stray**, counted against the tenant by the class of the node it runs on (or,
not scheduled yet, the class it asks for): nothing queued is admitted onto GPUs still in use. A stray is
**departing** when it is on its way out by itself — terminating, or controlled through llmos's chain by a Deployment
whose ModelDeployment is gone (the garbage collector removes it) — and an **intruder** otherwise: a pod that no
admission allowed (an orphaned ReplicaSet's, a workload some hole let through). The operator removes intruders.
A link the store has not seen yet (a ReplicaSet that just appeared) is **unknown**: counted, never removed before
the object was read live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api.names import LABEL_MANAGED_BY, LABEL_MODEL_DEPLOYMENT, MANAGED_BY
from ..config import OperatorConfig
from .quota import Stray
from .workloads import gpus_requested, holds_gpus

Obj = Mapping[str, Any]
Lookup = Callable[[str, str], Obj | None]  # (kind, name) → the object in the pod's namespace, or None

ACCOUNTED = "Accounted"
DEPARTING = "Departing"
INTRUDER = "Intruder"
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Verdict:
    kind: str  # ACCOUNTED, DEPARTING, INTRUDER or UNKNOWN
    why: str = ""
    deployment_key: str | None = None  # ACCOUNTED: "<namespace>/<ModelDeployment>"
    owner: tuple[str, str, str] | None = None  # (kind, name, uid) of the pod's controller, if it has one
    missing: tuple[str, str] | None = None  # UNKNOWN: (kind, name) of the link the store lacks


@dataclass(frozen=True)
class Intruder:
    namespace: str
    name: str
    uid: str
    gpus: int
    gpu_class: str | None
    why: str
    owner: tuple[str, str, str] | None


@dataclass
class Accounting:
    held: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # deployment key → (tenant, GPUs)
    strays: list[Stray] = field(default_factory=list)
    intruders: list[Intruder] = field(default_factory=list)
    unknown: list[tuple[str, str, tuple[str, str]]] = field(default_factory=list)  # (namespace, pod, missing link)


def controller_of(obj: Obj) -> tuple[str, str, str] | None:
    """(kind, name, uid) of the object's controller (the ownerReference with ``controller: true``)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name")), str(ref.get("uid"))
    return None


def _deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def verdict(pod: Obj, lookup: Lookup, live_deployments: Mapping[str, str], *, complete: bool = False) -> Verdict:
    """How ``pod`` is accounted for. ``live_deployments``: "<namespace>/<name>" → uid of every ModelDeployment that
    exists and is not being deleted. ``complete``: ``lookup`` reads the API server itself, so an object it does not
    find does not exist (the garbage collector removes a pod whose controller is gone), rather than not seen yet."""
    ns = (pod.get("metadata") or {}).get("namespace") or ""
    owner = controller_of(pod)
    if _deleting(pod):
        return Verdict(DEPARTING, "terminating", owner=owner)
    if owner is None or owner[0] != "ReplicaSet":
        return Verdict(INTRUDER, f"controlled by {owner[0]} {owner[1]}" if owner else "no controller", owner=owner)
    rs = lookup("ReplicaSet", owner[1])
    if rs is None or rs["metadata"].get("uid") != owner[2]:
        if complete:  # a dependent whose owner is gone: the garbage collector deletes it
            return Verdict(DEPARTING, f"its ReplicaSet {owner[1]} is gone", owner=owner)
        return Verdict(UNKNOWN, missing=("ReplicaSet", owner[1]), owner=owner)
    if _deleting(rs):
        return Verdict(DEPARTING, f"its ReplicaSet {owner[1]} is being deleted", owner=owner)
    rs_owner = controller_of(rs)
    if rs_owner is None or rs_owner[0] != "Deployment":
        what = f"controlled by {rs_owner[0]} {rs_owner[1]}" if rs_owner else "controlled by nothing (orphaned)"
        return Verdict(INTRUDER, f"its ReplicaSet {owner[1]} is {what}", owner=owner)
    dep = lookup("Deployment", rs_owner[1])
    if dep is None or dep["metadata"].get("uid") != rs_owner[2]:
        if complete:
            return Verdict(DEPARTING, f"its Deployment {rs_owner[1]} is gone (the garbage collector removes it)",
                           owner=owner)
        return Verdict(UNKNOWN, missing=("Deployment", rs_owner[1]), owner=owner)
    labels = dep["metadata"].get("labels") or {}
    mdep = labels.get(LABEL_MODEL_DEPLOYMENT)
    dep_owner = controller_of(dep)
    if (not mdep or labels.get(LABEL_MANAGED_BY) != MANAGED_BY or dep_owner is None
            or dep_owner[:2] != ("ModelDeployment", mdep)):
        return Verdict(INTRUDER, f"its Deployment {rs_owner[1]} is not llmos's", owner=owner)
    key = f"{ns}/{mdep}"
    if _deleting(dep) or live_deployments.get(key) != dep_owner[2]:
        return Verdict(DEPARTING, f"its ModelDeployment {mdep} (uid {dep_owner[2]}) is gone", owner=owner)
    return Verdict(ACCOUNTED, deployment_key=key, owner=owner)


def orphan_maker(rs: Obj | None) -> bool:
    """Should an intruder's ReplicaSet go too? Yes unless a Deployment controls it (then the pod's Event names that
    Deployment; the operator deletes only pods and ReplicaSets)."""
    owner = controller_of(rs) if rs is not None else None
    return rs is not None and (owner is None or owner[0] != "Deployment")


def gpu_class_of(pod: Obj, config: OperatorConfig,
                 node_labels: Callable[[str], Mapping[str, str] | None]) -> str | None:
    """The GPU class whose GPUs the pod holds: its node's class once scheduled, else the class its node selector or
    required affinity asks for, else the class whose (per-class) resource name it requests."""
    spec = pod.get("spec") or {}
    classes = list(config.gpu_classes.values())
    node = spec.get("nodeName")
    if node:
        labels = node_labels(node) or {}
        return next((c.name for c in classes if all(labels.get(k) == v for k, v in c.node_labels.items())), None)
    asked = dict(spec.get("nodeSelector") or {})
    terms = ((((spec.get("affinity") or {}).get("nodeAffinity") or {})
              .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or [])
    for term in terms:
        for expr in term.get("matchExpressions") or []:
            if expr.get("operator") == "In" and len(expr.get("values") or []) == 1:
                asked[expr["key"]] = expr["values"][0]
    for c in classes:
        if c.node_labels and all(asked.get(k) == v for k, v in c.node_labels.items()):
            return c.name
    by_resource = [c for c in classes if gpus_requested(pod, (c.resource_name,))]
    if len(by_resource) == 1 and sum(1 for c in classes if c.resource_name == by_resource[0].resource_name) == 1:
        return by_resource[0].name
    return None


def account(pods: Iterable[Obj], *, tenant_of: Callable[[str], str | None], lookup_in: Callable[[str], Lookup],
            live_deployments: Mapping[str, str], config: OperatorConfig,
            node_labels: Callable[[str], Mapping[str, str] | None], complete: bool = False) -> Accounting:
    """The GPU pods of a tenant's (or a released) namespace, accounted for. ``tenant_of``: a namespace's owner;
    ``lookup_in``: a namespace → a lookup of its ReplicaSets and Deployments (``complete``: see ``verdict``). A pod
    whose chain the store has not seen yet but whose label names a live ModelDeployment is counted with it."""
    resources = {c.resource_name for c in config.gpu_classes.values()}
    out = Accounting()
    for pod in pods:
        meta = pod.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        gpus = gpus_requested(pod, resources) if holds_gpus(pod) else 0
        if gpus == 0:
            continue
        tenant = tenant_of(ns)
        seen = verdict(pod, lookup_in(ns), live_deployments, complete=complete)
        labelled = f"{ns}/{(meta.get('labels') or {}).get(LABEL_MODEL_DEPLOYMENT)}"
        if seen.kind == UNKNOWN and labelled in live_deployments:
            seen = Verdict(ACCOUNTED, deployment_key=labelled, owner=seen.owner)  # counted; removed never unread
        if seen.kind == ACCOUNTED and seen.deployment_key is not None:
            held = out.held.get(seen.deployment_key, (tenant, 0))[1]
            out.held[seen.deployment_key] = (tenant, held + gpus)
            continue
        gpu_class = gpu_class_of(pod, config, node_labels)
        if gpu_class is not None:
            out.strays.append(Stray(ns, name, str(meta.get("uid") or ""), tenant, gpu_class, gpus))
        if seen.kind == INTRUDER:
            out.intruders.append(Intruder(ns, name, str(meta.get("uid") or ""), gpus, gpu_class, seen.why,
                                          seen.owner))
        elif seen.kind == UNKNOWN and seen.missing is not None:
            out.unknown.append((ns, name, seen.missing))
    return out
