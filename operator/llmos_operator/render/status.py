"""Desired status of ModelDeployments, Models and Tenants, computed from observed facts. Pure.

Each ``*_status`` function returns a dict for the object's ``status`` in JSON form, meant to be applied as a JSON
merge patch (kopf's ``patch.status.update(...)``): a ``None`` value deletes that field (e.g. ``queuePosition`` once
admitted, a ledger entry once freed). Conditions follow Kubernetes conventions: ``observedGeneration`` set, reasons
in CamelCase, ``lastTransitionTime`` kept while a condition's status does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..api.types import Condition, Model, ModelDeployment, Tenant
from ..config import OperatorConfig
from ..placement import Fit
from ..quota import AdmissionResult, Decision, gpu_summary
from .common import ANNOTATION_MODEL_DIGEST, selector_string
from .model_deployment import RenderError, endpoint_url
from .rollout import COMPLETE, ROLLED_BACK, ROLLOUT_FAILED, ROLLOUT_STOPPED, WAITING_FOR_SURGE, RolloutPlan

# Reasons that do not go away without someone changing a spec, a key, a quota or the nodes: kstatus Stalled.
STALLED_REASONS = frozenset({
    "Unschedulable", "ProgressDeadlineExceeded", "RolloutFailed", "RevisionRejected", "UnknownAdapter",
    "SignatureUnavailable", "ImageNotAllowed", "EngineArgsNotAllowed", "UnknownGPUClass", "NoTenant",
    "TenantCordoned", "ModelNotFound", "QuotaNeverFits",
})

READY = "Ready"
QUOTA_ADMITTED = "QuotaAdmitted"
MODEL_VERIFIED = "ModelVerified"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
RECONCILING = "Reconciling"  # kstatus: a change is being made (admitted, verified, rolled out)
STALLED = "Stalled"  # kstatus: no progress without someone changing something
VERIFIED = "Verified"  # the Model's condition
NAMESPACES_READY = "NamespacesReady"  # the Tenant's: every namespace it lists is its own
OVER_QUOTA = "OverQuota"  # the Tenant's: reservations above a quota that was lowered

MAX_MESSAGE = 1024


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _conditions_of(previous: Iterable[Condition | Mapping[str, Any]] | None) -> list[dict]:
    out = []
    for c in previous or ():
        out.append(c.to_dict() if isinstance(c, Condition) else dict(c))
    return out


def condition(type_: str, status: bool | str, reason: str, message: str, generation: int | None) -> dict:
    """A condition without lastTransitionTime (``merge_conditions`` sets it)."""
    if isinstance(status, bool):
        status = "True" if status else "False"
    message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
    out = {"type": type_, "status": status, "reason": reason, "message": message}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge_conditions(
    previous: Iterable[Condition | Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]], now: str
) -> list[dict]:
    """``new`` conditions in order, each keeping its previous lastTransitionTime if its status is unchanged, then the
    previous conditions of other types (set by someone else) as they were."""
    old = {c["type"]: c for c in _conditions_of(previous)}
    out = []
    for c in new:
        c = dict(c)
        before = old.get(c["type"])
        if before is not None and before.get("status") == c["status"] and before.get("lastTransitionTime"):
            c["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            c["lastTransitionTime"] = now
        out.append(c)
    mine = {c["type"] for c in new}
    out += [c for t, c in old.items() if t not in mine]
    return out


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed: emit a Kubernetes Event for it."""

    type: str
    old_status: str | None
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        """Whether the Event should be of type Warning."""
        bad = {READY: "False", QUOTA_ADMITTED: "False", MODEL_VERIFIED: "False", DEGRADED: "True", VERIFIED: "False"}
        return bad.get(self.type) == self.status


def transitions(
    previous: Iterable[Condition | Mapping[str, Any]] | None, current: Iterable[Mapping[str, Any]]
) -> list[Transition]:
    old = {c["type"]: c for c in _conditions_of(previous)}
    out = []
    for c in current:
        before = old.get(c["type"])
        if before is None or before.get("status") != c["status"] or before.get("reason") != c["reason"]:
            out.append(Transition(c["type"], (before or {}).get("status"), c["status"], c["reason"], c.get("message", "")))
    return out


