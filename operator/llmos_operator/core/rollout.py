"""A ModelDeployment's rollout: which Deployment to apply, what surge to reserve, when it failed. Pure.

The controller renders the Deployment it wants (``render_children``) and hands it here with what it observed (the
stored Deployment, the pods and ReplicaSets of the ModelDeployment, the templates its status remembers, the surge the
admission ledger holds for it). ``plan_rollout`` answers:

- **Nothing to roll** (no Deployment yet, or the template is unchanged): apply what was rendered, with the strategy
  of the rollout in progress if one is.
- **A new template** (a new Model revision or digest, engine arguments, image, GPU count): it rolls only with its
  surge reserved in the tenant's quota (``maxSurge`` replicas; ``auto`` is one replica, or none when the tenant has
  no GPUs to spare and ``maxUnavailable`` allows replacing in place). Until admission has reserved it, the stored
  Deployment is left as it is and the phase is ``WaitingForSurgeQuota``. ``maxUnavailable`` is the user's, never
  raised.
- **A rollout that fails** (no progress within ``progressDeadlineSeconds``; a new pod whose runtime refused its
  weights or command line, or restarted ``CRASH_LOOP_RESTARTS`` times): with ``autoRollback`` the template of the
  last complete rollout (its ReplicaSet is kept) is applied again, else the Deployment is paused — the old pods keep
  serving either way — and the failed template is remembered: it is not tried again until the spec or the Model
  changes (which changes the template).
- **Surge** is asked for while a rollout needs it and freed (``surge_wanted=0``) once the Deployment is complete and
  no pod of it is still terminating (a terminating pod still holds its GPUs).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api.names import ANNOTATION_CONFIG_HASH, ANNOTATION_MODEL_DIGEST, RUNTIME_CONTAINER
from ..api.types import ModelDeployment

CRASH_LOOP_RESTARTS = 3
# Runtime exit codes (docs/runtime.md) that no restart will cure: the revision itself is bad.
FATAL_EXIT_CODES = {2: "refused its command line", 4: "refused its weights"}

CREATING = "Creating"
COMPLETE = "Complete"
ROLLING_OUT = "RollingOut"
STARTING = "Starting"
WAITING_FOR_SURGE = "WaitingForSurgeQuota"
ROLLED_BACK = "RolledBack"
ROLLOUT_STOPPED = "RolloutStopped"
ROLLOUT_FAILED = "RolloutFailed"  # the failed template is still the target: not retried


@dataclass(frozen=True)
class RolloutFacts:
    deployment: Mapping[str, Any] | None  # the stored Deployment
    pods: Sequence[Mapping[str, Any]] = ()
    replica_sets: Sequence[Mapping[str, Any]] = ()
    serving_template: str | None = None  # status.servingTemplate: the last complete rollout
    serving_checksum: str | None = None  # status.servingTemplateChecksum: that rollout's whole template
    failed_template: str | None = None  # status.failedTemplate
    surge_granted: int = 0  # surge GPUs the ledger holds for this deployment
    surge_asked: int = 0  # surge GPUs the last admission pass was asked for
    surge_message: str = ""  # why admission could not reserve them


@dataclass(frozen=True)
class RolloutPlan:
    phase: str
    deployment: dict[str, Any] | None  # the Deployment to apply; None leaves the stored one as it is
    surge_wanted: int | None  # GPUs to reserve for the rollout's surge; 0 frees them; None: keep what is held
    message: str
    target_template: str
    serving_template: str | None
    failed_template: str | None
    updated: int  # pods of the target template, not terminating
    updated_ready: int
    ready: int  # ready pods of any template, not terminating
    failure: str | None = None
    serving_checksum: str | None = None

    @property
    def failed(self) -> bool:
        return self.phase in (ROLLED_BACK, ROLLOUT_STOPPED, ROLLOUT_FAILED)


def template_hash(obj: Mapping[str, Any] | None) -> str | None:
    """``llmos.dev/config-hash`` of a Deployment's or ReplicaSet's pod template."""
    if obj is None:
        return None
    template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template.get("annotations") or {}).get(ANNOTATION_CONFIG_HASH)


# Where a store summary (which drops the pod spec) keeps the checksum of the whole template it was made from.
TEMPLATE_CHECKSUM = "llmosTemplateChecksum"


def template_checksum(obj: Mapping[str, Any] | None) -> str | None:
    """sha256 of a Deployment's or ReplicaSet's whole pod template as stored, without the ``pod-template-hash`` label
    the Deployment controller adds to its ReplicaSets: equal for a Deployment and the ReplicaSets made of it, and, a
    cryptographic hash over the whole template, not forgeable by a ReplicaSet someone else writes."""
    if obj is None:
        return None
    if TEMPLATE_CHECKSUM in obj:
        return str(obj[TEMPLATE_CHECKSUM])
    # Copies only the dicts on the way to the one label it drops (a deep copy of the pod spec was ~5 % of the
    # operator's CPU in a burst).
    template = dict((obj.get("spec") or {}).get("template") or {})
    metadata = template.get("metadata") or {}
    if metadata.get("labels"):
        labels = {k: v for k, v in metadata["labels"].items() if k != "pod-template-hash"}
        template["metadata"] = {**metadata, "labels": labels}
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _controlled_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = (owner.get("metadata") or {}).get("uid")
    return uid is not None and any(ref.get("controller") and ref.get("uid") == uid
                                   for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def template_digest(obj: Mapping[str, Any] | None) -> str | None:
    template = (((obj or {}).get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template.get("annotations") or {}).get(ANNOTATION_MODEL_DIGEST)


def pod_template_hash(pod: Mapping[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CONFIG_HASH)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _deleting(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def deployment_complete(deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """Every replica is of the current template and ready, and no pod of another template is left."""
    spec, st = deployment.get("spec") or {}, deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    want = spec.get("replicas", 1)
    if meta.get("generation") is not None and (st.get("observedGeneration") or 0) < meta["generation"]:
        return False
    if (st.get("updatedReplicas") or 0) != want or (st.get("readyReplicas") or 0) != want:
        return False
    if (st.get("replicas") or 0) != want:
        return False
    current = template_hash(deployment)
    return all(pod_template_hash(p) == current for p in pods if not _deleting(p))


def rollout_failure(deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], target: str,
                    deadline_seconds: int) -> str | None:
    """Why the rollout to ``target`` has failed, or None while it may still succeed."""
    for pod in pods:
        if pod_template_hash(pod) != target or _deleting(pod):
            continue
        name = pod["metadata"]["name"]
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("name") != RUNTIME_CONTAINER:
                continue
            for state in (cs.get("state"), cs.get("lastState")):
                term = (state or {}).get("terminated") or {}
                what = FATAL_EXIT_CODES.get(term.get("exitCode") or 0)
                if what:
                    line = (term.get("message") or "").strip()
                    return f"pod {name}: the runtime {what}" + (f": {line}" if line else "")
            restarts = cs.get("restartCount") or 0
            if restarts >= CRASH_LOOP_RESTARTS:
                term = ((cs.get("lastState") or {}).get("terminated") or {})
                line = (term.get("message") or "").strip()
                return f"pod {name} crash-loops ({restarts} restarts)" + (f": {line}" if line else "")
    meta, st = deployment.get("metadata") or {}, deployment.get("status") or {}
    if meta.get("generation") is not None and (st.get("observedGeneration") or 0) < meta["generation"]:
        # The Deployment controller has not seen the template just applied: its Progressing condition may still be
        # the previous rollout's deadline, which says nothing about this one.
        return None
    for cond in st.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return f"no progress for {deadline_seconds} s (progressDeadlineSeconds)"
    return None


def _with_strategy(deployment: Mapping[str, Any], surge: int, unavailable: int) -> dict[str, Any]:
    out = copy.deepcopy(dict(deployment))
    out["spec"]["strategy"] = {"type": "RollingUpdate",
                               "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
    return out


def _replica_set_of(replica_sets: Sequence[Mapping[str, Any]], template: str | None, checksum: str | None,
                    deployment: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ReplicaSet to roll back to: of ``template``, made by the Deployment controller of ``deployment``, and with
    the whole template the operator saw complete (``checksum``). A tenant may write ReplicaSets that carry llmos's
    labels and annotations; none passes the checksum, so none is ever copied into llmos's Deployment."""
    if template is None or checksum is None:
        return None
    return next((rs for rs in replica_sets if template_hash(rs) == template and _controlled_by(rs, deployment)
                 and template_checksum(rs) == checksum), None)


