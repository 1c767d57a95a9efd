"""Rendering the children of a Tenant, and what a released namespace keeps."""

import pytest

from llmos_operator.api import parse_object
from llmos_operator.config import config_from_yaml, default_config
from llmos_operator.render import render_released_namespace, render_tenant_children
from llmos_operator.render.tenant import TENANT_CHILDREN

pytestmark = pytest.mark.unit


def tenant(quota, namespaces=("a1", "a2"), policy=None):
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a"},
                         "spec": {"namespaces": list(namespaces), "quota": {"gpus": quota}, "policy": policy or {}}})


def by_kind(objs):
    out = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_per_namespace_children():
    objs = by_kind(render_tenant_children(tenant({"h100": 8, "l4": 4}), default_config()))
    assert [n["metadata"] for n in objs["Namespace"]] == [
        {"name": ns, "labels": {"llmos.dev/tenant": "team-a", "pod-security.kubernetes.io/enforce": "restricted",
                                "pod-security.kubernetes.io/enforce-version": "latest"}}
        for ns in ("a1", "a2")]
    assert [(q["metadata"]["namespace"], q["metadata"]["name"]) for q in objs["ResourceQuota"]] == [
        ("a1", "llmos-tenant-quota"), ("a2", "llmos-tenant-quota")]  # one: each pod create updates each quota's status
    assert [r["metadata"]["name"] for r in objs["LimitRange"]] == ["llmos-tenant-limits"] * 2
    assert [p["metadata"]["name"] for p in objs["NetworkPolicy"]] == ["llmos-tenant-isolation", "llmos-tenant-egress"] * 2
    (binding, _) = objs["RoleBinding"]
    assert "Role" not in objs  # the runtime's rights come from the chart's ClusterRole, bound per namespace
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "llmos-runtime"}
    assert binding["subjects"][0]["name"] == "llmos-runtime" and len(objs["ServiceAccount"]) == 2
    assert objs["ServiceAccount"][0]["automountServiceAccountToken"] is False
    for o in render_tenant_children(tenant({}), default_config()):
        assert "ownerReferences" not in o["metadata"]
        if o["kind"] != "Namespace":  # the chart's admission policies keep llmos's objects the operator's
            assert o["metadata"]["labels"] == {"llmos.dev/tenant": "team-a", "app.kubernetes.io/managed-by": "llmos"}
    # What a release removes is every child but the namespace, the key table (controller/api_keys.py writes it) and
    # the GPU quota of before issue 22.
    children = {(o["kind"], o["metadata"]["name"]) for o in render_tenant_children(tenant({}, ["a1"]), default_config())}
    assert children - {("Namespace", "a1")} | {("ConfigMap", "llmos-api-keys"), ("ResourceQuota", "llmos-gpus")} == set(
        TENANT_CHILDREN)


def test_remote_code_label_only_where_the_platform_allows_it():
    plain = by_kind(render_tenant_children(tenant({}, ["a1"]), default_config()))["Namespace"][0]
    allowed = by_kind(render_tenant_children(tenant({}, ["a1"], {"allowRemoteCode": True}), default_config()))
    assert "llmos.dev/allow-remote-code" not in plain["metadata"]["labels"]
    assert allowed["Namespace"][0]["metadata"]["labels"]["llmos.dev/allow-remote-code"] == "true"


def test_exec_label_only_where_the_platform_allows_it():
    plain = by_kind(render_tenant_children(tenant({}, ["a1"]), default_config()))["Namespace"][0]
    allowed = by_kind(render_tenant_children(tenant({}, ["a1"], {"allowExec": True}), default_config()))
    assert "llmos.dev/allow-exec" not in plain["metadata"]["labels"]
    assert allowed["Namespace"][0]["metadata"]["labels"]["llmos.dev/allow-exec"] == "true"


def _tenant_quota(objs):
    return next(o for o in objs if o["metadata"]["name"] == "llmos-tenant-quota")["spec"]["hard"]


def test_tenant_quota_defaults_cover_the_mtb_keys_and_forbid_node_ports():
    hard = _tenant_quota(render_tenant_children(tenant({}, ["a1"]), default_config()))
    assert hard == {"requests.nvidia.com/gpu": "0", "requests.cpu": "16", "requests.memory": "64Gi", "requests.ephemeral-storage": "100Gi",
                    "pods": "50", "services": "50", "services.nodeports": "0", "services.loadbalancers": "0",
                    "configmaps": "100", "secrets": "100", "persistentvolumeclaims": "20",
                    "replicationcontrollers": "10", "resourcequotas": "4"}
    # kubectl-mtb's configure_ns_quotas and configure_ns_object_quota look for these names in the quota's keys.
    for word in ("cpu", "memory", "ephemeral-storage", "pods", "services", "replicationcontrollers",
                 "resourcequotas", "secrets", "configmaps", "persistentvolumeclaims", "services.nodeports",
                 "services.loadbalancers"):
        assert any(word in key for key in hard), word