def map_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning map ``old`` into ``new``: keys that went away are set to None."""
    out: dict[str, Any] = {k: None for k in (old or {}) if k not in new}
    out.update(new)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Model


def model_status(
    model: Model,
    *,
    verified: bool,
    reason: str,
    message: str,
    digest: str | None = None,
    signer: str | None = None,
    serving_revision: str | None = None,
    pending_revision: str | None = None,
    now: str | None = None,
) -> dict:
    """Status of a Model after a verification attempt (``reason`` e.g. Verified, SignatureDisabled,
    SignatureInvalid, RevisionRejected). ``digest``/``signer``/``serving_revision``: of the weights served (a rejected
    new revision leaves the previous ones); ``pending_revision``: the newest spec's while it is not the one served."""
    now = now or now_rfc3339()
    gen = model.metadata.generation
    short = None
    if digest:
        short = digest.split(":", 1)[-1][:12]
    stalled = not verified and reason != "SignatureDisabled"
    return {
        "observedGeneration": gen,
        "digest": digest,
        "shortDigest": short,
        "signer": signer,
        "servingRevision": serving_revision,
        "pendingRevision": pending_revision,
        "conditions": merge_conditions(model.status.conditions, [
            condition(VERIFIED, verified, reason, message, gen),
            # kstatus: a Model that does not verify stays so until someone changes it, its key or its bundle.
            condition(STALLED, True, reason, message, gen) if stalled else condition(STALLED, False, reason, "", gen),
            condition(RECONCILING, False, reason, "", gen),
        ], now),
    }


@dataclass(frozen=True)
class ModelCheck:
    verified: bool | None  # None: not known yet
    reason: str
    message: str
    digest: str | None = None


def check_model(model: Model | None, name: str) -> ModelCheck:
    """Whether the Model a deployment names may be served, from the Model's own status."""
    if model is None:
        return ModelCheck(False, "ModelNotFound", f"Model {name} does not exist in this namespace")
    verified = next((c for c in model.status.conditions if c.type == VERIFIED), None)
    stale = model.status.observed_generation != model.metadata.generation
    if verified is None or (stale and model.metadata.generation is not None):
        return ModelCheck(None, "VerificationPending", f"Model {name} has not been verified yet")
    if verified.reason == "SignatureDisabled" and model.spec.signature.policy == "Disabled":
        # Served, deliberately unverified: admission and rollout proceed, ModelVerified stays False as a warning.
        return ModelCheck(True, verified.reason, f"Model {name}: {verified.message}")
    if verified.status == "True":
        signer = f" signed by {model.status.signer}" if model.status.signer else ""
        what = f"{model.status.digest}{signer}" if model.status.digest else verified.message
        return ModelCheck(True, verified.reason, f"Model {name}: {what}".rstrip(": "), model.status.digest)
    return ModelCheck(False, verified.reason, f"Model {name}: {verified.message}")


# ---------------------------------------------------------------------------------------------------------------------
# ModelDeployment


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


