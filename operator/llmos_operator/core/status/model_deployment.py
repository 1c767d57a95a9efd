"""A ModelDeployment's status from what its reconciler observed. Pure.

The reconciler gathers :class:`DeploymentFacts` (admission's decision, the Model, the stored Deployment, placement's
verdict, the pods' troubles, the rollout plan) and ``desired_status`` turns them into conditions: first one verdict
(``_verdict``: Ready, Progressing, Degraded), then what a hold or the rollout plan changes about it, then kstatus's
Reconciling and Stalled, which follow from the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...api.names import (
    ANNOTATION_MODEL_DIGEST,
    CHILD_CONFLICT,
    DEGRADED,
    MODEL_VERIFIED,
    PROGRESSING,
    QUOTA_ADMITTED,
    READY,
    RECONCILING,
    SCALING_ACTIVE,
    SCALING_LIMITED,
    STALLED,
    selector_string,
)
from ...api.types import Model, ModelDeployment
from ...config import OperatorConfig
from ..autoscaling import (
    EXTERNAL_AUTOSCALER,
    METRICS_UNAVAILABLE,
    AutoscalerReport,
    gang_replicas,
    wanted_replicas,
)
from ..errors import RenderError
from ..placement import Fit
from ..quota import Decision
from ..rollout import (
    COMPLETE,
    ROLLED_BACK,
    ROLLOUT_FAILED,
    ROLLOUT_STOPPED,
    STARTING,
    WAITING_FOR_SURGE,
    RolloutPlan,
)
from .conditions import condition, merge_conditions, now_rfc3339
from .model import ModelCheck, check_model
from .scaling import quota_satisfied, scaling_conditions

# Reasons that do not go away without someone changing a spec, a key, a quota or the nodes: kstatus Stalled.
STALLED_REASONS = frozenset({
    "Unschedulable", "ProgressDeadlineExceeded", "RolloutFailed", "RevisionRejected", "UnknownAdapter",
    "SignatureUnavailable", "ImageNotAllowed", "EngineArgsNotAllowed", "ApiKeysRequired", "UnknownGPUClass", "NoTenant",
    "TenantCordoned", "ModelNotFound", "QuotaNeverFits", "ChildConflict",
})
AS_EXPECTED = (False, "AsExpected", "")

Verdict = tuple[bool, str, str]  # (status, reason, message) of one condition


@dataclass(frozen=True)
class DeploymentFacts:
    """What the reconciler observed of one ModelDeployment.

    ``decision``: admission's (None: not decided yet). ``model``: the Model it names (None: missing).
    ``deployment``: the child apps/v1 Deployment as stored (None: not created). ``fit``: ``placement.can_ever_fit``
    for its class and GPU count. ``scheduling``: the scheduler's reasons for its Pending pods.
    ``termination_messages``: of its runtime containers that failed. ``render_error``: why its children could not be
    rendered or written. ``plan``: the rollout planner's answer. ``hold``: (reason, message) when the stored
    Deployment is left as it is (the Model's new revision is being verified or was rejected; a new pod shape waits
    for quota). ``quota_limit``: the tenant's quota of the class (a request above it can never be admitted).
    ``revision``/``target_revision``: what serves and what rolls. ``autoscaler``: the autoscaler's last report
    (None: none yet). ``external_autoscalers``: HorizontalPodAutoscalers targeting it (``<namespace>/<name>``)."""

    decision: Decision | None
    model: Model | None
    deployment: Mapping[str, Any] | None = None
    fit: Fit | None = None
    scheduling: str | None = None
    termination_messages: Sequence[str] = ()
    render_error: RenderError | None = None
    plan: RolloutPlan | None = None
    hold: tuple[str, str] | None = None
    quota_limit: int | None = None
    revision: str | None = None
    target_revision: str | None = None
    autoscaler: AutoscalerReport | None = None
    external_autoscalers: tuple[str, ...] = ()
    poll_seconds: float = 5.0

    @property
    def admitted(self) -> bool:
        return self.decision is not None and self.decision.admitted


@dataclass(frozen=True)
class _Rollout:
    want: int
    replicas: int
    ready: int
    updated: int
    complete: bool
    deadline_exceeded: bool
    digest: str | None


def _rollout(deployment: Mapping[str, Any], want: int) -> _Rollout:
    st = deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    replicas = st.get("replicas") or 0
    ready = st.get("readyReplicas") or 0
    updated = st.get("updatedReplicas") or 0
    current = meta.get("generation") is None or st.get("observedGeneration") == meta.get("generation")
    deadline = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in st.get("conditions") or []
    )
    complete = current and updated >= want and ready >= want and replicas == want
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    digest = (template.get("annotations") or {}).get(ANNOTATION_MODEL_DIGEST)
    return _Rollout(want, replicas, ready, updated, complete, deadline and not complete, digest)


def endpoint_url(mdep: ModelDeployment, config: OperatorConfig) -> str:
    """The OpenAI-compatible base URL inside the cluster."""
    return f"http://{mdep.metadata.name}.{mdep.metadata.namespace}.svc:{config.runtime.openai_port}/v1"


def desired_status(mdep: ModelDeployment, config: OperatorConfig, facts: DeploymentFacts,
                   now: str | None = None) -> dict[str, Any]:
    """Status of a ModelDeployment (a JSON merge patch) from what its reconciler observed."""
    now = now or now_rfc3339()
    gen = mdep.metadata.generation
    decision = facts.decision
    check = check_model(facts.model, mdep.spec.model)
    want = decision.replicas if decision is not None and decision.admitted else 0
    rollout = _rollout(facts.deployment, want) if (facts.admitted and facts.deployment is not None) else None

    ready, progressing, degraded = _verdict(mdep, facts, check, rollout)
    ready, progressing, degraded = _held_or_planned(mdep, facts, rollout, (ready, progressing, degraded))
    ready, progressing = _never_fits(mdep, facts, ready, progressing)

    if decision is None:
        admitted = condition(QUOTA_ADMITTED, "Unknown", "Pending", "admission has not run yet", gen)
    elif quota_satisfied(mdep, decision) and not decision.complete:  # minReplicas granted; the rest: ScalingLimited
        admitted = condition(QUOTA_ADMITTED, True, "Admitted", decision.message, gen)
    else:
        admitted = condition(QUOTA_ADMITTED, decision.complete, decision.reason, decision.message, gen)
    verified_status: bool | str = "Unknown" if check.verified is None else check.verified
    if check.reason == "SignatureDisabled":
        verified_status = False  # served, but nothing was verified: say so
    ordered = [
        condition(READY, *ready, gen), admitted,
        condition(MODEL_VERIFIED, verified_status, check.reason, check.message, gen),
        condition(PROGRESSING, *progressing, gen), condition(DEGRADED, *degraded, gen),
        *_kstatus(ready, degraded, check, gen),
        *scaling_conditions(mdep, decision, facts.autoscaler, facts.external_autoscalers, mdep.status.conditions,
                            facts.poll_seconds, facts.quota_limit),
    ]
    kept = [c for c in mdep.status.conditions if c.type != SCALING_ACTIVE or mdep.spec.autoscaling is not None]
    return {**_counts(mdep, config, facts, check, rollout), "conditions": merge_conditions(kept, ordered, now)}


def _verdict(mdep: ModelDeployment, facts: DeploymentFacts, check: ModelCheck,
             rollout: _Rollout | None) -> tuple[Verdict, Verdict, Verdict]:
    """(Ready, Progressing, Degraded) from the first thing that stands in the way, else from the rollout."""
    decision = facts.decision
    if facts.render_error is not None:
        why = (facts.render_error.reason, str(facts.render_error))
        return (False, *why), (False, *why), (True, *why)
    if check.verified is False:
        return (False, check.reason, check.message), (False, check.reason, check.message), AS_EXPECTED
    if decision is None:
        return (False, "Pending", "waiting for admission"), (True, "Pending", "waiting for admission"), AS_EXPECTED
    if not decision.admitted:
        degraded = (True, decision.reason, decision.message) if decision.reason == CHILD_CONFLICT else AS_EXPECTED
        return ((False, decision.reason, decision.message), (False, decision.reason, "not admitted: no pods run"),
                degraded)
    if check.verified is None:
        return (False, check.reason, check.message), (True, check.reason, check.message), AS_EXPECTED
    if rollout is None:
        return (False, "Creating", "creating the Deployment"), (True, "Creating", "creating the Deployment"), \
            AS_EXPECTED
    failures = [m.strip() for m in facts.termination_messages if m and m.strip()]
    runtime_failed: Verdict = (True, "RuntimeFailed", failures[0]) if failures else AS_EXPECTED
    if rollout.complete and not quota_satisfied(mdep, decision):
        # Serving what is reserved while the rest of the spec waits: not Ready, so that `kubectl wait` and GitOps
        # tools do not take a change that waits for quota for done.
        message = f"{rollout.ready}/{rollout.want} replicas ready; {decision.message}"
        return (False, decision.reason, message), (False, decision.reason, message), runtime_failed
    if rollout.complete:
        ready: Verdict = ((True, "ScaledToZero", "0 replicas admitted") if rollout.want == 0
                          else (True, "Serving", f"{rollout.ready}/{rollout.want} replicas ready"))
        return ready, (False, "Complete", f"{rollout.updated} replicas of the current revision"), runtime_failed
    if _scaling(mdep, facts, rollout, failures):
        # An autoscaled deployment adding or removing replicas of the revision it serves, its minimum ready: Ready
        # (what it promises serves), not a new Warning Event at every scale.
        scaling = (True, "Scaling", f"{rollout.ready}/{rollout.want} replicas ready, scaling to {rollout.want}")
        return scaling, scaling, AS_EXPECTED
    reason, message = _rolling_reason(mdep, facts, rollout, failures)
    stuck = reason in ("Unschedulable", "ProgressDeadlineExceeded")
    bad = reason in ("Unschedulable", "RuntimeFailed", "ProgressDeadlineExceeded")
    return (False, reason, message), (not stuck, reason, message), (True, reason, message) if bad else AS_EXPECTED


def _scaling(mdep: ModelDeployment, facts: DeploymentFacts, rollout: _Rollout, failures: list[str]) -> bool:
    gang = gang_replicas(mdep)
    return (gang is not None and rollout.ready >= gang and rollout.updated >= rollout.replicas and not failures
            and not rollout.deadline_exceeded and (facts.fit is None or facts.fit.fits)
            and quota_satisfied(mdep, facts.decision))


def _rolling_reason(mdep: ModelDeployment, facts: DeploymentFacts, rollout: _Rollout,
                    failures: list[str]) -> tuple[str, str]:
    """Why an admitted deployment whose rollout is not complete is not Ready yet."""
    status_line = f"{rollout.ready}/{rollout.want} replicas ready, {rollout.updated} of the current revision"
    scheduling = facts.scheduling
    if facts.fit is not None and not facts.fit.fits:
        reason, message = "Unschedulable", facts.fit.message
    elif failures:
        reason, message = "RuntimeFailed", failures[0]
    elif rollout.deadline_exceeded:
        reason = "ProgressDeadlineExceeded"
        message = f"no progress for {mdep.spec.rollout.progress_deadline_seconds} s: {status_line}"
    elif scheduling:
        reason, message = "PodsPending", scheduling
    elif rollout.updated < rollout.want or rollout.replicas > rollout.want:
        reason, message = "RollingOut", status_line
    else:
        reason, message = "Starting", status_line
    if reason in ("Unschedulable", "PodsPending") and scheduling and scheduling not in message:
        message = f"{message}; {scheduling}"
    return reason, message


def _held_or_planned(mdep: ModelDeployment, facts: DeploymentFacts, rollout: _Rollout | None,
                     verdict: tuple[Verdict, Verdict, Verdict]) -> tuple[Verdict, Verdict, Verdict]:
    """The verdict as a hold (the Deployment is left as it is) or the rollout plan changes it."""
    ready, progressing, degraded = verdict
    if facts.render_error is not None or not facts.admitted:
        return verdict
    plan = facts.plan
    if facts.hold is not None:
        reason, message = facts.hold
        serving = f"; meanwhile {rollout.ready if rollout else 0} replicas of the previous revision serve"
        return ((False, reason, message + serving), (reason != "RevisionRejected", reason, message),
                (True, reason, message) if reason == "RevisionRejected" else AS_EXPECTED)
    if plan is None:
        return verdict
    if plan.phase == WAITING_FOR_SURGE:
        return (False, plan.phase, plan.message), (False, plan.phase, plan.message), degraded
    if plan.phase in (ROLLED_BACK, ROLLOUT_STOPPED, ROLLOUT_FAILED):
        message = f"{plan.message}; serving: {facts.revision or plan.serving_template or 'nothing'}"
        before = next((c for c in mdep.status.conditions if c.type == DEGRADED), None)
        if plan.phase == ROLLOUT_FAILED and before is not None and before.reason == "RolloutFailed":
            message = before.message  # what failed, as said when it failed
        failed: Verdict = (False, "RolloutFailed", message)
        return failed, failed, (True, "RolloutFailed", message)
    if ready[0] and plan.phase != COMPLETE and not (ready[1] == "Scaling" and plan.phase == STARTING):
        # The Deployment's counters say done before the pods of the template are all seen: not yet.
        return (False, plan.phase, plan.message), (True, plan.phase, plan.message), degraded
    return verdict


def _never_fits(mdep: ModelDeployment, facts: DeploymentFacts, ready: Verdict,
                progressing: Verdict) -> tuple[Verdict, Verdict]:
    """A deployment that waits for quota but asks for more than the whole quota waits for ever: say so."""
    decision = facts.decision
    if (ready[0] or ready[1] != "QuotaExceeded" or facts.quota_limit is None or decision is None
            or decision.requested <= facts.quota_limit):
        return ready, progressing
    if decision.admitted:
        why = (f"asks for {decision.requested} {mdep.spec.gpu.class_} GPUs but the tenant's quota is "
               f"{facts.quota_limit}: {decision.replicas} of {decision.wanted_replicas} replicas run, the others can "
               "never be admitted; lower replicas or gpu.count, or raise the quota")
    else:
        why = (f"asks for {decision.requested} {mdep.spec.gpu.class_} GPUs but the tenant's quota is "
               f"{facts.quota_limit}: it can never be admitted; lower replicas or gpu.count, or raise the quota")
    return (False, "QuotaNeverFits", why), (False, "QuotaNeverFits", why)


def _kstatus(ready: Verdict, degraded: Verdict, check: ModelCheck, gen: int | None) -> list[dict[str, Any]]:
    """kstatus's Reconciling and Stalled, from the verdict."""
    stalled = not ready[0] and (ready[1] in STALLED_REASONS or degraded[1] in STALLED_REASONS
                                or check.verified is False)
    if stalled:
        by_ready = ready[1] in STALLED_REASONS or check.verified is False
        reason, message = (ready[1], ready[2]) if by_ready else (degraded[1], degraded[2])
        return [condition(RECONCILING, False, reason, "stalled: see Stalled", gen),
                condition(STALLED, True, reason, message, gen)]
    reconciling = (condition(RECONCILING, False, "Reconciled", "", gen) if ready[0]
                   else condition(RECONCILING, True, ready[1], ready[2], gen))
    return [reconciling, condition(STALLED, False, "NotStalled", "", gen)]


