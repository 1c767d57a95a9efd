"""Each reconciler on the in-memory API (tests/support/memory_api.py), through the manager's public interface: queue
keys are handled, then what the API holds is checked. The real control plane runs the same code in
tests/integration; these pin the decisions without one."""

from __future__ import annotations

import pytest

from tests.support import builders
from tests.support.admission_world import World

pytestmark = pytest.mark.unit


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def world_with(quota: dict[str, int] | None = None) -> World:
    world = World()
    world.tenant("t", ["t-a"], quota or {"h100": 8})
    world.drain()
    return world


def test_tenant_reconciler_writes_its_children_as_its_own():
    world = world_with()
    ns = world.api.get("Namespace", "t-a")
    assert ns["metadata"]["labels"]["llmos.dev/tenant"] == "t"
    for kind, name in (("NetworkPolicy", "llmos-tenant-isolation"), ("NetworkPolicy", "llmos-tenant-egress"),
                       ("ServiceAccount", "llmos-runtime"), ("RoleBinding", "llmos-runtime-pods")):
        child = world.api.get(kind, name, "t-a")
        assert child is not None, (kind, name)
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-tenant-t"
    assert conditions(world.api.get("Tenant", "t"))["Ready"]["status"] == "True"


def test_a_tenant_child_in_the_way_is_left_alone_and_named():
    world = World()
    world.api.put(builders.namespace("t-a", "t"))
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "llmos-tenant-egress", "namespace": "t-a"},
              "spec": {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}}
    world.api.put(policy)
    world.tenant("t", ["t-a"], {"h100": 8})
    world.drain()
    kept = world.api.get("NetworkPolicy", "llmos-tenant-egress", "t-a")
    assert kept["spec"]["egress"] == [{}] and "ownerReferences" not in kept["metadata"]  # nothing written into it
    ready = conditions(world.api.get("Tenant", "t"))["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "ChildConflict"
    assert "NetworkPolicy llmos-tenant-egress exists and is not llmos's" in ready["message"]


def test_model_reconciler_reports_an_unsigned_model_only_where_the_tenant_allows_it():
    world = world_with()
    model = world.api.get("Model", "m", "t-a")
    assert conditions(model)["Verified"]["reason"] == "SignatureDisabled"
    world.tenant("t", ["t-a"], {"h100": 8}, policy={"allowUnsignedModels": False})
    world.drain()
    verified = conditions(world.api.get("Model", "m", "t-a"))["Verified"]
    assert verified["status"] == "False" and verified["reason"] != "SignatureDisabled"


def test_model_deployment_reconciler_renders_children_once_admitted():
    world = world_with()
    world.deploy("t-a", "chat", 2, 4, "h100")
    world.drain()
    deployment = world.api.get("Deployment", "chat", "t-a")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == "uid-mdep-t-a-chat"
    assert conditions(world.api.get("ModelDeployment", "chat", "t-a"))["QuotaAdmitted"]["status"] == "True"
    assert world.api.get("Tenant", "t")["status"]["reservations"]["t-a/chat"]["gpus"] == 8
    quota = world.api.get("ResourceQuota", "llmos-tenant-quota", "t-a")
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "8" and quota["spec"]["hard"]["requests.cpu"]


def test_one_quota_holds_the_ledgers_gpus_and_the_tenants_quota_and_follows_both():
    world = world_with()
    hard = world.api.get("ResourceQuota", "llmos-tenant-quota", "t-a")["spec"]["hard"]
    assert hard["requests.nvidia.com/gpu"] == "0" and hard["requests.cpu"] == "32"  # 16 of its own + 8 GPUs × 2
    world.deploy("t-a", "chat", 1, 4, "h100")
    world.drain()
    quota = world.api.get("ResourceQuota", "llmos-tenant-quota", "t-a")
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "4"
    tenant = world.api.get("Tenant", "t")
    tenant["spec"]["quota"]["cpu"] = "4"
    world.api.put(tenant)
    world.drain()
    hard = world.api.get("ResourceQuota", "llmos-tenant-quota", "t-a")["spec"]["hard"]
    assert (hard["requests.nvidia.com/gpu"], hard["requests.cpu"]) == ("4", "20")
    assert [q["metadata"]["name"] for q in world.api.list("ResourceQuota", "t-a")] == ["llmos-tenant-quota"]


def test_the_gpu_quota_of_before_issue_22_goes_only_where_the_tenant_owns_it():
    world = World()
    for ns, owner in (("t-a", [{"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "name": "t",
                                "uid": "uid-tenant-t", "controller": True}]), ("t-b", None)):
        world.api.put(builders.namespace(ns, "t"))
        world.api.put({"apiVersion": "v1", "kind": "ResourceQuota", "spec": {"hard": {"requests.nvidia.com/gpu": "2"}},
                       "metadata": {"name": "llmos-gpus", "namespace": ns, "ownerReferences": owner,
                                    "labels": {"app.kubernetes.io/managed-by": "llmos"}}})
    world.tenant("t", ["t-a", "t-b"], {"h100": 8})
    world.drain()
    assert world.api.get("ResourceQuota", "llmos-gpus", "t-a") is None
    assert world.api.get("ResourceQuota", "llmos-gpus", "t-b") is not None  # not the tenant's: left alone
    assert world.api.get("ResourceQuota", "llmos-tenant-quota", "t-b") is not None


def test_a_deployment_in_the_way_gets_no_write_and_no_gpus_until_it_is_gone():
    # Issue 18, attack 2: the tenant makes a Deployment named like the ModelDeployment first; the operator must not
    # merge its pod template (GPUs, under the operator's identity) into it.
    world = world_with()
    planted = builders.workload("Deployment", "t-a", "chat", labels={"app": "mine"}, replicas=0)
    planted["spec"]["template"]["spec"]["initContainers"] = [{"name": "inject", "image": "evil"}]
    world.api.put(planted)
    before = world.api.get("Deployment", "chat", "t-a")
    world.deploy("t-a", "chat", 1, 4, "h100")
    world.drain()
    assert world.api.get("Deployment", "chat", "t-a") == before  # not a field written
    mdep = world.api.get("ModelDeployment", "chat", "t-a")
    degraded, admitted = conditions(mdep)["Degraded"], conditions(mdep)["QuotaAdmitted"]
    assert degraded["status"] == "True" and degraded["reason"] == "ChildConflict"
    assert admitted["status"] == "False" and "Deployment chat exists and is not llmos's" in admitted["message"]
    assert "t-a/chat" not in (world.api.get("Tenant", "t")["status"].get("reservations") or {})
    world.api.delete("Deployment", "chat", "t-a")  # the tenant gives up
    world.handle("ModelDeployment", "t-a", "chat")  # its re-check (queued every 15 s while in conflict)
    world.drain()
    ours = world.api.get("Deployment", "chat", "t-a")
    assert ours["metadata"]["ownerReferences"][0]["uid"] == "uid-mdep-t-a-chat"
    assert "initContainers" not in ours["spec"]["template"]["spec"]
    assert world.api.get("Tenant", "t")["status"]["reservations"]["t-a/chat"]["gpus"] == 4


def test_an_intruder_is_counted_by_its_nodes_class_reported_and_removed():
    world = world_with({"h100": 8})
    world.deploy("t-a", "batch", 1, 4, "h100")
    world.drain()
    world.pod("t-a", "batch", "batch-0", 4)
    rs = world.api.get("ReplicaSet", "batch-rs", "t-a")
    rs["metadata"]["ownerReferences"] = []  # orphaned (issue 18, attack 1)
    world.api.put(rs)
    writes = world.handle("GPUPods", "t-a")
    assert ("delete", "Pod", "t-a", "batch-0") in writes and ("delete", "ReplicaSet", "t-a", "batch-rs") in writes
    assert "IntruderRemoved" in world.api.reasons("batch-0")
    world.drain()
    tenant = world.api.get("Tenant", "t")
    # Terminating (its finalizer holds it): still counted, as h100, next to batch's own reservation.
    assert tenant["status"]["reservations"]["t-a/batch-0#pod"]["class"] == "h100"
    assert tenant["status"]["usage"]["gpus"]["h100"] == 8
    world.pod("t-a", "batch", "batch-0", 4, event="DELETED")
    world.handle("GPUPods", "t-a")
    world.drain()
    assert "t-a/batch-0#pod" not in world.api.get("Tenant", "t")["status"]["reservations"]


def test_a_bare_gpu_pod_in_a_tenant_namespace_is_removed_and_the_tenant_says_so():
    world = world_with()
    world.node("node-h100")
    sneaky = builders.pod("t-a", "sneaky", gpus=2, node="node-h100")
    sneaky["metadata"]["finalizers"] = ["llmos.dev/test-hold"]  # terminates slowly, as a draining pod does
    world.api.put(sneaky)
    writes = world.handle("GPUPods", "t-a")
    assert ("delete", "Pod", "t-a", "sneaky") in writes
    world.drain()
    tenant = world.api.get("Tenant", "t")
    isolated = conditions(tenant)["Isolated"]
    assert isolated["status"] == "False" and "t-a/sneaky" in isolated["message"] and "removed" in isolated["message"]
    assert tenant["status"]["reservations"]["t-a/sneaky#pod"]["gpus"] == 2
    world.api.merge_patch("Pod", "sneaky", "t-a", {"metadata": {"finalizers": None}})
    world.api.delete("Pod", "sneaky", "t-a")
    world.handle("GPUPods", "t-a")
    world.drain()
    assert conditions(world.api.get("Tenant", "t"))["Isolated"]["status"] == "True"


def test_key_secrets_become_the_namespaces_key_table_of_hashes():
    import base64
    import json

    from llmos_runtime.keys import generate_key, key_hash

    world = world_with()
    key = generate_key()
    world.api.put({"apiVersion": "v1", "kind": "Secret", "type": "llmos.dev/api-key",
                   "metadata": {"name": "bot", "namespace": "t-a"},
                   "data": {"key": base64.b64encode(key.encode()).decode(),
                            "requestsPerMinute": base64.b64encode(b"60").decode()}})
    world.api.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "other",
                                                                                         "namespace": "t-a"}})
    world.deploy("t-a", "chat", 2, 1, "h100")
    world.drain()
    cm = world.api.get("ConfigMap", "llmos-api-keys", "t-a")
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "uid-tenant-t"  # the Tenant's child
    table = json.loads(cm["data"]["keys.json"])
    assert [k["hash"] for k in table["keys"]] == [key_hash(key)] and key not in cm["data"]["keys.json"]
    assert table["keys"][0]["limits"] == {"requestsPerMinute": 60} and table["tenant"] == "t"
    assert table["replicas"] == {"m": 2}


