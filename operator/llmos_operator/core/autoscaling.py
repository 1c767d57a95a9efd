"""How many replicas a ModelDeployment's load asks for. Pure: no I/O, and the time is an argument.

The algorithm is the HorizontalPodAutoscaler's for a per-pod metric with an average target (Kubernetes'
``pkg/controller/podautoscaler``), on vLLM's own gauges read from each replica (``core/engine_metrics.py``):

1. **Recommendation.** ``value`` is the metric averaged over the ready replicas that answered, ``ratio = value /
   target``. Within the tolerance (``|ratio - 1| <= 10 %``) the count stays; otherwise it becomes
   ``ceil(sum / target)``. Replicas without an answer are counted the cautious way, as the HPA does: on the way up
   replicas still starting count as 0 (they take load once ready: no overshoot while they start); on the way down a
   ready replica that did not answer counts as exactly the target (an unreadable replica never causes a scale-down).
   If that puts the ratio inside the tolerance or turns the direction, the count stays. No answer at all: nothing is
   recommended (the count stays).
2. **Bounds.** The recommendation is clamped to ``[minReplicas, maxReplicas]``.
3. **Stabilisation.** Recommendations are remembered for the longer of the two windows; the count goes up only to
   the lowest recommendation of the last ``scaleUpStabilizationSeconds`` and down only to the highest of the last
   ``scaleDownStabilizationSeconds``. A history starts with the current count (a restarted operator scales down only
   after a whole window of low load).

What the count is before any decision, and after a restart, is recorded in the status
(``status.autoscaling.desiredReplicas``): :func:`wanted_replicas` reads it, so admission asks for the same count
whether or not the autoscaler has read any load yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api.names import ANNOTATION_CONFIG_HASH
from ..api.types import GROUP, AutoscalingSpec, ModelDeployment

TOLERANCE = 0.1
# A replica's value above this is an engine lying or broken: capped, so a hostile pod cannot make numbers overflow.
MAX_VALUE = 1e9


@dataclass(frozen=True)
class Load:
    """One replica's gauges as its engine reports them (summed over its engines; KV cache use averaged)."""

    waiting: float | None = None
    running: float | None = None
    kv_cache: float | None = None


def metric_value(load: Load, metric: str) -> float | None:
    """The value of ``metric`` (the API's name) in a replica's load; None if the engine did not report it."""
    value = {"waitingRequests": load.waiting, "runningRequests": load.running, "kvCacheUsage": load.kv_cache}[metric]
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_VALUE)


@dataclass(frozen=True)
class Observation:
    """What one round read of a deployment's replicas."""

    values: tuple[float, ...]  # the metric of each ready replica that answered
    unanswered: int = 0  # ready replicas that did not answer (or reported no such metric)
    starting: int = 0  # replicas that exist, are not being deleted and are not ready yet


@dataclass(frozen=True)
class Recommendation:
    replicas: int | None  # None: nothing to go by (no ready replica answered)
    value: float | None  # the metric's average over the replicas that answered
    why: str


def _within(ratio: float) -> bool:
    return abs(ratio - 1.0) <= TOLERANCE


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)  # 6.000000001 replicas from float noise is 6


def recommend(current: int, target: float, obs: Observation) -> Recommendation:
    """Step 1 of the module docstring: the replica count the load asks for (before bounds and stabilisation)."""
    if not obs.values:
        return Recommendation(None, None, "no ready replica answered")
    n = len(obs.values)
    value = sum(obs.values) / n
    ratio = value / target
    up_with_starting = obs.starting > 0 and ratio > 1.0
    if not up_with_starting and obs.unanswered == 0:
        if _within(ratio):
            return Recommendation(current, value, "within the tolerance")
        return Recommendation(_ceil(ratio * n), value, "above the target" if ratio > 1 else "below the target")
    counted = list(obs.values)
    counted += [target if ratio < 1.0 else 0.0] * obs.unanswered
    if up_with_starting:
        counted += [0.0] * obs.starting
    new_ratio = sum(counted) / len(counted) / target
    if _within(new_ratio) or (ratio > 1.0 > new_ratio) or (ratio < 1.0 < new_ratio):
        return Recommendation(current, value, "within the tolerance once replicas without an answer are counted")
    replicas = _ceil(new_ratio * len(counted))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return Recommendation(current, value, "the direction would turn")
    return Recommendation(replicas, value, "above the target" if new_ratio > 1 else "below the target")