def desired_status(
    mdep: ModelDeployment,
    config: OperatorConfig,
    *,
    decision: Decision | None,
    model: Model | None,
    deployment: Mapping[str, Any] | None = None,
    fit: Fit | None = None,
    scheduling: str | None = None,
    termination_messages: Sequence[str] = (),
    render_error: RenderError | None = None,
    plan: RolloutPlan | None = None,
    hold: tuple[str, str] | None = None,
    quota_limit: int | None = None,
    revision: str | None = None,
    target_revision: str | None = None,
    now: str | None = None,
) -> dict:
    """Status of a ModelDeployment from what the handler observed.

    ``plan``: the rollout planner's answer (render.rollout). ``hold``: (reason, message) when the stored Deployment
    is left as it is because the change cannot be made yet (the Model's new revision is being verified or was
    rejected; a change of the pod's shape waits for quota). ``quota_limit``: the tenant's quota of the class (a
    request above it can never be admitted: Stalled). ``revision``/``target_revision``: what serves and what rolls.

    ``decision``: this deployment's admission decision (None: not decided yet). ``model``: the Model it names (None:
    missing). ``deployment``: the child apps/v1 Deployment as read back (None: not created). ``fit``:
    ``placement.can_ever_fit`` for its class and GPU count. ``scheduling``: ``placement.summarize_scheduling_failures``
    of its Pending pods. ``termination_messages``: of its runtime containers that failed. ``render_error``: raised by
    ``render_children``.
    """
    now = now or now_rfc3339()
    gen = mdep.metadata.generation
    name = mdep.metadata.name
    spec = mdep.spec
    check = check_model(model, spec.model)
    conds: dict[str, dict] = {}

    # QuotaAdmitted
    if decision is None:
        conds[QUOTA_ADMITTED] = condition(QUOTA_ADMITTED, "Unknown", "Pending", "admission has not run yet", gen)
    else:
        conds[QUOTA_ADMITTED] = condition(QUOTA_ADMITTED, decision.complete, decision.reason, decision.message, gen)

    # ModelVerified
    verified_status = "Unknown" if check.verified is None else check.verified
    if check.reason == "SignatureDisabled":
        verified_status = False  # served, but nothing was verified: say so
    conds[MODEL_VERIFIED] = condition(MODEL_VERIFIED, verified_status, check.reason, check.message, gen)

    admitted = decision is not None and decision.admitted
    want = decision.replicas if admitted else 0  # type: ignore[union-attr]
    rollout = _rollout(deployment, want) if (admitted and deployment is not None) else None
    failures = [m.strip() for m in termination_messages if m and m.strip()]

    # Ready, Progressing, Degraded
    if render_error is not None:
        ready = (False, render_error.reason, str(render_error))
        progressing = (False, render_error.reason, str(render_error))
        degraded = (True, render_error.reason, str(render_error))
    elif check.verified is False:
        ready = (False, check.reason, check.message)
        progressing = (False, check.reason, check.message)
        degraded = (False, "AsExpected", "")
    elif decision is None:
        ready = (False, "Pending", "waiting for admission")
        progressing = (True, "Pending", "waiting for admission")
        degraded = (False, "AsExpected", "")
    elif not admitted:
        ready = (False, decision.reason, decision.message)
        progressing = (False, decision.reason, "not admitted: no pods run")
        degraded = (False, "AsExpected", "")
    elif check.verified is None:
        ready = (False, check.reason, check.message)
        progressing = (True, check.reason, check.message)
        degraded = (False, "AsExpected", "")
    elif rollout is None:
        ready = (False, "Creating", "creating the Deployment")
        progressing = (True, "Creating", "creating the Deployment")
        degraded = (False, "AsExpected", "")
    elif rollout.complete and not decision.complete:  # type: ignore[union-attr]
        # Serving what is reserved while the rest of the spec waits: not Ready, so that `kubectl wait` and GitOps
        # tools do not take a change that waits for quota for done.
        message = f"{rollout.ready}/{want} replicas ready; {decision.message}"  # type: ignore[union-attr]
        ready = (False, decision.reason, message)  # type: ignore[union-attr]
        progressing = (False, decision.reason, message)  # type: ignore[union-attr]
        degraded = (True, "RuntimeFailed", failures[0]) if failures else (False, "AsExpected", "")
    elif rollout.complete:
        if want == 0:
            ready = (True, "ScaledToZero", "0 replicas admitted")
        else:
            ready = (True, "Serving", f"{rollout.ready}/{want} replicas ready")
        progressing = (False, "Complete", f"{rollout.updated} replicas of the current revision")
        degraded = (True, "RuntimeFailed", failures[0]) if failures else (False, "AsExpected", "")
    else:
        status_line = f"{rollout.ready}/{want} replicas ready, {rollout.updated} of the current revision"
        if fit is not None and not fit.fits:
            reason, message = "Unschedulable", fit.message
        elif failures:
            reason, message = "RuntimeFailed", failures[0]
        elif rollout.deadline_exceeded:
            reason = "ProgressDeadlineExceeded"
            message = f"no progress for {spec.rollout.progress_deadline_seconds} s: {status_line}"
        elif scheduling:
            reason, message = "PodsPending", scheduling
        elif rollout.updated < want or rollout.replicas > want:
            reason, message = "RollingOut", status_line
        else:
            reason, message = "Starting", status_line
        if reason in ("Unschedulable", "PodsPending") and scheduling and scheduling not in message:
            message = f"{message}; {scheduling}"
        ready = (False, reason, message)
        stuck = reason in ("Unschedulable", "ProgressDeadlineExceeded")
        progressing = (not stuck, reason, message)
        degraded = (True, reason, message) if reason in ("Unschedulable", "RuntimeFailed", "ProgressDeadlineExceeded") \
            else (False, "AsExpected", "")

    if hold is not None and render_error is None and admitted:
        reason, message = hold
        serving = f"; meanwhile {rollout.ready if rollout else 0} replicas of the previous revision serve"
        ready = (False, reason, message + serving)
        progressing = (reason != "RevisionRejected", reason, message)
        degraded = (True, reason, message) if reason == "RevisionRejected" else (False, "AsExpected", "")
    elif plan is not None and render_error is None and admitted:
        if plan.phase == WAITING_FOR_SURGE:
            ready = (False, plan.phase, plan.message)
            progressing = (False, plan.phase, plan.message)
        elif plan.phase in (ROLLED_BACK, ROLLOUT_STOPPED, ROLLOUT_FAILED):
            what = revision or plan.serving_template or "nothing"
            message = f"{plan.message}; serving: {what}"
            before = next((c for c in mdep.status.conditions if c.type == DEGRADED), None)
            if plan.phase == ROLLOUT_FAILED and before is not None and before.reason == "RolloutFailed":
                message = before.message  # what failed, as said when it failed
            ready = (False, "RolloutFailed", message)
            progressing = (False, "RolloutFailed", message)
            degraded = (True, "RolloutFailed", message)
        elif ready[0] and plan.phase != COMPLETE:
            # The Deployment's counters say done before the pods of the template are all seen: not yet.
            ready = (False, plan.phase, plan.message)
            progressing = (True, plan.phase, plan.message)
    if (not ready[0] and ready[1] == "QuotaExceeded" and quota_limit is not None and decision is not None
            and decision.requested > quota_limit):
        why = (f"asks for {decision.requested} {spec.gpu.class_} GPUs but the tenant's quota is {quota_limit}: it "
               "can never be admitted; lower replicas or gpu.count, or raise the quota")
        ready = (False, "QuotaNeverFits", why)
        progressing = (False, "QuotaNeverFits", why)

    conds[READY] = condition(READY, ready[0], ready[1], ready[2], gen)
    conds[PROGRESSING] = condition(PROGRESSING, progressing[0], progressing[1], progressing[2], gen)
    conds[DEGRADED] = condition(DEGRADED, degraded[0], degraded[1], degraded[2], gen)
    stalled = not ready[0] and (ready[1] in STALLED_REASONS or degraded[1] in STALLED_REASONS
                                or check.verified is False)
    stalled_reason = ready[1] if ready[1] in STALLED_REASONS or check.verified is False else degraded[1]
    if stalled:
        conds[STALLED] = condition(STALLED, True, stalled_reason, ready[2] if stalled_reason == ready[1]
                                   else degraded[2], gen)
        conds[RECONCILING] = condition(RECONCILING, False, stalled_reason, "stalled: see Stalled", gen)
    else:
        conds[STALLED] = condition(STALLED, False, "NotStalled", "", gen)
        if ready[0]:
            conds[RECONCILING] = condition(RECONCILING, False, "Reconciled", "", gen)
        else:
            conds[RECONCILING] = condition(RECONCILING, True, ready[1], ready[2], gen)
    ordered = [conds[t] for t in (READY, QUOTA_ADMITTED, MODEL_VERIFIED, PROGRESSING, DEGRADED, RECONCILING,
                                  STALLED)]

    replicas = rollout.replicas if rollout else 0
    ready_count = rollout.ready if rollout else 0
    updated_count = rollout.updated if rollout else 0
    if plan is not None and rollout is not None:
        ready_count, updated_count = plan.ready, plan.updated
    digest = mdep.status.model_digest
    if rollout is not None and rollout.complete and hold is None and (plan is None or not plan.failed):
        digest = rollout.digest or check.digest
    return {
        "observedGeneration": gen,
        "replicas": replicas,
        "readyReplicas": ready_count,
        "updatedReplicas": updated_count,
        "revision": revision if admitted else None,
        "targetRevision": target_revision if admitted else None,
        "servingTemplate": plan.serving_template if plan is not None else mdep.status.serving_template,
        "servingTemplateChecksum": plan.serving_checksum if plan is not None
        else mdep.status.serving_template_checksum,
        "failedTemplate": plan.failed_template if plan is not None else mdep.status.failed_template,
        "endpoint": endpoint_url(mdep, config) if admitted else None,
        "modelDigest": digest if admitted else None,
        "queuePosition": decision.queue_position if decision is not None else None,
        "selector": selector_string(name),
        "gpuSummary": f"{spec.gpu.class_}×{spec.gpu.count}",
        "readySummary": f"{ready_count}/{spec.replicas}",
        "conditions": merge_conditions(mdep.status.conditions, ordered, now),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Tenant


def tenant_status(
    tenant: Tenant,
    config: OperatorConfig,
    *,
    result: AdmissionResult | None = None,
    conflicts: Mapping[str, str] | None = None,
    refused_namespaces: Mapping[str, str] | None = None,
    refused_keys: Sequence[str] | None = None,
    now: str | None = None,
) -> dict:
    """Status of a Tenant. ``result``: the latest admission pass (None: leave usage and the ledger as they are).
    ``conflicts``: namespace → the other tenant that owns it (from ``quota.namespace_owners``).
    ``refused_namespaces``: namespace → why the tenant may not take it (``policy.namespace_refusal``).
    ``refused_keys``: trusted keys the operator refused to read, with why."""
    now = now or now_rfc3339()
    gen = tenant.metadata.generation
    name = tenant.metadata.name
    quota = tenant.spec.quota.gpus
    out: dict[str, Any] = {"observedGeneration": gen}
    over: list[str] = []
    if result is not None:
        used = result.usage(name)
        out["usage"] = {"gpus": map_patch(tenant.status.usage.gpus, {c: used.get(c, 0) for c in {*quota, *used}})}
        out["admitted"] = result.admitted_count(name)
        out["queued"] = result.queued_count(name)
        out["gpuSummary"] = gpu_summary(used, quota)
        out["reservations"] = map_patch(
            {k: v.to_dict() for k, v in tenant.status.reservations.items()}, result.ledger_for(name)
        )
        over = [f"{c} {used[c]}/{quota.get(c, 0)}" for c in sorted(used) if used[c] > quota.get(c, 0)]
    unknown = sorted(c for c in quota if config.gpu_class(c) is None)
    problems: list[tuple[str, str]] = []
    if conflicts:
        taken = ", ".join(f"{ns} (owned by tenant {owner})" for ns, owner in sorted(conflicts.items()))
        problems.append(("NamespaceConflict", f"namespaces claimed by another tenant: {taken}"))
    if refused_namespaces:
        problems.append(("NamespaceRefused", "; ".join(why for _, why in sorted(refused_namespaces.items()))))
    if problems:
        namespaces = condition(NAMESPACES_READY, False, problems[0][0], "; ".join(m for _, m in problems), gen)
    else:
        namespaces = condition(NAMESPACES_READY, True, "NamespacesReady",
                               f"{len(tenant.spec.namespaces)} namespaces ready", gen)
    if over:
        over_quota = condition(OVER_QUOTA, True, "OverQuota",
                               f"reserved above quota: {', '.join(over)}; nothing new is admitted until usage falls "
                               "below the quota (running deployments keep their GPUs until they shrink)", gen)
    else:
        over_quota = condition(OVER_QUOTA, False, "WithinQuota", "reservations are within the quota", gen)
    if problems:
        ready = condition(READY, False, problems[0][0], namespaces["message"], gen)
    elif unknown:
        known = ", ".join(sorted(config.gpu_classes)) or "none"
        ready = condition(
            READY, False, "UnknownGPUClass",
            f"quota names GPU classes that are not configured: {', '.join(unknown)} (known: {known})", gen,
        )
    elif refused_keys:
        ready = condition(READY, False, "TrustedKeyRefused", "; ".join(refused_keys), gen)
    elif over:
        ready = condition(READY, False, "OverQuota", over_quota["message"], gen)
    else:
        ready = condition(READY, True, "Reconciled", f"{len(tenant.spec.namespaces)} namespaces ready", gen)
    out["conditions"] = merge_conditions(tenant.status.conditions, [ready, namespaces, over_quota], now)
    return out