def test_with_a_parent_gateway_each_deployment_gets_its_http_route():
    from llmos_operator.config import config_from_yaml

    world = World(config_from_yaml("gateway: {parentRefs: [{name: public, namespace: gateways}]}"))
    world.tenant("t", ["t-a"], {"h100": 8})
    world.deploy("t-a", "chat", 1, 1, "h100")
    world.drain()
    route = world.api.get("HTTPRoute", "chat", "t-a")
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": "/t-a/chat/v1"}
    assert rule["filters"][0]["urlRewrite"]["path"] == {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v1"}
    assert rule["backendRefs"] == [{"name": "chat", "port": 8000}]
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"


def test_a_terminating_namespace_of_a_deleted_tenant_loses_its_label_and_nothing_loops():
    """The Tenant and its namespace deleted together (`kubectl delete -k`): nothing may be created in the namespace,
    but its tenant label goes, else admission wakes the gone Tenant for it again and again (a hot loop seen in CI)."""
    world = world_with()
    ns = world.api.get("Namespace", "t-a")
    ns["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ns["status"] = {"phase": "Terminating"}
    world.api.put(ns)
    world.api.delete("Tenant", "t")
    world.drain(rounds=200)  # a loop would not drain
    labels = world.api.get("Namespace", "t-a")["metadata"]["labels"]
    assert "llmos.dev/tenant" not in labels and labels["llmos.dev/released"] == "t", labels
    assert world.api.get("ResourceQuota", "llmos-released-gpus", "t-a") is None  # nothing created in it


def test_a_models_trust_configmap_is_created_once_while_the_watch_lags():
    """The deployments of one Model share its trust ConfigMap: the second one written before the watch brought the
    first's create neither creates it again (refused, and charged to the namespace's ConfigMap quota) nor reads it."""
    from llmos_operator.api.names import LABEL_MODEL
    from llmos_operator.controller.children import ChildWriter

    world = world_with()
    notify = world.api._notify
    world.api._notify = lambda kind, event, obj: None if kind == "ConfigMap" else notify(kind, event, obj)  # lag
    writer = ChildWriter(world.manager.ctx)
    model = world.api.get("Model", "m", "t-a")
    trust = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"model.sig": "bundle"},
             "metadata": {"name": "m-trust-1", "namespace": "t-a", "labels": {LABEL_MODEL: "m"}}}
    before = len(world.api.writes)
    writer.apply(trust, model)
    writer.apply(trust, model)  # a second deployment of the Model, the same rendering
    changed = {**trust, "data": {"model.sig": "another"}}
    writer.apply(changed, model)  # a new rendering: written over ours, not created
    assert [w[0] for w in world.api.writes[before:]] == ["create", "replace"]
    world.api.delete("ConfigMap", "m-trust-1", "t-a")  # gone meanwhile: the next write goes by the store again
    with pytest.raises(Exception, match="deleted or replaced"):
        writer.apply(trust, model)
    writer.apply(trust, model)
    assert world.api.writes[-1][0] == "create"


