"""Rendering the children of a Tenant, and what a released namespace keeps."""

import pytest

from llmos_operator.api import parse_object
from llmos_operator.config import config_from_yaml, default_config
from llmos_operator.render import render_released_namespace, render_tenant_children

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
    assert [q["metadata"]["namespace"] for q in objs["ResourceQuota"]] == ["a1", "a2"]
    assert [p["metadata"]["name"] for p in objs["NetworkPolicy"]] == ["llmos-tenant-isolation", "llmos-tenant-egress"] * 2
    (binding, _) = objs["RoleBinding"]
    assert "Role" not in objs  # the runtime's rights come from the chart's ClusterRole, bound per namespace
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "llmos-runtime"}
    assert binding["subjects"][0]["name"] == "llmos-runtime" and len(objs["ServiceAccount"]) == 2
    assert objs["ServiceAccount"][0]["automountServiceAccountToken"] is False
    for o in render_tenant_children(tenant({}), default_config()):
        assert "ownerReferences" not in o["metadata"]


def test_remote_code_label_only_where_the_platform_allows_it():
    plain = by_kind(render_tenant_children(tenant({}, ["a1"]), default_config()))["Namespace"][0]
    allowed = by_kind(render_tenant_children(tenant({}, ["a1"], {"allowRemoteCode": True}), default_config()))
    assert "llmos.dev/allow-remote-code" not in plain["metadata"]["labels"]
    assert allowed["Namespace"][0]["metadata"]["labels"]["llmos.dev/allow-remote-code"] == "true"


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


def test_resource_quota_is_what_the_ledger_reserves_in_that_namespace():
    cfg = config_from_yaml("""
gpuClasses:
  h100: {nodeLabels: {p: h100}}
  mi300: {nodeLabels: {p: mi300}, resourceName: amd.com/gpu}
""")
    objs = render_tenant_children(tenant({"h100": 8, "mi300": 8}), cfg, reserved={"a1": {"nvidia.com/gpu": 6}})
    q1, q2 = by_kind(objs)["ResourceQuota"]
    assert q1["spec"]["hard"] == {"requests.amd.com/gpu": "0", "requests.nvidia.com/gpu": "6"}
    # Nothing reserved in a2: zero, never the tenant's total copied into each namespace.
    assert q2["spec"]["hard"] == {"requests.amd.com/gpu": "0", "requests.nvidia.com/gpu": "0"}


def test_only_owned_namespaces():
    objs = render_tenant_children(tenant({"l4": 1}), default_config(), namespaces=["a2"])
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objs} == {"a2"}


def test_released_namespace_keeps_zero_gpus_and_no_ingress_unowned():
    ns, quota, policy = render_released_namespace("a1", "team-a", default_config())
    assert ns["metadata"]["labels"]["llmos.dev/released"] == "team-a"
    assert "llmos.dev/tenant" not in ns["metadata"]["labels"]
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "0"}
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for o in (ns, quota, policy):
        assert "ownerReferences" not in o["metadata"]
