"""GPU pods of tenant namespaces (core/gpu_pods.py): accounted to an admitted deployment only through llmos's own
controller chain, checked by uid; everything else holding GPUs is a stray counted by its node's class, and a stray
that is not leaving by itself is an intruder (issue 18)."""

from __future__ import annotations

import pytest

from llmos_operator.config import default_config
from llmos_operator.core.gpu_pods import ACCOUNTED, DEPARTING, INTRUDER, UNKNOWN, account, gpu_class_of, verdict
from llmos_operator.core.quota import Request, Stray, TenantInfo, admit, parse_time
from tests.support import builders

pytestmark = pytest.mark.unit

CFG = default_config()
NS = "team-a"
LLMOS = {"llmos.dev/model-deployment": "batch", "app.kubernetes.io/managed-by": "llmos"}
H100_NODE = builders.gpu_node("h1", product="NVIDIA-H100-80GB-HBM3")
L4_NODE = builders.gpu_node("l1", product="NVIDIA-L4", gpus=4)


def with_uid(obj: dict, uid: str) -> dict:
    obj["metadata"]["uid"] = uid
    return obj


def chain(mdep_uid: str = "m1", *, rs_owner: bool = True, dep_owner: bool = True, dep_labels: dict | None = None):
    mdep = {"kind": "ModelDeployment", "metadata": {"name": "batch", "uid": mdep_uid}}
    dep = with_uid(builders.workload("Deployment", NS, "batch", labels=dep_labels if dep_labels is not None
                                     else LLMOS, owner=builders.owner_ref(mdep, "llmos.dev/v1alpha1")
                                     if dep_owner else None), "d1")
    rs = with_uid(builders.workload("ReplicaSet", NS, "batch-rs", labels=LLMOS,
                                    owner=builders.owner_ref(dep, "apps/v1") if rs_owner else None), "r1")
    pod = with_uid(builders.pod(NS, "batch-rs-x", gpus=4, labels=LLMOS, node="h1",
                                owner=builders.owner_ref(rs, "apps/v1")), "p1")
    objects = {("Deployment", "batch"): dep, ("ReplicaSet", "batch-rs"): rs}
    return pod, lambda kind, name: objects.get((kind, name))


def test_a_pod_of_llmos_chain_is_accounted_to_its_live_deployment():
    pod, lookup = chain()
    seen = verdict(pod, lookup, {f"{NS}/batch": "m1"})
    assert seen.kind == ACCOUNTED and seen.deployment_key == f"{NS}/batch"


def test_a_pod_of_a_deleted_or_recreated_deployment_is_departing_not_accounted():
    pod, lookup = chain(mdep_uid="old")
    assert verdict(pod, lookup, {f"{NS}/batch": "new"}).kind == DEPARTING  # same name, another uid
    assert verdict(pod, lookup, {}).kind == DEPARTING
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert verdict(pod, lookup, {f"{NS}/batch": "old"}).kind == DEPARTING


def test_an_orphaned_replica_set_makes_intruders():
    # Issue 18, attack 1: the tenant orphans llmos's ReplicaSet; its pod keeps running, owned by nothing llmos deletes.
    pod, lookup = chain(rs_owner=False)
    seen = verdict(pod, lookup, {f"{NS}/batch": "m1"})
    assert seen.kind == INTRUDER and "orphaned" in seen.why


@pytest.mark.parametrize("make", [
    lambda: chain(dep_labels={}),  # a Deployment without llmos's labels
    lambda: chain(dep_owner=False),  # llmos's labels, but no ModelDeployment controls it
])
def test_a_deployment_that_is_not_llmos_makes_intruders(make):
    pod, lookup = make()
    assert verdict(pod, lookup, {f"{NS}/batch": "m1"}).kind == INTRUDER


def test_a_bare_pod_or_another_controller_is_an_intruder():
    bare = builders.pod(NS, "p", gpus=1, node="h1")
    assert verdict(bare, lambda k, n: None, {}).kind == INTRUDER
    rc = builders.pod(NS, "p", gpus=1, node="h1", owner={"kind": "ReplicationController", "name": "rc", "uid": "x",
                                                         "controller": True})
    seen = verdict(rc, lambda k, n: None, {})
    assert seen.kind == INTRUDER and "ReplicationController rc" in seen.why


def test_a_link_not_seen_yet_is_unknown_until_read_live():
    pod, _ = chain()
    assert verdict(pod, lambda k, n: None, {f"{NS}/batch": "m1"}).kind == UNKNOWN
    seen = verdict(pod, lambda k, n: None, {f"{NS}/batch": "m1"}, complete=True)
    assert seen.kind == DEPARTING and "gone" in seen.why  # the garbage collector removes it