def bounded(replicas: int, spec: AutoscalingSpec) -> int:
    return min(max(replicas, spec.min_replicas), spec.max_replicas)


@dataclass(frozen=True)
class History:
    """Recommendations of the last window: (time in seconds, replicas), oldest first."""

    entries: tuple[tuple[float, int], ...] = ()

    @classmethod
    def starting_at(cls, now: float, replicas: int) -> History:
        return cls(((now, replicas),))


def stabilize(history: History, now: float, recommendation: int, current: int,
              spec: AutoscalingSpec) -> tuple[int, History]:
    """Step 3: the count to go to, and the history with ``recommendation`` remembered."""
    up_cutoff = now - spec.scale_up_stabilization_seconds
    down_cutoff = now - spec.scale_down_stabilization_seconds
    up = down = recommendation
    for t, replicas in history.entries:
        if t > up_cutoff:
            up = min(up, replicas)
        if t > down_cutoff:
            down = max(down, replicas)
    desired = min(max(current, up), down)
    keep = max(spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds)
    entries = tuple(e for e in history.entries if e[0] > now - keep) + ((now, recommendation),)
    return desired, History(entries)


@dataclass(frozen=True)
class ScaleDecision:
    desired: int  # the count to ask admission for
    recommendation: Recommendation
    wanted_by_load: int | None  # the bounded recommendation, before stabilisation
    capped_at_max: bool  # the load asks for more than maxReplicas
    history: History


def decide(spec: AutoscalingSpec, current: int, obs: Observation, history: History, now: float,
           *, scale_down_allowed: bool = True) -> ScaleDecision:
    """One round for one deployment: recommend, bound, stabilise. ``current``: the count asked for so far.
    ``scale_down_allowed``: False while a rollout replaces pods (the count may only stay or grow then)."""
    rec = recommend(current, spec.target, obs)
    if rec.replicas is None:
        return ScaleDecision(bounded(current, spec), rec, None, False, history)
    wanted = bounded(rec.replicas, spec)
    desired, history = stabilize(history, now, wanted, current, spec)
    desired = bounded(desired, spec)
    if desired < current and not scale_down_allowed:
        desired = bounded(current, spec)
    return ScaleDecision(desired, rec, wanted, rec.replicas > spec.max_replicas, history)


def observe(loads: Sequence[Load | None], metric: str, starting: int) -> Observation:
    """An Observation from the loads read of the ready replicas (None: no answer) and the count still starting."""
    values = [metric_value(load, metric) if load is not None else None for load in loads]
    answered = tuple(v for v in values if v is not None)
    return Observation(answered, unanswered=len(values) - len(answered), starting=starting)


# ---------------------------------------------------------------------------------------------------------------------
# What a ModelDeployment asks admission for


def wanted_replicas(mdep: ModelDeployment) -> int:
    """Replicas the deployment wants now: ``spec.replicas``, or with ``spec.autoscaling`` the autoscaler's count as
    recorded in the status (``spec.replicas`` before its first decision), within minReplicas..maxReplicas."""
    spec = mdep.spec.autoscaling
    if spec is None:
        return mdep.spec.replicas
    recorded = mdep.status.autoscaling.desired_replicas if mdep.status.autoscaling is not None else None
    return bounded(mdep.spec.replicas if recorded is None else recorded, spec)


def gang_replicas(mdep: ModelDeployment) -> int | None:
    """The fewest replicas a first admission may grant: minReplicas with autoscaling (the rest as quota allows),
    else None (all of spec.replicas or nothing)."""
    spec = mdep.spec.autoscaling
    return None if spec is None else min(spec.min_replicas, wanted_replicas(mdep))


