"""Rendering the children of a Tenant."""

import pytest

from llmos_operator.api import parse_object
from llmos_operator.config import config_from_yaml, default_config
from llmos_operator.render import render_tenant_children

pytestmark = pytest.mark.unit


def tenant(quota, namespaces=("a1", "a2")):
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a"},
                         "spec": {"namespaces": list(namespaces), "quota": {"gpus": quota}}})


def by_kind(objs):
    out = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_per_namespace_children():
    objs = by_kind(render_tenant_children(tenant({"h100": 8, "l4": 4}), default_config()))
    assert [n["metadata"] for n in objs["Namespace"]] == [
        {"name": ns, "labels": {"llmos.dev/tenant": "team-a", "app.kubernetes.io/managed-by": "llmos"}}
        for ns in ("a1", "a2")]
    assert [q["metadata"]["namespace"] for q in objs["ResourceQuota"]] == ["a1", "a2"]
    assert objs["ResourceQuota"][0]["spec"] == {"hard": {"requests.nvidia.com/gpu": "12"}}
    assert [p["metadata"]["namespace"] for p in objs["NetworkPolicy"]] == ["a1", "a2"]
    (role, _), (binding, _) = objs["Role"], objs["RoleBinding"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    assert binding["subjects"][0]["name"] == "llmos-runtime" and len(objs["ServiceAccount"]) == 2
    for o in render_tenant_children(tenant({}), default_config()):
        assert "ownerReferences" not in o["metadata"]


def test_network_policy_admits_own_namespaces_and_gateways_only():
    (policy,) = by_kind(render_tenant_children(tenant({}, ["a1"]), default_config()))["NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"llmos.dev/tenant": "team-a"}}},
            {"namespaceSelector": {"matchLabels": {"llmos.dev/gateway": "true"}}},
        ]}],
    }


def test_resource_quota_per_extended_resource():
    cfg = config_from_yaml("""
gpuClasses:
  h100: {nodeLabels: {p: h100}}
  mi300: {nodeLabels: {p: mi300}, resourceName: amd.com/gpu}
""")
    (q,) = by_kind(render_tenant_children(tenant({"h100": 8, "unknown": 3}, ["a1"]), cfg))["ResourceQuota"]
    assert q["spec"]["hard"] == {"requests.amd.com/gpu": "0", "requests.nvidia.com/gpu": "8"}


def test_only_owned_namespaces():
    objs = render_tenant_children(tenant({"l4": 1}), default_config(), namespaces=["a2"])
    assert {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objs} == {"a2"}