def plan_rollout(mdep: ModelDeployment, desired: Mapping[str, Any], facts: RolloutFacts) -> RolloutPlan:
    """What to do about the Deployment ``desired`` (rendered from the current spec and the Model's newest verified
    revision), given ``facts``. See the module docstring."""
    rollout = mdep.spec.rollout
    count = mdep.spec.gpu.count
    target = template_hash(desired) or ""
    current = facts.deployment
    current_hash = template_hash(current)
    pods = [p for p in facts.pods if not _deleting(p)]
    terminating = len(facts.pods) - len(pods)
    updated = [p for p in pods if pod_template_hash(p) == target]
    counts = {"updated": len(updated), "updated_ready": sum(1 for p in updated if pod_ready(p)),
              "ready": sum(1 for p in pods if pod_ready(p))}
    serving, failed = facts.serving_template, facts.failed_template
    serving_checksum = facts.serving_checksum
    done = current is not None and deployment_complete(current, facts.pods)
    if done:
        serving, serving_checksum = current_hash, template_checksum(current)
        if failed == current_hash:
            failed = None
    granted = facts.surge_granted // count if count else 0
    replicas = (desired.get("spec") or {}).get("replicas", 0)
    user_unavailable = rollout.max_unavailable

    def plan(phase: str, deployment: dict[str, Any] | None, surge_wanted: int | None, message: str,
             **kw: Any) -> RolloutPlan:
        return RolloutPlan(phase, deployment, surge_wanted, message, target, serving, failed,
                           updated=counts["updated"], updated_ready=counts["updated_ready"], ready=counts["ready"],
                           serving_checksum=serving_checksum, **kw)

    release = 0 if terminating == 0 else None  # a terminating pod still holds its GPUs

    if current is None:
        return plan(CREATING, dict(desired), 0, "creating the Deployment")

    if target == failed:
        # The failed revision is not tried again until the spec or the Model changes; what serves stays.
        serving_note = f"template {serving} keeps serving" if serving else "no earlier revision serves"
        return plan(ROLLOUT_FAILED, None, release if done else None,
                    f"the rollout to template {target} failed and is not retried until the spec or the Model "
                    f"changes; {serving_note}")

    if target == current_hash:
        if done:
            return plan(COMPLETE, _with_strategy(desired, **_idle(mdep)), release,
                        f"{replicas} replicas of template {target}")
        in_rollout = serving is not None and serving != target
        failure = rollout_failure(current, facts.pods, target, rollout.progress_deadline_seconds) if in_rollout \
            else None
        if failure is not None:
            failed = target
            old = _replica_set_of(facts.replica_sets, serving, serving_checksum, current)
            if rollout.auto_rollback and old is not None:
                back = _with_strategy(desired, granted, user_unavailable if (granted or user_unavailable) else 1)
                template = copy.deepcopy(old["spec"]["template"])
                template.setdefault("metadata", {}).setdefault("labels", {}).pop("pod-template-hash", None)
                back["spec"]["template"] = template
                return plan(ROLLED_BACK, back, None,
                            f"rollout to template {target} failed ({failure}); rolled back to template {serving}",
                            failure=failure)
            stopped = _with_strategy(desired, **_current_strategy(current, mdep))
            stopped["spec"]["paused"] = True
            why = "autoRollback is off" if not rollout.auto_rollback else "no earlier template is left to roll back to"
            return plan(ROLLOUT_STOPPED, stopped, None,
                        f"rollout to template {target} failed ({failure}); stopped ({why}): the old pods keep "
                        f"serving. Fix or revert the Model or the spec to roll again", failure=failure)
        if in_rollout:
            strategy = {"surge": granted, "unavailable": user_unavailable} if (granted or user_unavailable) \
                else _current_strategy(current, mdep)
            return plan(ROLLING_OUT, _with_strategy(desired, **strategy), None,
                        f"{counts['updated_ready']}/{replicas} replicas of template {target} ready")
        return plan(STARTING, _with_strategy(desired, **_idle(mdep)), release,
                    f"{counts['ready']}/{replicas} replicas ready")

    # A new template.
    if replicas == 0 or ((current.get("spec") or {}).get("replicas") or 0) == 0:
        return plan(ROLLING_OUT, _with_strategy(desired, **_idle(mdep)), 0, "no replica runs: nothing to replace")
    auto = rollout.max_surge == "auto"
    want = 1 if auto else min(int(rollout.max_surge), replicas)
    if want == 0:
        return plan(ROLLING_OUT, _with_strategy(desired, 0, user_unavailable), 0,
                    f"replacing {user_unavailable} replica(s) at a time (maxSurge 0)")
    if granted >= want:
        return plan(ROLLING_OUT, _with_strategy(desired, granted, user_unavailable), want * count,
                    f"rolling out template {target} with {granted} surge replica(s) reserved")
    answered = facts.surge_asked >= want * count
    if answered and auto and user_unavailable >= 1:
        return plan(ROLLING_OUT, _with_strategy(desired, 0, user_unavailable), 0,
                    f"no GPUs to spare for a surge replica: replacing {user_unavailable} replica(s) at a time")
    why = facts.surge_message if answered and facts.surge_message else "asking admission for the surge GPUs"
    return plan(WAITING_FOR_SURGE, None, want * count,
                f"the rollout to template {target} needs {want} surge replica(s) ({want * count} "
                f"{mdep.spec.gpu.class_} GPUs) reserved first: {why}"
                + ("" if user_unavailable or not answered else "; maxUnavailable is 0, so no pod is replaced before "
                   "its successor is ready"))


def _idle(mdep: ModelDeployment, surge: int = 0) -> dict[str, int]:
    s = idle_strategy(mdep, surge)
    return {"surge": s["maxSurge"], "unavailable": s["maxUnavailable"]}


def _current_strategy(deployment: Mapping[str, Any], mdep: ModelDeployment) -> dict[str, int]:
    ru = (((deployment.get("spec") or {}).get("strategy") or {}).get("rollingUpdate")) or {}
    surge, unavailable = ru.get("maxSurge"), ru.get("maxUnavailable")
    if isinstance(surge, int) and isinstance(unavailable, int):
        return {"surge": surge, "unavailable": unavailable}
    return _idle(mdep)


def idle_strategy(mdep: ModelDeployment, surge_replicas: int = 0) -> dict[str, int]:
    """The strategy of a Deployment whose template llmos is not changing: the surge reserved (none) and the user's
    maxUnavailable. apps/v1 refuses 0/0, so then maxUnavailable 1 — never used, as llmos changes the template only
    together with a strategy it chose for that rollout."""
    unavailable = mdep.spec.rollout.max_unavailable
    if surge_replicas == 0 and unavailable == 0:
        unavailable = 1
    return {"maxSurge": surge_replicas, "maxUnavailable": unavailable}