def test_the_class_of_a_stray_is_its_nodes_or_what_it_asks_for():
    nodes = {"h1": H100_NODE["metadata"]["labels"], "l1": L4_NODE["metadata"]["labels"]}
    on_l4 = builders.pod(NS, "p", gpus=1, node="l1")
    assert gpu_class_of(on_l4, CFG, nodes.get) == "l4"
    asking = builders.pod(NS, "p", gpus=1, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    assert gpu_class_of(asking, CFG, nodes.get) == "h100"
    assert gpu_class_of(builders.pod(NS, "p", gpus=1), CFG, nodes.get) is None  # both classes share nvidia.com/gpu


def test_accounting_counts_strays_and_lists_intruders():
    pod, lookup = chain(rs_owner=False)
    nodes = {"h1": H100_NODE["metadata"]["labels"]}
    ours, ours_lookup = chain()
    ours["metadata"]["name"] = "batch-rs-y"
    accounting = account([pod], tenant_of=lambda ns: "t", lookup_in=lambda ns: lookup,
                         live_deployments={f"{NS}/batch": "m1"}, config=CFG, node_labels=nodes.get)
    assert accounting.held == {}
    assert accounting.strays == [Stray(NS, "batch-rs-x", "p1", "t", "h100", 4)]
    assert [i.name for i in accounting.intruders] == ["batch-rs-x"]
    accounting = account([ours], tenant_of=lambda ns: "t", lookup_in=lambda ns: ours_lookup,
                         live_deployments={f"{NS}/batch": "m1"}, config=CFG, node_labels=nodes.get)
    assert accounting.held == {f"{NS}/batch": ("t", 4)} and not accounting.strays and not accounting.intruders


def _request(name: str, uid: str, gpu_class: str, count: int, created: str = "2026-01-01T00:00:00Z") -> Request:
    return Request(namespace=NS, name=name, uid=uid, tenant="t", gpu_class=gpu_class, replicas=1,
                   gpus_per_replica=count, created=parse_time(created), generation=1)


def test_twelve_h100_on_a_quota_of_eight_cannot_happen():
    # Issue 18, attack 1, in numbers: batch (h100×4) is orphaned and deleted, re-created as l4×1; a queued h100×4
    # waits. The 4 orphaned H100s stay counted as h100 (their node's class), so the queued one is not admitted.
    tenants = {"t": TenantInfo(name="t", gpus={"h100": 8, "l4": 4})}
    first = admit([_request("batch", "old", "h100", 4), _request("big", "b", "h100", 4, "2026-01-01T00:00:01Z")],
                  {}, tenants, {"h100", "l4"})
    assert first.decisions["team-a/batch"].admitted and first.decisions["team-a/big"].admitted
    waiting = _request("queued", "q", "h100", 4, "2026-01-01T00:00:02Z")
    orphan = Stray(NS, "batch-rs-x", "p1", "t", "h100", 4)
    second = admit([_request("batch", "new", "l4", 1), _request("big", "b", "h100", 4), waiting], first.ledger,
                   tenants, {"h100", "l4"}, strays=[orphan])
    assert not second.decisions["team-a/queued"].admitted
    assert second.usage("t") == {"h100": 8, "l4": 1}
    assert second.ledger["team-a/batch-rs-x#pod"] == {"class": "h100", "gpus": 4, "uid": "p1", "kind": "pod"}
    # The pod is gone (removed as an intruder): the queue moves.
    third = admit([_request("batch", "new", "l4", 1), _request("big", "b", "h100", 4), waiting], second.ledger,
                  tenants, {"h100", "l4"})
    assert third.decisions["team-a/queued"].admitted and "team-a/batch-rs-x#pod" not in third.ledger


def test_a_releasing_entry_never_changes_class():
    tenants = {"t": TenantInfo(name="t", gpus={"h100": 8, "l4": 4})}
    held = admit([_request("batch", "u", "h100", 4)], {}, tenants, {"h100", "l4"})
    # Scaled to zero while its pod still runs: #releasing, of the deployment's class.
    scaled = Request(namespace=NS, name="batch", uid="u", tenant="t", gpu_class="h100", replicas=0,
                     gpus_per_replica=4, generation=2)
    out = admit([scaled], held.ledger, tenants, {"h100", "l4"}, held_by_pods={f"{NS}/batch": ("t", 4)})
    assert out.ledger[f"{NS}/batch#releasing"]["class"] == "h100"
