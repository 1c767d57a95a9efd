"""Status per kind (core/status/): ModelDeployment conditions from observed facts, Model and Tenant status."""

import pytest

from llmos_operator.api import parse_object
from llmos_operator.api.types import ModelDeploymentStatus, TenantStatus
from llmos_operator.config import default_config
from llmos_operator.core.errors import RenderError
from llmos_operator.core.placement import can_ever_fit
from llmos_operator.core.quota import Request, TenantInfo, admit
from llmos_operator.core.status import (
    DeploymentFacts,
    merge_conditions,
    model_status,
    tenant_status,
    transitions,
)
from llmos_operator.core.status import desired_status as _desired_status

pytestmark = pytest.mark.unit

CFG = default_config()


def desired_status(mdep, config, now=None, **facts):
    """The ModelDeployment's status from facts given as keywords (the reconciler gathers a DeploymentFacts)."""
    return _desired_status(mdep, config, DeploymentFacts(**facts), now=now)
DIGEST = "sha256:" + "0123456789ab" * 5 + "cdef"
T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def mdep(replicas=2, count=2, generation=4, status=None):
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "chat", "namespace": "a1", "uid": "u", "generation": generation,
                                      "creationTimestamp": T1},
                         "spec": {"model": "llama", "replicas": replicas, "gpu": {"class": "h100", "count": count}},
                         "status": status or {}})


def model(verified=True, policy="Required", reason="Verified", generation=1, observed=1):
    conds = [] if verified is None else [{"type": "Verified", "status": "True" if verified else "False",
                                          "reason": reason, "message": "m", "lastTransitionTime": T1}]
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Model",
                         "metadata": {"name": "llama", "namespace": "a1", "generation": generation},
                         "spec": {"source": {"uri": "hf://a/b"}, "signature": {"policy": policy}},
                         "status": {"observedGeneration": observed, "digest": DIGEST, "signer": "platform",
                                    "conditions": conds}})


def decide(d, quota=8, ledger=None):
    r = Request.from_model_deployment(d, "a")
    return admit([r], ledger or {}, {"a": TenantInfo("a", {"h100": quota})}, {"h100"}).decisions[r.key]


def child(ready, updated=None, replicas=None, generation=1, observed=1, deadline=False):
    conds = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}] if deadline else []
    return {"metadata": {"generation": generation},
            "spec": {"template": {"metadata": {"annotations": {"llmos.dev/model-digest": DIGEST}}}},
            "status": {"observedGeneration": observed, "replicas": ready if replicas is None else replicas,
                       "readyReplicas": ready, "updatedReplicas": ready if updated is None else updated,
                       "conditions": conds}}


def conds(status):
    return {c["type"]: c for c in status["conditions"]}


def test_ready_when_admitted_verified_and_all_replicas_ready():
    d = mdep()
    st = desired_status(d, CFG, decision=decide(d), model=model(), deployment=child(2), now=T1)
    c = conds(st)
    assert [x["type"] for x in st["conditions"]] == ["Ready", "QuotaAdmitted", "ModelVerified", "Progressing", "Degraded",
                                                     "Reconciling", "Stalled"]
    assert c["Reconciling"]["status"] == "False" and c["Stalled"]["status"] == "False"  # kstatus: Current
    assert c["Ready"]["status"] == "True" and c["Ready"]["reason"] == "Serving"
    assert c["QuotaAdmitted"]["status"] == "True" and c["QuotaAdmitted"]["reason"] == "Admitted"
    assert c["ModelVerified"]["status"] == "True" and f"{DIGEST} signed by platform" in c["ModelVerified"]["message"]
    assert c["Progressing"]["status"] == "False" and c["Degraded"]["status"] == "False"
    assert all(x["observedGeneration"] == 4 and x["lastTransitionTime"] == T1 for x in st["conditions"])
    assert st["observedGeneration"] == 4
    assert (st["replicas"], st["readyReplicas"], st["updatedReplicas"]) == (2, 2, 2)
    assert st["readySummary"] == "2/2" and st["gpuSummary"] == "h100×2"
    assert st["endpoint"] == "http://chat.a1.svc:8000/v1" and st["modelDigest"] == DIGEST
    assert st["queuePosition"] is None  # a merge patch removes it
    assert st["selector"] == "app.kubernetes.io/name=llmos-runtime,llmos.dev/model-deployment=chat"
    ModelDeploymentStatus.model_validate(st | {"queuePosition": None})  # fits the schema


