"""A ModelDeployment's status with spec.autoscaling (core/status/scaling.py and what it changes about Ready and
QuotaAdmitted): minReplicas is what must be admitted, ScalingLimited names the class and the numbers, ScalingActive
says whether the count follows the load."""

import pytest

from llmos_operator.api import parse_object
from llmos_operator.config import default_config
from llmos_operator.core.autoscaling import AutoscalerReport
from llmos_operator.core.quota import Request, TenantInfo, admit
from llmos_operator.core.status import DeploymentFacts, desired_status

pytestmark = pytest.mark.unit

CFG = default_config()
T1 = "2026-01-01T00:00:00Z"
AUTOSCALING = {"minReplicas": 2, "maxReplicas": 6, "metric": "waitingRequests", "target": 4}


def mdep(desired=None, autoscaling=AUTOSCALING, conditions=()):
    status = {"conditions": list(conditions)}
    if desired is not None:
        status["autoscaling"] = {"desiredReplicas": desired}
    spec = {"model": "llama", "replicas": 1, "gpu": {"class": "h100", "count": 1}}
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "chat", "namespace": "a1", "uid": "u", "generation": 2,
                                      "creationTimestamp": T1},
                         "spec": spec, "status": status})


MODEL = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Model",
                      "metadata": {"name": "llama", "namespace": "a1", "generation": 1},
                      "spec": {"source": {"uri": "hf://a/b"}, "signature": {"policy": "Disabled"}},
                      "status": {"observedGeneration": 1, "conditions": [
                          {"type": "Verified", "status": "True", "reason": "SignatureDisabled", "message": "m",
                           "lastTransitionTime": T1}]}})


def decision(d, quota, ledger=None):
    r = Request.from_model_deployment(d, "a")
    return admit([r], ledger or {}, {"a": TenantInfo("a", {"h100": quota})}, {"h100"}).decisions[r.key]


def child(ready, replicas):
    return {"metadata": {"generation": 1},
            "spec": {"template": {"metadata": {"annotations": {}}}},
            "status": {"observedGeneration": 1, "replicas": replicas, "readyReplicas": ready,
                       "updatedReplicas": replicas}}


def status(d, dec, deployment, **facts):
    return desired_status(d, CFG, DeploymentFacts(decision=dec, model=MODEL, deployment=deployment, **facts), now=T1)


def conds(st):
    return {c["type"]: c for c in st["conditions"]}


def test_min_replicas_granted_is_admitted_and_ready_the_rest_is_scaling_limited():
    d = mdep(desired=5)
    dec = decision(d, quota=3)
    assert dec.admitted and dec.replicas == 3 and dec.wanted_replicas == 5
    st = status(d, dec, child(3, 3), quota_limit=3)
    c = conds(st)
    assert c["QuotaAdmitted"]["status"] == "True" and c["Ready"]["status"] == "True"
    assert c["Stalled"]["status"] == "False"
    assert c["ScalingLimited"]["status"] == "True" and c["ScalingLimited"]["reason"] == "QuotaExceeded"
    assert c["ScalingLimited"]["message"].startswith("h100 3/3: 3 of 5 replicas granted; 2 more wait")
    assert c["ScalingActive"]["status"] == "True" and c["ScalingActive"]["reason"] == "FollowingLoad"
    assert (st["desiredReplicas"], st["grantedReplicas"], st["readySummary"]) == (5, 3, "3/5")
    assert "autoscaling" not in st  # the autoscaler's own record is never written by the reconciler


def test_min_replicas_not_granted_waits_like_any_deployment():
    d = mdep(desired=5)
    dec = decision(d, quota=1)
    c = conds(status(d, dec, None, quota_limit=1))
    assert c["QuotaAdmitted"]["status"] == "False" and c["Ready"]["reason"] == "QuotaNeverFits"


def test_scaling_up_keeps_ready_once_min_replicas_serve():
    d = mdep(desired=4)
    dec = decision(d, quota=8)
    c = conds(status(d, dec, child(2, 4)))
    assert c["Ready"]["status"] == "True" and c["Ready"]["reason"] == "Scaling"
    assert c["Reconciling"]["status"] == "False"
    # below minReplicas (a first start): not Ready yet
    c = conds(status(d, dec, child(1, 4)))
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "Starting"


def test_scaling_active_says_why_the_count_holds():
    d = mdep(desired=2)
    dec = decision(d, quota=8)
    c = conds(status(d, dec, child(2, 2), external_autoscalers=("a1/chat-hpa",)))
    assert c["ScalingActive"]["status"] == "False" and c["ScalingActive"]["reason"] == "ExternalAutoscaler"
    assert "a1/chat-hpa" in c["ScalingActive"]["message"]
    report = AutoscalerReport(False, "NoReadyReplica", "no ready replica to read the load from")
    c = conds(status(d, dec, child(2, 2), autoscaler=report))
    assert c["ScalingActive"]["reason"] == "NoReadyReplica"
    capped = AutoscalerReport(True, "FollowingLoad", "", capped_at_max=True)
    c = conds(status(d, dec, child(2, 2), autoscaler=capped))
    assert c["ScalingLimited"]["reason"] == "TooManyReplicas" and "maxReplicas (6)" in c["ScalingLimited"]["message"]


def test_autoscaling_removed_drops_scaling_active_and_the_record():
    before = conds(status(mdep(desired=2), decision(mdep(desired=2), quota=8), child(2, 2)))
    d = mdep(autoscaling=None, conditions=before.values())
    st = status(d, decision(d, quota=8), child(1, 1))
    c = conds(st)
    assert "ScalingActive" not in c and c["ScalingLimited"]["status"] == "False"
    assert st["autoscaling"] is None


def test_deployments_without_autoscaling_or_limits_carry_no_scaling_conditions():
    d = mdep(autoscaling=None)
    c = conds(status(d, decision(d, quota=8), child(1, 1)))
    assert "ScalingActive" not in c and "ScalingLimited" not in c


def test_events_for_scaling_only_where_someone_acts():
    from llmos_operator.core.status import Transition, worth_an_event

    assert worth_an_event(Transition("ScalingLimited", "False", "True", "QuotaExceeded", "h100 4/4: …"))
    assert not worth_an_event(Transition("ScalingLimited", "True", "False", "WithinLimits", "4 of 4"))
    assert worth_an_event(Transition("ScalingActive", "True", "False", "ExternalAutoscaler", "…"))
    assert worth_an_event(Transition("ScalingActive", "True", "False", "MetricsUnavailable", "…"))
    assert not worth_an_event(Transition("ScalingActive", "True", "False", "NoReadyReplica", "…"))
    assert not worth_an_event(Transition("ScalingActive", None, "True", "FollowingLoad", "…"))