def test_the_api_keys_table_is_written_by_the_store_without_a_live_read():
    """After a restart the namespace's key table is replaced as the watched store shows it (no GET first); while the
    watch has not brought that write, the next goes by it (not created again: refused and charged to the quota)."""
    import base64

    from llmos_operator.controller.api_keys import ApiKeysReconciler
    from llmos_runtime.keys import generate_key

    world = world_with()
    assert world.api.get("ConfigMap", "llmos-api-keys", "t-a") is not None
    reads: list[tuple] = []
    live_get = world.manager.ctx.kube.get
    world.manager.ctx.kube.get = lambda kind, name, ns=None: reads.append((kind, name)) or live_get(kind, name, ns)
    restarted = ApiKeysReconciler(world.manager.ctx)

    def add_key(name: str) -> None:
        world.api.put({"apiVersion": "v1", "kind": "Secret", "type": "llmos.dev/api-key",
                       "metadata": {"name": name, "namespace": "t-a"},
                       "data": {"key": base64.b64encode(generate_key().encode()).decode()}})

    before = len(world.api.writes)
    add_key("bot")
    restarted.reconcile("t-a")
    notify = world.api._notify
    world.api._notify = lambda kind, event, obj: None if kind == "ConfigMap" else notify(kind, event, obj)  # lag
    add_key("other")
    restarted.reconcile("t-a")
    assert [w[:2] for w in world.api.writes[before:] if w[1] == "ConfigMap"] == [("replace", "ConfigMap")] * 2
    assert ("ConfigMap", "llmos-api-keys") not in reads