def test_disabled_signature_is_served_but_reported_unverified():
    d = mdep()
    unsigned = model(False, policy="Disabled", reason="SignatureDisabled")
    c = conds(desired_status(d, CFG, decision=decide(d), model=unsigned, deployment=child(2), now=T1))
    assert c["ModelVerified"]["status"] == "False" and c["ModelVerified"]["reason"] == "SignatureDisabled"
    assert c["Ready"]["status"] == "True"


def test_queued_for_quota():
    d = mdep(replicas=5, count=2)
    st = desired_status(d, CFG, decision=decide(d), model=model(), deployment=None, now=T1)
    c = conds(st)
    assert c["QuotaAdmitted"]["status"] == "False" and c["QuotaAdmitted"]["reason"] == "QuotaExceeded"
    assert "h100" in c["QuotaAdmitted"]["message"] and "of its 8" in c["QuotaAdmitted"]["message"]
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "QuotaExceeded"
    assert st["queuePosition"] == 1 and st["endpoint"] is None and st["replicas"] == 0
    assert st["readySummary"] == "0/5"


def test_model_problems_come_first():
    d = mdep()
    missing = conds(desired_status(d, CFG, decision=decide(d), model=None, now=T1))
    assert missing["ModelVerified"]["reason"] == "ModelNotFound" and missing["Ready"]["reason"] == "ModelNotFound"
    bad = conds(desired_status(d, CFG, decision=decide(d), model=model(False, "Required", "SignatureInvalid"), now=T1))
    assert bad["ModelVerified"]["status"] == "False" and bad["Ready"]["reason"] == "SignatureInvalid"
    pending = conds(desired_status(d, CFG, decision=decide(d), model=model(None), now=T1))
    assert pending["ModelVerified"]["status"] == "Unknown" and pending["Ready"]["reason"] == "VerificationPending"
    stale = conds(desired_status(d, CFG, decision=decide(d), model=model(generation=2, observed=1), now=T1))
    assert stale["ModelVerified"]["status"] == "Unknown"


def test_rollout_states():
    d = mdep()
    dec = decide(d)

    def ready(**kw):
        return conds(desired_status(d, CFG, decision=dec, model=model(), now=T1, **kw))

    assert ready(deployment=None)["Ready"]["reason"] == "Creating"
    starting = ready(deployment=child(0, updated=2, replicas=2))
    assert starting["Ready"]["reason"] == "Starting" and starting["Progressing"]["status"] == "True"
    rolling = ready(deployment=child(2, updated=1, replicas=3))
    assert rolling["Ready"]["reason"] == "RollingOut" and "1 of the current revision" in rolling["Ready"]["message"]
    behind = ready(deployment=child(2, generation=2, observed=1))
    assert behind["Ready"]["status"] == "False"
    stuck = ready(deployment=child(1, updated=1, replicas=2, deadline=True))
    assert stuck["Ready"]["reason"] == "ProgressDeadlineExceeded"
    assert stuck["Progressing"]["status"] == "False" and stuck["Degraded"]["status"] == "True"


