"""A ModelDeployment's scaling conditions, from admission's decision and the autoscaler's report. Pure.

- ``ScalingLimited`` (on deployments with ``spec.autoscaling``, and on any that was ever granted in part): True when
  admission granted fewer replicas than wanted (reason QuotaExceeded: the class, its use and quota, the numbers and
  the place in the tenant's queue) or when the load asks for more than maxReplicas (TooManyReplicas).
- ``ScalingActive`` (with ``spec.autoscaling``): True while the replica count follows the load; False while no ready
  replica answers, or while an external autoscaler (a HorizontalPodAutoscaler, as KEDA makes one) targets the same
  object: then the count holds, and neither the HPA's writes to spec.replicas nor llmos's autoscaler change it.

With ``spec.autoscaling``, what admission must grant for the deployment to count as admitted (QuotaAdmitted=True,
Ready once those serve) is minReplicas; replicas above are the autoscaler's wish, limited by quota as it may be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...api.names import SCALING_ACTIVE, SCALING_LIMITED
from ...api.types import Condition, ModelDeployment
from ..autoscaling import EXTERNAL_AUTOSCALER, FOLLOWING_LOAD, AutoscalerReport, gang_replicas, metric_label
from ..quota import INSUFFICIENT_CAPACITY, QUOTA_EXCEEDED, Decision
from .conditions import condition


def quota_satisfied(mdep: ModelDeployment, decision: Decision | None) -> bool:
    """Admission granted what the spec asks for: all replicas, or with autoscaling at least minReplicas."""
    if decision is None or not decision.admitted:
        return False
    if decision.complete:
        return True
    gang = gang_replicas(mdep)
    return gang is not None and decision.replicas >= gang and decision.wanted_replicas > 0


def scaling_conditions(mdep: ModelDeployment, decision: Decision | None, report: AutoscalerReport | None,
                       external: Sequence[str], previous: Sequence[Condition], poll_seconds: float,
                       quota_limit: int | None) -> list[dict[str, Any]]:
    """The ScalingActive and ScalingLimited conditions this deployment carries now (none, one or both)."""
    gen = mdep.metadata.generation
    autoscaling = mdep.spec.autoscaling
    out = []
    if autoscaling is not None:
        out.append(condition(SCALING_ACTIVE, *_active(mdep, report, external, poll_seconds), gen))
    had_limited = any(c.type == SCALING_LIMITED for c in previous)
    if autoscaling is not None or had_limited or (decision is not None and decision.limited):
        out.append(condition(SCALING_LIMITED, *_limited(mdep, decision, report, quota_limit), gen))
    return out


def _active(mdep: ModelDeployment, report: AutoscalerReport | None, external: Sequence[str],
            poll_seconds: float) -> tuple[bool, str, str]:
    spec = mdep.spec.autoscaling
    assert spec is not None
    if external:
        return (False, EXTERNAL_AUTOSCALER,
                f"HorizontalPodAutoscaler {', '.join(external)} targets this ModelDeployment, which has "
                "spec.autoscaling: the replica count holds (neither the HPA's spec.replicas nor llmos's autoscaler "
                "changes it); remove the HorizontalPodAutoscaler (or KEDA ScaledObject) or spec.autoscaling")
    if report is not None and not report.active:
        return False, report.reason, report.message
    return (True, FOLLOWING_LOAD,
            f"replicas follow {spec.metric} ({metric_label(spec.metric)}) averaged per ready replica, target "
            f"{spec.target:g}, read every {poll_seconds:g} s")


def _limited(mdep: ModelDeployment, decision: Decision | None, report: AutoscalerReport | None,
             quota_limit: int | None) -> tuple[bool, str, str]:
    if decision is not None and decision.limited:
        numbers = f"{decision.pool or decision.gpu_class}: {decision.replicas} of {decision.wanted_replicas} replicas"
        if decision.reason not in (QUOTA_EXCEEDED, INSUFFICIENT_CAPACITY):  # frozen: the change waits for a reason
            return True, decision.reason, f"{numbers} granted: {decision.message}"
        waiting = decision.wanted_replicas - decision.replicas
        where = f" (position {decision.queue_position})" if decision.queue_position else ""
        message = f"{numbers} granted; {waiting} more wait in the tenant's queue{where}"
        per = mdep.spec.gpu.count
        if quota_limit is not None and decision.wanted_replicas * per > quota_limit:
            message += (f"; the quota of {quota_limit} {decision.gpu_class} GPUs holds at most {quota_limit // per} "
                        "replicas: raise it or lower the replicas wanted")
        return True, decision.reason, message
    spec = mdep.spec.autoscaling
    if spec is not None and report is not None and report.capped_at_max:
        return True, "TooManyReplicas", f"the load asks for more than maxReplicas ({spec.max_replicas})"
    granted = decision.replicas if decision is not None and decision.admitted else 0
    wanted = decision.wanted_replicas if decision is not None else 0
    return False, "WithinLimits", f"{granted} of {wanted} replicas granted"