@dataclass(frozen=True)
class Replicas:
    """The pods of one deployment whose load is read: ready ones with their IP, and how many are still starting."""

    ready: tuple[tuple[str, str], ...]  # (pod name, pod IP)
    starting: int
    rolling: bool  # pods of more than one template: a rollout replaces them (no scale-down meanwhile)


def _controller(obj: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name")), str(ref.get("uid"))
    return None


def _owned_through_chain(pod: Mapping[str, Any], lookup: Callable[[str, str], Mapping[str, Any] | None],
                         mdep_uid: str) -> bool:
    """pod → ReplicaSet → Deployment → the ModelDeployment, each link the controller reference by uid."""
    obj: Mapping[str, Any] | None = pod
    for kind in ("ReplicaSet", "Deployment"):
        owner = _controller(obj)
        if owner is None or owner[0] != kind:
            return False
        obj = lookup(kind, owner[1])
        if obj is None or (obj.get("metadata") or {}).get("uid") != owner[2]:
            return False
    top = _controller(obj)
    return top is not None and top[0] == "ModelDeployment" and top[2] == mdep_uid


def replicas_of(pods: Iterable[Mapping[str, Any]], lookup: Callable[[str, str], Mapping[str, Any] | None],
                mdep_uid: str) -> Replicas:
    """The deployment's replicas among ``pods`` (its label's; ``lookup(kind, name)`` finds a ReplicaSet or
    Deployment of the namespace): only pods whose controller chain is llmos's own, each link checked by uid (a
    tenant copies labels, not uids, so no pod it makes is read or counted). Ready: the Ready condition, not being
    deleted, an IP."""
    ready: list[tuple[str, str]] = []
    starting = 0
    templates = set()
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        if not _owned_through_chain(pod, lookup, mdep_uid):
            continue
        templates.add((meta.get("annotations") or {}).get(ANNOTATION_CONFIG_HASH))
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if is_ready and status.get("podIP"):
            ready.append((str(meta.get("name")), str(status["podIP"])))
        else:
            starting += 1
    return Replicas(tuple(sorted(ready)), starting, len(templates) > 1)


def scale_target(hpa: Mapping[str, Any]) -> str | None:
    """The ModelDeployment a HorizontalPodAutoscaler scales (its name, in the HPA's namespace), or None."""
    ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    if ref.get("kind") != "ModelDeployment" or str(ref.get("apiVersion") or "").split("/")[0] != GROUP:
        return None
    return str(ref.get("name") or "") or None


def external_autoscalers(hpas: Iterable[Mapping[str, Any]], name: str) -> tuple[str, ...]:
    """``<namespace>/<name>`` of the HorizontalPodAutoscalers (of one namespace) that scale ModelDeployment
    ``name``."""
    return tuple(sorted(f"{(h.get('metadata') or {}).get('namespace')}/{(h.get('metadata') or {}).get('name')}"
                        for h in hpas if scale_target(h) == name))


def metric_label(metric: str) -> str:
    """The engine's gauge behind the API's metric name (for messages)."""
    return {"waitingRequests": "vllm:num_requests_waiting", "runningRequests": "vllm:num_requests_running",
            "kvCacheUsage": "vllm:kv_cache_usage_perc"}[metric]


@dataclass(frozen=True)
class AutoscalerReport:
    """What the autoscaler last found for one deployment; its reconciler says it in ScalingActive and
    ScalingLimited (only the reconciler writes conditions). Messages carry no live numbers: a report changes only
    when what it says changes."""

    active: bool
    reason: str  # FOLLOWING_LOAD, NO_READY_REPLICA, METRICS_UNAVAILABLE
    message: str
    capped_at_max: bool = False  # the load asks for more than maxReplicas


FOLLOWING_LOAD = "FollowingLoad"
NO_READY_REPLICA = "NoReadyReplica"
METRICS_UNAVAILABLE = "MetricsUnavailable"
EXTERNAL_AUTOSCALER = "ExternalAutoscaler"