def test_unschedulable_and_pending_pods():
    d = mdep(count=9)
    dec = decide(d, quota=32)
    nodes = [{"metadata": {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
              "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
              "status": {"allocatable": {"nvidia.com/gpu": "8"}}}]
    fit = can_ever_fit(nodes, CFG.gpu_class("h100"), 9)
    msg = "1 pod cannot be scheduled: 0/10 nodes are available: 4 Insufficient nvidia.com/gpu."
    c = conds(desired_status(d, CFG, decision=dec, model=model(), deployment=child(0, updated=2, replicas=2),
                             fit=fit, scheduling=msg, now=T1))
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "Unschedulable"
    assert "needs 9" in c["Ready"]["message"] and "Insufficient nvidia.com/gpu" in c["Ready"]["message"]
    assert c["Degraded"]["status"] == "True" and c["Progressing"]["status"] == "False"
    d2 = mdep()
    pending = conds(desired_status(d2, CFG, decision=decide(d2), model=model(),
                                   deployment=child(0, updated=2, replicas=2), scheduling=msg, now=T1))
    assert pending["Ready"]["reason"] == "PodsPending" and pending["Ready"]["message"] == msg
    assert pending["Degraded"]["status"] == "False"


def test_runtime_failure_surfaces():
    d = mdep()
    c = conds(desired_status(d, CFG, decision=decide(d), model=model(), deployment=child(0, updated=2, replicas=2),
                             termination_messages=["", "signature verification failed: hash mismatch in model.bin"],
                             now=T1))
    assert c["Ready"]["reason"] == "RuntimeFailed" and "hash mismatch" in c["Ready"]["message"]
    assert c["Degraded"]["status"] == "True"


def test_scale_up_granted_in_part_serves_what_fits_and_says_why_not_more():
    small = mdep(replicas=2, count=2)
    ledger = admit([Request.from_model_deployment(small, "a")], {}, {"a": TenantInfo("a", {"h100": 6})},
                   {"h100"}).ledger
    big = mdep(replicas=4, count=2)
    dec = admit([Request.from_model_deployment(big, "a")], ledger, {"a": TenantInfo("a", {"h100": 6})},
                {"h100"}).decisions["a1/chat"]
    assert dec.admitted and dec.replicas == 3 and dec.limited  # 8 GPUs asked, 6 of the quota: 3 whole replicas
    st = desired_status(big, CFG, decision=dec, model=model(), deployment=child(3), now=T1)
    c = conds(st)
    # Three replicas serve, but the change is not done: not Ready (kubectl wait, Flux, Argo CD keep waiting), and
    # kstatus's Reconciling says it waits in the queue.
    assert c["Ready"]["status"] == "False" and "3 of 4 replicas granted" in c["Ready"]["message"]
    assert c["Ready"]["message"].startswith("3/3 replicas ready")
    assert c["QuotaAdmitted"]["status"] == "False" and c["QuotaAdmitted"]["reason"] == "QuotaExceeded"
    assert c["Reconciling"]["status"] == "True" and c["Stalled"]["status"] == "False"
    assert c["ScalingLimited"]["status"] == "True" and c["ScalingLimited"]["reason"] == "QuotaExceeded"
    assert c["ScalingLimited"]["message"].startswith("h100 6/6: 3 of 4 replicas granted; 1 more wait")
    never = conds(desired_status(big, CFG, decision=dec, model=model(), deployment=child(3), quota_limit=6, now=T1))
    assert never["Stalled"]["status"] == "True" and never["Stalled"]["reason"] == "QuotaNeverFits"
    assert "3 of 4 replicas run" in never["Ready"]["message"]
    assert "holds at most 3 replicas" in never["ScalingLimited"]["message"]
    assert st["readySummary"] == "3/4" and st["endpoint"]
    assert (st["desiredReplicas"], st["grantedReplicas"]) == (4, 3)


def test_render_error_and_pending_decision():
    d = mdep()
    c = conds(desired_status(d, CFG, decision=decide(d), model=model(),
                             render_error=RenderError("UnknownAdapter", "adapter x is not declared"), now=T1))
    assert c["Ready"]["reason"] == "UnknownAdapter" and c["Degraded"]["status"] == "True"
    c = conds(desired_status(d, CFG, decision=None, model=model(), now=T1))
    assert c["QuotaAdmitted"]["status"] == "Unknown" and c["Ready"]["reason"] == "Pending"


def test_last_transition_time_kept_while_status_unchanged():
    d = mdep()
    first = desired_status(d, CFG, decision=decide(d), model=model(), deployment=child(0, updated=2, replicas=2), now=T1)
    d2 = mdep(status={"conditions": first["conditions"]})
    second = desired_status(d2, CFG, decision=decide(d2), model=model(), deployment=child(2), now=T2)
    c1, c2 = conds(first), conds(second)
    assert c2["QuotaAdmitted"]["lastTransitionTime"] == T1  # unchanged
    assert c2["Ready"]["lastTransitionTime"] == T2 and c1["Ready"]["status"] == "False"  # flipped
    assert c2["Progressing"]["lastTransitionTime"] == T2
    changed = transitions(first["conditions"], second["conditions"])
    assert {(t.type, t.old_status, t.status) for t in changed} == {("Ready", "False", "True"),
                                                                   ("Progressing", "True", "False"),
                                                                   ("Reconciling", "True", "False")}
    assert not any(t.warning for t in changed)
    assert transitions(second["conditions"], second["conditions"]) == []


def test_merge_conditions_keeps_foreign_types():
    prev = [{"type": "Custom", "status": "True", "reason": "X", "message": "", "lastTransitionTime": T1}]
    out = merge_conditions(prev, [{"type": "Ready", "status": "True", "reason": "Serving", "message": ""}], T2)
    assert [c["type"] for c in out] == ["Ready", "Custom"] and out[1]["lastTransitionTime"] == T1


def test_model_status():
    m = model(None)
    st = model_status(m, verified=True, reason="SignatureDisabled", message="signature.policy is Disabled",
                      digest=DIGEST, signer=None, now=T1)
    assert st["shortDigest"] == "0123456789ab" and st["digest"] == DIGEST and st["signer"] is None
    c, stalled, reconciling = st["conditions"]
    assert (c["type"], c["status"], c["reason"], c["observedGeneration"]) == ("Verified", "True", "SignatureDisabled", 1)
    assert (stalled["type"], stalled["status"], reconciling["type"], reconciling["status"]) == (
        "Stalled", "False", "Reconciling", "False")
    bad = model_status(m, verified=False, reason="UntrustedKey", message="signed by an unknown key", now=T1)
    assert [(x["type"], x["status"]) for x in bad["conditions"]] == [
        ("Verified", "False"), ("Stalled", "True"), ("Reconciling", "False")]  # kstatus: Failed


def test_tenant_status():
    t = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant",
                      "metadata": {"name": "a", "generation": 2},
                      "spec": {"namespaces": ["a1"], "quota": {"gpus": {"h100": 8, "l4": 4}}},
                      "status": {"reservations": {"a1/gone": {"class": "h100", "gpus": 2, "uid": "old"}},
                                 "usage": {"gpus": {"a100": 1}}}})
    x, y = mdep(replicas=2, count=2), mdep(replicas=4, count=2)
    y.metadata.name = "other"
    y.metadata.uid = "u2"
    result = admit([Request.from_model_deployment(x, "a"), Request.from_model_deployment(y, "a")],
                   {k: v.to_dict() for k, v in t.status.reservations.items()},
                   {"a": TenantInfo.from_tenant(t)}, {"h100", "l4"})
    st = tenant_status(t, CFG, result=result, now=T1)
    assert st["usage"] == {"gpus": {"h100": 4, "l4": 0, "a100": None}}
    assert st["admitted"] == 1 and st["queued"] == 1
    assert st["gpuSummary"] == "h100 4/8, l4 0/4"
    assert st["reservations"] == {"a1/gone": None, "a1/chat": {"class": "h100", "gpus": 4, "uid": "u"}}
    ready, namespaces, over, isolated = st["conditions"]
    assert isolated["type"] == "Isolated" and isolated["status"] == "True"
    assert ready["status"] == "True" and ready["observedGeneration"] == 2
    assert (namespaces["type"], namespaces["status"]) == ("NamespacesReady", "True")
    assert (over["type"], over["status"]) == ("OverQuota", "False")
    TenantStatus.model_validate({k: v for k, v in st.items() if k not in ("usage", "reservations")})

    conflict = tenant_status(t, CFG, conflicts={"a1": "b"}, now=T1)
    assert "reservations" not in conflict  # no admission result: the ledger is left alone
    ready, namespaces, _, _ = conflict["conditions"]
    assert ready["reason"] == "NamespaceConflict" and "a1 (owned by tenant b)" in ready["message"]
    assert namespaces["status"] == "False" and namespaces["reason"] == "NamespaceConflict"

    t.spec.quota.gpus["a100"] = 2
    ready, _, _, _ = tenant_status(t, CFG, now=T1)["conditions"]
    assert ready["reason"] == "UnknownGPUClass" and "a100" in ready["message"]