def test_tenant_quota_adds_what_model_pods_may_hold_under_the_gpu_quota():
    """16 + 4 GPUs: up to 20 model pods of 2 CPUs and 16 GiB per GPU on top of the tenant's own budget, so that a
    deployment the GPU quota admitted is never refused by this quota."""
    spec = {"gpus": {"h100": 16, "l4": 4}, "cpu": "500m", "memory": 2**30, "pods": 3, "configMaps": 7,
            "loadBalancers": 1}
    objs = render_tenant_children(parse_object({
        "apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a"},
        "spec": {"namespaces": ["a1"], "quota": spec}}), default_config())
    hard = _tenant_quota(objs)
    assert hard["requests.cpu"] == "40500m"
    assert hard["requests.memory"] == f"{1 + 20 * 16}Gi"
    assert hard["requests.ephemeral-storage"] == f"{100 + 20}Gi"  # default 100Gi + the default request per pod
    assert (hard["pods"], hard["configmaps"], hard["services.loadbalancers"]) == ("23", "7", "1")
    # Where the runtime asks for no CPU or memory, a pod gets the LimitRange's default request.
    cfg = config_from_yaml("runtime: {cpuPerGPU: 0, memoryGiBPerGPU: 0}\ntenancy: {defaultRequests: {cpu: 250m}}")
    hard = _tenant_quota(render_tenant_children(tenant({"h100": 4}, ["a1"]), cfg))
    assert (hard["requests.cpu"], hard["requests.memory"]) == ("17", f"{64 * 1024 + 4 * 128}Mi")


def test_limit_range_gives_default_requests_and_no_limits():
    cfg = config_from_yaml("tenancy: {defaultRequests: {cpu: 50m, memory: 64Mi, ephemeralStorage: 2Gi}}")
    (limits,) = by_kind(render_tenant_children(tenant({}, ["a1"]), cfg))["LimitRange"]
    assert limits["spec"] == {"limits": [{"type": "Container", "defaultRequest": {
        "cpu": "50m", "memory": "64Mi", "ephemeral-storage": "2Gi"}}]}


def test_network_policy_admits_own_namespaces_gateways_and_the_operator_to_the_health_port_only():
    (policy, _) = by_kind(render_tenant_children(tenant({}, ["a1"]), default_config()))["NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [
                {"namespaceSelector": {"matchLabels": {"llmos.dev/tenant": "team-a"}}},
                {"namespaceSelector": {"matchLabels": {"llmos.dev/gateway": "true"}}},
            ]},
            # the autoscaler reads the engine's load on the runtime's health port (/metrics), nothing else
            {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "llmos-system"}},
                       "podSelector": {"matchLabels": {"app.kubernetes.io/name": "llmos-operator"}}}],
             "ports": [{"protocol": "TCP", "port": 8081}]},
        ],
    }


def test_egress_allows_dns_own_namespaces_and_outside_only():
    (_, egress) = by_kind(render_tenant_children(tenant({}, ["a1"]), default_config()))["NetworkPolicy"]
    assert egress["spec"]["policyTypes"] == ["Egress"]
    dns, own, world = egress["spec"]["egress"]
    assert dns["ports"] == [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    assert own == {"to": [{"namespaceSelector": {"matchLabels": {"llmos.dev/tenant": "team-a"}}}]}
    block = world["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    assert "169.254.0.0/16" in block["except"] and "10.0.0.0/8" in block["except"]
    cfg = config_from_yaml("network: {clusterCIDRs: [100.64.0.0/10]}")
    (_, egress) = by_kind(render_tenant_children(tenant({}, ["a1"]), cfg))["NetworkPolicy"]
    assert egress["spec"]["egress"][2]["to"][0]["ipBlock"]["except"] == ["169.254.0.0/16", "100.64.0.0/10"]


def test_the_quota_allows_the_gpus_the_ledger_reserves_in_that_namespace():
    cfg = config_from_yaml("""
gpuClasses:
  h100: {nodeLabels: {p: h100}}
  mi300: {nodeLabels: {p: mi300}, resourceName: amd.com/gpu}
""")
    objs = render_tenant_children(tenant({"h100": 8, "mi300": 8}), cfg, reserved={"a1": {"nvidia.com/gpu": 6}})
    q1, q2 = [{k: v for k, v in q["spec"]["hard"].items() if k.endswith("gpu")} for q in by_kind(objs)["ResourceQuota"]]
    assert q1 == {"requests.amd.com/gpu": "0", "requests.nvidia.com/gpu": "6"}
    # Nothing reserved in a2: zero, never the tenant's total copied into each namespace.
    assert q2 == {"requests.amd.com/gpu": "0", "requests.nvidia.com/gpu": "0"}


def test_only_owned_namespaces():
    objs = render_tenant_children(tenant({"l4": 1}), default_config(), namespaces=["a2"])
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objs} == {"a2"}


def test_released_namespace_keeps_zero_gpus_and_no_ingress_unowned():
    quota, policy, ns = render_released_namespace("a1", "team-a", default_config())
    assert ns["kind"] == "Namespace"  # last: once the namespace reads released, its quota and policy exist
    assert ns["metadata"]["labels"]["llmos.dev/released"] == "team-a"
    assert "llmos.dev/tenant" not in ns["metadata"]["labels"]
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "0"}
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for o in (ns, quota, policy):
        assert "ownerReferences" not in o["metadata"]
    assert quota["metadata"]["name"].startswith("llmos-released-") and policy["metadata"]["name"].startswith(
        "llmos-released-")  # the chart protects every name with that prefix
