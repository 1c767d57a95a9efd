"""Rollback trusts only the ReplicaSet llmos's Deployment made of the template it saw complete.

A tenant is admin of its namespace: it can write a ReplicaSet carrying llmos's labels, the serving template's
``llmos.dev/config-hash`` and even a controller ownerReference to llmos's Deployment. Copying such a template into
llmos's Deployment would let the operator run the tenant's pod spec (another image, unsigned weights) under llmos's
labels. ``plan_rollout`` rolls back only to a ReplicaSet controlled by the Deployment whose whole template has the
checksum recorded (in status, which tenants cannot write) when that template completed.
"""

import copy

import pytest

from llmos_operator.api import parse_object
from llmos_operator.core.rollout import (
    COMPLETE,
    ROLLED_BACK,
    ROLLOUT_STOPPED,
    TEMPLATE_CHECKSUM,
    RolloutFacts,
    plan_rollout,
    template_checksum,
)
from llmos_operator.render.common import ANNOTATION_CONFIG_HASH

pytestmark = pytest.mark.unit

DEPLOYMENT_UID = "dep-uid"


def mdep(auto_rollback=True):
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "chat", "namespace": "a1", "uid": "u", "generation": 3},
                         "spec": {"model": "llama", "replicas": 1, "gpu": {"class": "h100", "count": 1},
                                  "rollout": {"autoRollback": auto_rollback}}})


def template(config_hash, image="llmos/runtime:1"):
    return {"metadata": {"labels": {"llmos.dev/model-deployment": "chat"},
                         "annotations": {ANNOTATION_CONFIG_HASH: config_hash}},
            "spec": {"containers": [{"name": "runtime", "image": image,
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def deployment(config_hash, *, complete=False, deadline=False):
    conds = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}] if deadline else []
    n = 1 if complete else 0
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "chat", "namespace": "a1", "uid": DEPLOYMENT_UID, "generation": 2},
            "spec": {"replicas": 1, "template": template(config_hash)},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": n, "readyReplicas": n,
                       "conditions": conds}}


def replica_set(config_hash, *, owner=DEPLOYMENT_UID, image="llmos/runtime:1", name=None):
    t = template(config_hash, image)
    t["metadata"]["labels"]["pod-template-hash"] = "abc123"  # what the Deployment controller adds
    refs = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat", "uid": owner, "controller": True}] \
        if owner else []
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name or f"chat-{config_hash}", "namespace": "a1", "ownerReferences": refs},
            "spec": {"replicas": 1, "template": t}}


def pod(config_hash, ready=True):
    return {"metadata": {"name": f"chat-{config_hash}-x", "annotations": {ANNOTATION_CONFIG_HASH: config_hash}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def desired(config_hash):
    d = deployment(config_hash)
    d.pop("status")
    d["metadata"].pop("uid")
    return d


def test_a_complete_rollout_records_the_checksum_of_its_whole_template():
    current = deployment("old", complete=True)
    plan = plan_rollout(mdep(), desired("old"), RolloutFacts(current, pods=[pod("old")]))
    assert plan.phase == COMPLETE and plan.serving_template == "old"
    assert plan.serving_checksum == template_checksum(current) == template_checksum(replica_set("old"))
    # a store summary keeps the checksum of the template it dropped
    assert template_checksum({TEMPLATE_CHECKSUM: plan.serving_checksum}) == plan.serving_checksum


def _failed_roll(replica_sets, checksum, auto_rollback=True):
    facts = RolloutFacts(deployment("new", deadline=True), pods=[pod("old"), pod("new", ready=False)],
                         replica_sets=replica_sets, serving_template="old", serving_checksum=checksum)
    return plan_rollout(mdep(auto_rollback), desired("new"), facts)


def test_a_failed_rollout_rolls_back_to_the_replica_set_the_deployment_made():
    genuine = replica_set("old")
    plan = _failed_roll([genuine], template_checksum(deployment("old")))
    assert plan.phase == ROLLED_BACK, plan.message
    expected = copy.deepcopy(genuine["spec"]["template"])
    expected["metadata"]["labels"].pop("pod-template-hash")
    assert plan.deployment["spec"]["template"] == expected


@pytest.mark.parametrize("forged", [
    pytest.param(replica_set("old", owner=None, image="evil:1"), id="not-owned"),
    pytest.param(replica_set("old", owner="someone-else", image="evil:1"), id="owned-by-another"),
    pytest.param(replica_set("old", image="evil:1"), id="owner-reference-forged-template-changed"),
])
def test_a_forged_replica_set_is_never_rolled_back_to(forged):
    checksum = template_checksum(deployment("old"))
    plan = _failed_roll([forged], checksum)
    assert plan.phase == ROLLOUT_STOPPED and plan.deployment["spec"]["paused"] is True, plan.message
    assert plan.deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "llmos/runtime:1"
    # beside the genuine one (listed first or last), the genuine one is chosen
    for replica_sets in ([forged, replica_set("old", name="genuine")], [replica_set("old", name="genuine"), forged]):
        plan = _failed_roll(replica_sets, checksum)
        assert plan.phase == ROLLED_BACK
        assert plan.deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "llmos/runtime:1"


def test_without_a_recorded_checksum_the_rollout_stops_instead():
    """Status from before checksums were recorded (or none yet): nothing is trusted, the old pods keep serving."""
    plan = _failed_roll([replica_set("old")], None)
    assert plan.phase == ROLLOUT_STOPPED, plan.message


def test_the_previous_rollouts_deadline_does_not_fail_the_next_one():
    """A rollout stopped at its progress deadline, then a fixed revision applied: until the Deployment controller
    observes the new generation, the Deployment still says ProgressDeadlineExceeded. That is the old rollout's
    verdict, not the new one's (seen: the fixed revision marked failed and never rolled)."""
    current = deployment("good", deadline=True)
    current["metadata"]["generation"] = 3  # the template just applied; the status is still generation 2's
    facts = RolloutFacts(current, pods=[pod("old")], replica_sets=[replica_set("old")], serving_template="old",
                         serving_checksum=template_checksum(deployment("old")), failed_template="bad")
    plan = plan_rollout(mdep(auto_rollback=False), desired("good"), facts)
    assert plan.phase not in (ROLLED_BACK, ROLLOUT_STOPPED) and plan.failed_template == "bad", plan.message
    current["status"]["observedGeneration"] = 3  # observed, and still no progress: now it is this rollout's
    plan = plan_rollout(mdep(auto_rollback=False), desired("good"), facts)
    assert plan.phase == ROLLOUT_STOPPED and plan.failed_template == "good", plan.message