def test_tenant_status_refused_namespace_and_over_quota():
    t = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "a", "generation": 3},
                      "spec": {"namespaces": ["a1", "old"], "quota": {"gpus": {"h100": 2}}},
                      "status": {"reservations": {"a1/chat": {"class": "h100", "gpus": 4, "uid": "u"}}}})
    x = mdep(replicas=2, count=2)
    result = admit([Request.from_model_deployment(x, "a")], {k: v.to_dict() for k, v in t.status.reservations.items()},
                   {"a": TenantInfo.from_tenant(t)}, {"h100", "l4"})
    st = tenant_status(t, CFG, result=result, refused_namespaces={"old": "namespace old already exists"}, now=T1)
    ready, namespaces, over, isolated = st["conditions"]
    assert isolated["type"] == "Isolated" and isolated["status"] == "True"
    assert namespaces["reason"] == "NamespaceRefused" and "old already exists" in namespaces["message"]
    assert ready["status"] == "False" and ready["reason"] == "NamespaceRefused"
    # The quota was lowered to 2 while 4 are reserved: the deployment keeps them, the tenant says so.
    assert over["status"] == "True" and "h100 4/2" in over["message"]
    st = tenant_status(t, CFG, result=result, now=T1)
    assert st["conditions"][0]["reason"] == "OverQuota"