def _counts(mdep: ModelDeployment, config: OperatorConfig, facts: DeploymentFacts, check: ModelCheck,
            rollout: _Rollout | None) -> dict[str, Any]:
    """Everything of the status but its conditions."""
    plan, decision, admitted = facts.plan, facts.decision, facts.admitted
    desired = decision.wanted_replicas if decision is not None else wanted_replicas(mdep)
    ready_count = rollout.ready if rollout else 0
    updated_count = rollout.updated if rollout else 0
    if plan is not None and rollout is not None:
        ready_count, updated_count = plan.ready, plan.updated
    digest = mdep.status.model_digest
    if rollout is not None and rollout.complete and facts.hold is None and (plan is None or not plan.failed):
        digest = rollout.digest or check.digest
    return {
        "observedGeneration": mdep.metadata.generation,
        "replicas": rollout.replicas if rollout else 0,
        "readyReplicas": ready_count,
        "updatedReplicas": updated_count,
        "revision": facts.revision if admitted else None,
        "targetRevision": facts.target_revision if admitted else None,
        "servingTemplate": plan.serving_template if plan is not None else mdep.status.serving_template,
        "servingTemplateChecksum": plan.serving_checksum if plan is not None
        else mdep.status.serving_template_checksum,
        "failedTemplate": plan.failed_template if plan is not None else mdep.status.failed_template,
        "endpoint": endpoint_url(mdep, config) if admitted else None,
        "modelDigest": digest if admitted else None,
        "queuePosition": decision.queue_position if decision is not None else None,
        "selector": selector_string(mdep.metadata.name),
        "gpuSummary": f"{mdep.spec.gpu.class_}×{mdep.spec.gpu.count}",
        "readySummary": f"{ready_count}/{desired}",
        "desiredReplicas": desired,
        "grantedReplicas": decision.replicas if decision is not None and decision.admitted else 0,
        # the autoscaler's record goes with spec.autoscaling (only the autoscaler writes it)
        **({"autoscaling": None} if mdep.spec.autoscaling is None else {}),
    }


