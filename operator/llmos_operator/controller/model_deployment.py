"""The ModelDeployment reconciler: gate → render → apply → observe → status.

Nothing is rendered (and only ``Reconciling`` names the new generation) until admission has decided its generation.
If admitted and its Model's newest revision is verified, the children are rendered and the rollout planner
(``core/rollout.py``) decides what happens to the Deployment: applied as rendered, left as it is while the rollout's
surge waits for quota, rolled back to the last complete template, or paused when the rollout fails. If the Model's
newest revision is not verified, or a new pod shape waits for quota, the Deployment is left as it is (hold). If not
admitted, its Deployment is deleted. Status comes from the stored Deployment and pods, placement's verdict over the
stored nodes, the scheduler's messages and the runtimes' termination messages.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from cachetools import LRUCache
from kubernetes.client import ApiException

from ..api.names import ANNOTATION_ADAPTERS, CHILD_CONFLICT, LABEL_MODEL, RECONCILING, RUNTIME_CONTAINER
from ..api.types import Model, ModelDeployment, Tenant
from ..config import GPUClass
from ..core import policy
from ..core.autoscaling import external_autoscalers, wanted_replicas
from ..core.errors import RenderError
from ..core.placement import Fit, can_ever_fit, summarize_scheduling_failures
from ..core.quota import Decision, ledger_key
from ..core.rollout import ROLLED_BACK, RolloutFacts, RolloutPlan, plan_rollout, template_digest, template_hash
from ..core.status import (
    DeploymentFacts,
    adapter_status,
    condition,
    desired_status,
    is_true,
    merge_conditions,
    model_servable,
    now_rfc3339,
    progress_only,
    status_changed,
    transitions,
    verified_condition,
    worth_an_event,
)
from ..core.verification import Verification
from ..core.workloads import pod_gpus
from ..kube.client import Gone, NotOwned, controller_uid
from ..render import pod_requests, render_children
from .cache import owned_by
from .children import ChildWriter
from .model import ModelReconciler
from .state import Context

log = logging.getLogger("llmos.controller.model_deployment")

# A generation admission has not decided after this long gets `Reconciling=True, AdmissionPending` in its status;
# one decided sooner (nearly all) skips that status write: the decision's own status follows at once.
ADMISSION_PENDING_GRACE_SECONDS = 5.0
NOT_READY_RECHECK_SECONDS = 15  # a slow safety net for facts nobody watches (nodes)
# A starting deployment's counters and progress message are written at most this often (transitions at once).
PROGRESS_WRITE_SECONDS = 10.0


class ChildWriteFailed(Exception):
    """The API server refused a child; the status says so and the key backs off."""


@dataclass
class _Observed:
    """What one reconcile reads and what acting on it changed."""

    model: Model | None
    gpu_class: GPUClass | None
    deployment: dict | None
    replica_sets: list[dict]
    pods: list[dict]
    plan: RolloutPlan | None = None
    hold: tuple[str, str] | None = None
    render_error: RenderError | None = None
    write_failed: bool = False
    adapter_checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # adapter → its signature's verification


class ModelDeploymentReconciler:
    def __init__(self, ctx: Context, models: ModelReconciler, children: ChildWriter):
        self.ctx, self.models, self.children = ctx, models, children
        # deployment key → ((uid, generation), when it was first found waiting for admission)
        self._waiting_since: dict[str, tuple[tuple[str | None, int | None], float]] = {}
        self._fit_memo: LRUCache = LRUCache(maxsize=256)
        # deployment key → (what its children were rendered from, the children): reused while that is unchanged
        self._rendered: dict[str, tuple[tuple[Any, ...], list[dict]]] = {}
        self._status_written: dict[str, float] = {}  # deployment key → when its status was last written (monotonic)

    def reconcile(self, namespace: str, name: str) -> None:
        raw = self.ctx.cache["ModelDeployment"].get(name, namespace)
        key = ledger_key(namespace, name)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            self._forget(namespace, name)
            return  # children go with it (owner references); the admission pass frees its GPUs
        mdep = self.ctx.cache.stored(ModelDeployment, name, namespace)
        if mdep is None:
            return  # invalid (logged)
        self._recheck_conflict(mdep)
        decision = self.ctx.state.decision(key, mdep.metadata.uid)
        if (decision is None or decision.generation != mdep.metadata.generation
                or decision.wanted_replicas != wanted_replicas(mdep)):
            # Nothing is rendered, and no status claims this generation, before admission has decided it (nor a
            # replica count the autoscaler asks for before admission has granted it).
            self.ctx.admit_again(namespace=namespace)
            self._admission_pending(mdep)
            return
        self._waiting_since.pop(key, None)
        seen = self._observe(mdep)
        self._act(raw, mdep, decision, seen)
        status = self._report(raw, mdep, decision, seen)
        if seen.write_failed:
            raise ChildWriteFailed(str(seen.render_error))  # the queue backs off, as the status says
        if (seen.deployment is not None or decision.reason == CHILD_CONFLICT) and not is_true(status["conditions"],
                                                                                               "Ready"):
            self.ctx.wake_later(NOT_READY_RECHECK_SECONDS, "ModelDeployment", namespace, name)

    def _recheck_conflict(self, mdep: ModelDeployment) -> None:
        """A child was in the way: is the object that was in the way gone (or now the deployment's own)? Then
        admission may reserve GPUs for it again."""
        conflict = self.ctx.state.child_conflict(mdep.key, mdep.metadata.uid)
        if conflict is None:
            return
        (kind, name), ns = conflict[0], mdep.metadata.namespace or ""
        obstacle = self.ctx.cache[kind].get(name, ns) if kind in self.ctx.cache.store.informers else None
        obstacle = obstacle or self.ctx.kube.get(kind, name, ns)
        if obstacle is None or controller_uid(obstacle) == mdep.metadata.uid:
            self.ctx.state.clear_child_conflict(mdep.key)
            self.ctx.admit_again(namespace=ns)

    def _forget(self, namespace: str, name: str) -> None:
        key = ledger_key(namespace, name)
        self.ctx.state.forget_model_deployment(key)
        self._waiting_since.pop(key, None)
        self._rendered.pop(key, None)
        self._status_written.pop(key, None)
        self.children.forget(namespace, name)

    def _observe(self, mdep: ModelDeployment) -> _Observed:
        ns, name, cache = mdep.metadata.namespace or "", mdep.metadata.name, self.ctx.cache
        return _Observed(
            model=cache.stored(Model, mdep.spec.model, ns),
            gpu_class=self.ctx.config.gpu_class(mdep.spec.gpu.class_),
            deployment=cache["Deployment"].get(name, ns),
            replica_sets=cache["ReplicaSet"].list(ns, owned_by(name)),
            pods=cache["Pod"].list(ns, owned_by(name)),
        )

    # Act ------------------------------------------------------------------------------------------------------------

    def _act(self, raw: dict, mdep: ModelDeployment, decision: Decision, seen: _Observed) -> None:
        ns, name = mdep.metadata.namespace or "", mdep.metadata.name
        model = seen.model
        if not decision.admitted:
            # Not admitted (or no longer: its model lost its signature): no pods run.
            if seen.deployment is not None:
                self.ctx.kube.delete("Deployment", name, ns, uid=seen.deployment["metadata"].get("uid"))
            seen.deployment = None
            self._ask_surge(mdep.key, 0)
        elif model is None or seen.gpu_class is None:
            pass  # admission refuses it on its next pass (ModelNotVerified, UnknownGPUClass)
        elif not model_servable(model):
            # The Model's newest revision is being verified, or was rejected: the Deployment is left as it is, on
            # the revision that was verified, and keeps its GPUs (admission froze its reservation).
            cond = verified_condition(model)
            if cond is not None and cond.reason == "RevisionRejected":
                seen.hold = ("RevisionRejected", f"Model {model.metadata.name}: {cond.message}")
            else:
                seen.hold = ("VerificationPending", f"Model {model.metadata.name}'s new revision is being verified")
        elif (seen.deployment is not None and not decision.complete
              and pod_gpus(seen.deployment) != mdep.spec.gpu.count):
            # A new pod shape (gpu.count) that quota does not cover yet: the old pods keep running as they are.
            seen.hold = (decision.reason, f"the change to {mdep.spec.replicas} × {mdep.spec.gpu.count} GPUs waits: "
                                          f"{decision.message}")
        else:
            self._roll(raw, mdep, decision, model, seen)

    def _roll(self, raw: dict, mdep: ModelDeployment, decision: Decision, model: Model, seen: _Observed) -> None:
        """Render the children, plan the rollout, apply."""
        outcome = self.models.verification(model)
        if not outcome.servable:
            return
        assert seen.gpu_class is not None
        try:
            children = self._render(mdep, model, decision, outcome, seen)
        except RenderError as exc:
            seen.render_error = exc
            return
        seen.plan = self._plan(mdep, decision, next(c for c in children if c["kind"] == "Deployment"), seen)
        for child in children:
            if child["kind"] == "Deployment":
                if seen.plan.deployment is None:
                    continue  # left as it is: the rollout waits (surge quota, a failed revision)
                child = seen.plan.deployment
            if not self._write(raw, mdep, child, seen):
                return
        self._ask_surge(mdep.key, seen.plan.surge_wanted)
        ns, name = mdep.metadata.namespace or "", mdep.metadata.name
        self.children.collect_trust_configmaps(ns, model.metadata.name, children)
        pdb = self.ctx.cache["PodDisruptionBudget"].get(name, ns)
        if not any(c["kind"] == "PodDisruptionBudget" for c in children) and pdb is not None:
            self.ctx.kube.delete("PodDisruptionBudget", name, ns, uid=pdb["metadata"].get("uid"))  # down to one

    def _render(self, mdep: ModelDeployment, model: Model, decision: Decision, outcome: Verification,
                seen: _Observed) -> list[dict]:
        """The children, rendered again only when what they are rendered from changed: most reconciles are woken by
        a pod or a status and render the same objects (rendering and hashing them was a tenth of the operator's
        CPU in a burst)."""
        assert seen.gpu_class is not None
        adapter_bundles = self._adapter_bundles(mdep, model, outcome.keys, seen)
        inputs = (mdep.metadata.uid, mdep.metadata.generation, model.metadata.uid, model.metadata.generation,
                  model.status.digest, decision.replicas, outcome.verified, outcome.bundle, outcome.signer_pem,
                  tuple(sorted((outcome.keys or {}).items())), tuple(sorted(adapter_bundles.items())))
        known = self._rendered.get(mdep.key)
        if known is not None and known[0] == inputs:
            return known[1]
        children = render_children(
            mdep, model, seen.gpu_class, self.ctx.config, replicas=decision.replicas,
            bundle=outcome.bundle if outcome.verified else None,
            signer_pem=outcome.signer_pem if outcome.verified else None,
            adapter_bundles=adapter_bundles, tenant_keys=outcome.keys,
        )
        self._rendered[mdep.key] = (inputs, children)
        return children

    def _plan(self, mdep: ModelDeployment, decision: Decision, desired: dict, seen: _Observed) -> RolloutPlan:
        facts = RolloutFacts(
            deployment=seen.deployment, pods=seen.pods, replica_sets=seen.replica_sets,
            serving_template=mdep.status.serving_template, serving_checksum=mdep.status.serving_template_checksum,
            failed_template=mdep.status.failed_template, surge_granted=decision.surge,
            surge_asked=decision.surge_wanted, surge_message=decision.surge_message,
        )
        plan = plan_rollout(mdep, desired, facts)
        if plan.phase == ROLLED_BACK:
            # The store keeps ReplicaSets without their pod spec: plan again with the one rolled back to read whole.
            facts = replace(facts, replica_sets=self.children.whole_replica_set(seen.replica_sets,
                                                                               plan.serving_template))
            plan = plan_rollout(mdep, desired, facts)
        return plan

    def _write(self, raw: dict, mdep: ModelDeployment, child: dict, seen: _Observed) -> bool:
        """Write one child; False (and the failure in ``seen``) when the API server refused it or an object that is
        not the deployment's own is in the way (then admission frees its GPUs: nothing runs until it is gone)."""
        # A Model's trust ConfigMap is the Model's (its deployments share it); everything else the deployment's.
        owner = raw
        if (child["metadata"].get("labels") or {}).get(LABEL_MODEL):
            owner = self.ctx.cache["Model"].get(mdep.spec.model, mdep.metadata.namespace) or {}
            if not owner.get("metadata", {}).get("uid"):
                raise Gone(f"Model {mdep.spec.model} is gone")
        try:
            applied = self.children.apply(child, owner)
        except NotOwned as exc:
            seen.render_error = RenderError(CHILD_CONFLICT, str(exc))
            self.ctx.state.set_child_conflict(mdep.key, mdep.metadata.uid, (exc.kind, exc.name), str(exc))
            self.ctx.admit_again(namespace=mdep.metadata.namespace)
            return False
        except ApiException as exc:
            if exc.status == 409:
                raise
            key = ("ModelDeployment", mdep.metadata.namespace, mdep.metadata.name)
            seen.render_error = self.children.write_failure(child, exc, key)
            seen.write_failed = True
            return False
        if child["kind"] == "Deployment":
            assert seen.plan is not None
            self.children.rollout_events(raw, mdep, seen.deployment, applied, seen.plan)
            seen.deployment = applied
        return True

    def _ask_surge(self, key: str, gpus: int | None) -> None:
        """What the rollout wants reserved for its surge; a change runs an admission pass (which reserves or frees
        it in the ledger before the Deployment may use it)."""
        if gpus is not None and self.ctx.state.ask_surge(key, gpus):
            self.ctx.admit_again(namespace=key.split("/", 1)[0])

    def _adapter_bundles(self, mdep: ModelDeployment, model: Model, keys: dict[str, bytes] | None,
                         seen: _Observed) -> dict[str, bytes]:
        """Signature bundles of the adapters this deployment serves (the runtime verifies each before loading), and
        each one's verification for the status (in ``seen``)."""
        out = {}
        declared = {a.name: i for i, a in enumerate(model.spec.adapters)}
        for name in mdep.spec.adapters:
            if name not in declared:
                continue  # render_children refuses it (UnknownAdapter)
            bundle, check = self.models.check_adapter(model, declared[name], keys or {})
            seen.adapter_checks[name] = check
            if bundle is not None:
                out[name] = bundle
        return out

    # Report ---------------------------------------------------------------------------------------------------------

    def _report(self, raw: dict, mdep: ModelDeployment, decision: Decision, seen: _Observed) -> dict:
        fit = scheduling = None
        termination_messages: list[str] = []
        adapter_reports: list[dict] = []
        if seen.deployment is not None and decision.admitted and seen.gpu_class is not None:
            fit = self._can_ever_fit(mdep, seen.gpu_class)
            scheduling, termination_messages, adapter_reports = _pod_facts(seen.pods)
        revision, target = _revisions(mdep, seen.model, [seen.deployment, *seen.replica_sets], seen.plan)
        tenant = self.ctx.cache.stored(Tenant, decision.tenant) if decision.tenant else None
        ns = mdep.metadata.namespace or ""
        facts = DeploymentFacts(
            decision=decision, model=seen.model, deployment=seen.deployment, fit=fit, scheduling=scheduling,
            termination_messages=termination_messages, render_error=seen.render_error, plan=seen.plan,
            hold=seen.hold, revision=revision, target_revision=target,
            quota_limit=tenant.spec.quota.gpus.get(mdep.spec.gpu.class_, 0) if tenant is not None else None,
            autoscaler=self.ctx.state.autoscaler_report(mdep.key, mdep.metadata.uid),
            external_autoscalers=external_autoscalers(self.ctx.cache["HorizontalPodAutoscaler"].list(ns),
                                                      mdep.metadata.name) if mdep.spec.autoscaling else (),
            poll_seconds=self.ctx.config.autoscaler.poll_seconds,
        )
        status = desired_status(mdep, self.ctx.config, facts)
        status["adapters"] = (adapter_status(mdep.spec.adapters, adapter_reports, seen.adapter_checks)
                              if seen.deployment is not None else [])
        status["remoteCode"] = True if seen.deployment is not None and policy.remote_code(mdep) else None
        old = mdep.status.to_dict()
        if status_changed(old, status):
            if self._progress_waits(mdep, old, status):
                return status
            self.ctx.kube.patch_status("ModelDeployment", mdep.metadata.name, mdep.metadata.namespace, status)
            self._status_written[mdep.key] = time.monotonic()
            served_before = bool(old.get("servingTemplate"))
            for t in transitions(old.get("conditions", []), status["conditions"]):
                if worth_an_event(t, served_before):
                    good = (t.status == "True") != (t.type in ("Degraded", "ScalingLimited"))
                    self.ctx.events(raw, "Normal" if good else "Warning", t.reason, t.message)
        return status

    def _progress_waits(self, mdep: ModelDeployment, old: dict, status: dict) -> bool:
        """A starting deployment's progress alone (``progress_only``) is written at most every
        ``PROGRESS_WRITE_SECONDS``: the change waits (the key comes back then) unless something else is written
        first, which carries it along."""
        if not progress_only(old, status):
            return False
        left = PROGRESS_WRITE_SECONDS - (time.monotonic() - self._status_written.get(mdep.key, float("-inf")))
        if left <= 0:
            return False
        self.ctx.wake_later(left, "ModelDeployment", mdep.metadata.namespace, mdep.metadata.name)
        return True

    def _admission_pending(self, mdep: ModelDeployment) -> None:
        """Say that a new generation waits for admission, without claiming it: only the Reconciling condition
        carries the new generation (kubectl wait and kstatus keep waiting on the others). Said only once it has
        waited ``ADMISSION_PENDING_GRACE_SECONDS``: it costs a status write, and admission nearly always decides
        sooner (a 1,000-deployment burst made 1,000 of these writes, each followed within a second by the
        decision's)."""
        gen, key = mdep.metadata.generation, mdep.key
        waiting = (mdep.metadata.uid, gen)
        first = self._waiting_since.get(key)
        if first is None or first[0] != waiting:
            first = self._waiting_since[key] = (waiting, time.monotonic())
        left = ADMISSION_PENDING_GRACE_SECONDS - (time.monotonic() - first[1])
        if left > 0:  # look again when the grace is over (one delayed re-queue per key: the earliest stands)
            self.ctx.wake_later(left, "ModelDeployment", mdep.metadata.namespace, mdep.metadata.name)
            return
        old = mdep.status.to_dict()
        pending = condition(RECONCILING, True, "AdmissionPending", f"generation {gen} waits for admission", gen)
        previous = next((c for c in old.get("conditions", []) if c["type"] == RECONCILING), None)
        if previous is not None and all(previous.get(k) == pending[k] for k in ("status", "reason",
                                                                                  "observedGeneration")):
            return
        conditions = merge_conditions(old.get("conditions", []), [pending], now_rfc3339())
        self.ctx.kube.patch_status("ModelDeployment", mdep.metadata.name, mdep.metadata.namespace,
                                   {"conditions": conditions})

    def _can_ever_fit(self, mdep: ModelDeployment, gpu_class: GPUClass) -> Fit:
        """Placement's verdict over the stored node summaries, computed once per node-set version and pod shape."""
        requests = pod_requests(mdep, gpu_class, self.ctx.config)
        nodes = self.ctx.cache["Node"]
        key = (nodes.version, gpu_class.name, mdep.spec.gpu.count, tuple(sorted(requests.items())))
        fit = self._fit_memo.get(key)
        if fit is None:
            fit = self._fit_memo[key] = can_ever_fit(nodes.list(), gpu_class, mdep.spec.gpu.count, requests)
        return fit


def _revisions(mdep: ModelDeployment, model: Model | None, workloads: list[dict | None],
               plan: RolloutPlan | None) -> tuple[str | None, str | None]:
    """(what serves, what rolls): the Model digest of a template (its hash when the Model is unsigned), looked up in
    the Deployment and its ReplicaSets (``workloads``)."""
    def of(template: str | None) -> str | None:
        if template is None:
            return None
        for obj in workloads:
            if obj is not None and template_hash(obj) == template:
                return template_digest(obj) or f"template:{template}"
        return f"template:{template}"
    if plan is None:
        return mdep.status.revision, mdep.status.target_revision
    target: str | None = (model.status.digest if model is not None and model.status.digest
                          and model.spec.signature.policy != "Disabled" else f"template:{plan.target_template}")
    if plan.failed and plan.phase != "RolloutStopped":
        target = of(plan.failed_template) if plan.failed_template else target
    return of(plan.serving_template), target


def _pod_facts(pods: list[dict]) -> tuple[str | None, list[str], list[dict]]:
    """The scheduler's reasons for Pending pods, the runtime's termination messages, and the adapter reports the
    runtimes wrote on their pods."""
    unschedulable, messages, reports = [], [], []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        report = (meta.get("annotations") or {}).get(ANNOTATION_ADAPTERS)
        if report and not meta.get("deletionTimestamp"):
            try:
                parsed = json.loads(report)
                if isinstance(parsed, dict):
                    reports.append(parsed)
            except ValueError:
                log.warning("pod %s/%s: unreadable %s annotation", meta.get("namespace"), meta["name"],
                            ANNOTATION_ADAPTERS)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("message"):
                unschedulable.append(cond["message"])
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") != RUNTIME_CONTAINER:
                continue
            for state in (cs.get("state"), cs.get("lastState")):
                term = (state or {}).get("terminated")
                if term and term.get("exitCode") not in (0, None) and term.get("message"):
                    messages.append(f"pod {meta['name']}: {term['message'].strip()}")
    return summarize_scheduling_failures(unschedulable), messages, reports