def test_a_new_deployment_gets_events_for_verdicts_and_readiness_only():
    """A new deployment passes through Creating, Starting, Progressing…: Events only for what a person acts on."""
    from llmos_operator.core.status import worth_an_event

    d = mdep()
    first = desired_status(d, CFG, decision=decide(d), model=model(), deployment=child(0, updated=2, replicas=2),
                           now=T1)
    worth = [t for t in transitions([], first["conditions"]) if worth_an_event(t)]
    # Admitted at once and "Model verified" (the Model's own Event): nothing to say yet; Ready will.
    assert worth == []
    unverified = desired_status(mdep(), CFG, decision=decide(d), model=model(verified=False, reason="UntrustedKey"),
                                deployment=None, now=T1)
    assert ("ModelVerified", "False") in [(t.type, t.status) for t in transitions([], unverified["conditions"])
                                          if worth_an_event(t)]
    d2 = mdep(status={"conditions": first["conditions"]})
    second = desired_status(d2, CFG, decision=decide(d2), model=model(), deployment=child(2), now=T2)
    # Ready for the first time: its status says so; Ready again after a rollout had completed: an Event.
    assert [(t.type, t.status) for t in transitions(first["conditions"], second["conditions"])
            if worth_an_event(t)] == []
    assert [(t.type, t.status) for t in transitions(first["conditions"], second["conditions"])
            if worth_an_event(t, served_before=True)] == [("Ready", "True")]
    lost = desired_status(mdep(status={"conditions": second["conditions"]}), CFG, decision=decide(d2), model=model(),
                          deployment=child(1), now=T2)
    assert ("Ready", "False") in [(t.type, t.status) for t in transitions(second["conditions"], lost["conditions"])
                                  if worth_an_event(t)]