def adapter_status(wanted: Sequence[str], reports: Sequence[Mapping[str, Any]],
                   checks: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per wanted adapter: its signature's verification by the operator (``checks``: {"signature": reason,
    "signer"?, "message"?}), on how many pods it is loaded, on how many it failed and why (from the runtimes'
    reports, one per pod: {"loaded": [names], "failed": {name: reason}})."""
    out = []
    for name in wanted:
        loaded = sum(1 for r in reports if name in (r.get("loaded") or []))
        reasons = [str((r.get("failed") or {})[name]) for r in reports if name in (r.get("failed") or {})]
        check = (checks or {}).get(name) or {}
        entry: dict[str, Any] = {"name": name, "loadedReplicas": loaded, "failedReplicas": len(reasons),
                                 **{k: check[k] for k in ("signature", "signer") if check.get(k)}}
        message = reasons[0] if reasons else (check.get("message") if check.get("signature") != "Verified" else None)
        if message:
            entry["message"] = str(message)[:1024]
        out.append(entry)
    return out


def worth_an_event(t: Any, served_before: bool = False) -> bool:
    """Events for what a person acts on, not for every condition a new deployment passes through (they were 7 of
    the 15 API requests a new ModelDeployment cost): admission and verification verdicts (not a new deployment's
    "Model verified", which the Model's Event says), becoming Ready, losing readiness, turning Degraded and
    recovering. Progressing and kstatus's Reconciling/Stalled repeat Ready; the rollout phases have their own
    Events. Scaling: becoming limited (a Warning naming the numbers), and an autoscaler that cannot act for a reason
    someone must fix (an external autoscaler, unreadable metrics) — not a new deployment's replicas still starting;
    each new count has its own Event (ScaledUp, ScaledDown)."""
    if t.type in (PROGRESSING, RECONCILING, STALLED):
        return False
    if t.type == SCALING_LIMITED:
        return bool(t.status == "True")
    if t.type == SCALING_ACTIVE:
        return t.status == "False" and t.reason in (EXTERNAL_AUTOSCALER, METRICS_UNAVAILABLE)
    if t.type == MODEL_VERIFIED and t.status == "True" and t.old_status is None:
        return False  # a new deployment of a verified Model: the Model's own Event says so
    if t.type == QUOTA_ADMITTED and t.status == "True" and t.old_status is None:
        return False  # admitted at once: Ready follows (an admission after waiting in the queue has its Event)
    if t.type == READY:
        # Losing readiness, and recovering it (``served_before``: a rollout of it completed before); a new deployment
        # turning Ready for the first time says so in its status (an Event each was a fifth of the operator's writes
        # in a burst of new deployments).
        return t.old_status == "True" or (t.status == "True" and served_before)
    if t.type == DEGRADED:
        return bool(t.status == "True" or t.old_status == "True")
    return True


# A deployment on its way to its first Ready passes through these; their counters and messages change with every pod
# and ReplicaSet status write.
STARTING_REASONS = frozenset({"Creating", "RollingOut", "Starting", "PodsPending"})
PROGRESS_FIELDS = frozenset({"replicas", "readyReplicas", "updatedReplicas", "readySummary", "conditions"})


def progress_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Does ``new`` differ from the stored ``old`` only in a starting deployment's progress (counters, and the
    reason and message of a Ready that is False before and after, for a starting reason)? Such a change may wait a
    little to be written with the next one: each was a third of a new deployment's status writes. Everything else
    (a condition turning, a new generation, a hold, a failure, any other field) is written at once."""
    def by_type(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {c["type"]: c for c in status.get("conditions") or []}
    before, after = by_type(old), by_type(new)
    ready_before, ready_after = before.get(READY), after.get(READY)
    if ready_before is None or ready_after is None or before.keys() != after.keys():
        return False
    if not all(r.get("status") == "False" and r.get("reason") in STARTING_REASONS
               for r in (ready_before, ready_after)):
        return False
    def turned(c: Mapping[str, Any], was: Mapping[str, Any]) -> bool:
        return (c.get("status"), c.get("observedGeneration")) != (was.get("status"), was.get("observedGeneration"))
    if any(turned(c, before[t]) for t, c in after.items()):
        return False
    return all(old.get(k) == v for k, v in new.items() if k not in PROGRESS_FIELDS)
