"""Tenant isolation, the operator's side (issue 9): what a Tenant may claim, what it may serve, what is left when it
goes. The cluster's side (admission policies, RBAC, tenant credentials) is in test_isolation_policies.py.

The platform's actions (Tenants, namespace annotations) use the cluster admin, as a platform team would; the
tenant's actions use the tenant's own token where `tenant_objects` is used."""

from __future__ import annotations

import uuid

import pytest
from kubernetes import client

from tests.integration.conftest import Objects, deployment_exists
from tests.integration.test_model_verification import signed_model  # noqa: F401 — a fixture
from tests.support.tenant import make_user
from tests.support.waiting import wait_for

# Meets Pod Security `restricted` (enforced in tenant namespaces), so only the GPU quota can refuse it.
GPU_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
}


@pytest.fixture
def as_tenant(cluster, namespace, objects, tmp_path):
    """Objects made with the tenant's own token (a ServiceAccount bound to `admin` in the test namespace only);
    Tenants and namespace annotations stay the platform's (cluster admin)."""
    user = make_user(cluster.api, cluster.name, f"{namespace[:50]}-u", "tenant-admin", admin_of=[namespace],
                     workdir=tmp_path)
    tenant_objects = Objects(cluster.api, namespace, tenant_api=user.api)
    yield tenant_objects
    tenant_objects.cleanup()
    user.close()
    client.CoreV1Api(cluster.api).delete_namespace(f"{namespace[:50]}-u")


def _labels(core, ns: str) -> dict:
    try:
        return core.read_namespace(ns).metadata.labels or {}
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def _extra_namespace(namespace: str, suffix: str) -> str:
    return f"{namespace[:50]}-{suffix}"


def test_control_a_tenant_serves_a_signed_model_with_its_own_credentials(as_tenant, namespace, cluster,
                                                                          signed_model):
    from tests.integration.test_model_verification import _bundle_configmap, _signed

    as_tenant.tenant(policy={}, trustedKeys=[{"name": "release", "publicKey": signed_model["release"]}])
    _bundle_configmap(as_tenant.tenant_core, namespace, "m-sig", signed_model["bundle"])
    _signed(as_tenant)
    as_tenant.deployment("d", replicas=2)
    as_tenant.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
    assert as_tenant.get("models", "m")["status"]["signer"] == "release"


def test_unsigned_models_are_served_only_where_the_platform_allows(as_tenant, namespace, cluster):
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    as_tenant.tenant(policy={})  # the default: every model must verify
    as_tenant.model(policy="Disabled")
    cond = as_tenant.wait_condition("models", "m", "Verified", "False", "SignatureRequired")
    assert "allowUnsignedModels" in cond["message"]
    as_tenant.deployment("d")
    as_tenant.wait_condition("modeldeployments", "d", "QuotaAdmitted", "False", "ModelNotVerified")
    assert not deployment_exists(apps, namespace, "d")
    assert not as_tenant.get("tenants", namespace)["status"].get("reservations")

    as_tenant.patch("tenants", namespace, {"spec": {"policy": {"allowUnsignedModels": True}}})
    as_tenant.wait_condition("models", "m", "Verified", "False", "SignatureDisabled")
    as_tenant.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=m").items
    assert any(e.type == "Warning" and e.reason == "SignatureDisabled" for e in events)


def test_an_image_outside_the_allowed_prefixes_gets_no_gpus(as_tenant, namespace, cluster):
    apps = client.AppsV1Api(cluster.api)
    as_tenant.tenant()
    as_tenant.model()
    as_tenant.deployment("d", engine={"image": "evil.example/miner:1"})
    cond = as_tenant.wait_condition("modeldeployments", "d", "QuotaAdmitted", "False", "ImageNotAllowed")
    assert "spec.engine.image evil.example/miner:1" in cond["message"]
    assert not deployment_exists(apps, namespace, "d")
    assert not as_tenant.get("tenants", namespace)["status"].get("reservations")

    as_tenant.patch("tenants", namespace, {"spec": {"policy": {"allowUnsignedModels": True,
                                                             "allowedImages": ["evil.example/"]}}})
    as_tenant.wait_condition("modeldeployments", "d", "QuotaAdmitted", "True")
    wait_for(lambda: deployment_exists(apps, namespace, "d"), message="the allowed image deployed")


def test_a_tenant_cannot_claim_cluster_operator_or_foreign_namespaces(objects, namespace, cluster):
    core = client.CoreV1Api(cluster.api)
    with pytest.raises(client.ApiException) as refused:
        objects.tenant(namespaces=["kube-system"], adopt=False)
    assert refused.value.status == 422 and "spec.namespaces" in refused.value.body
    before = _labels(core, "kube-system")

    # The test's namespace exists already and the platform did not mark it for adoption.
    objects.tenant(namespaces=[namespace, "llmos-system"], adopt=False)
    cond = objects.wait_condition("tenants", namespace, "NamespacesReady", "False", "NamespaceRefused")
    assert f"namespace {namespace} already exists" in cond["message"] and "llmos-system" in cond["message"]
    assert objects.condition("tenants", namespace, "Ready")["status"] == "False"
    assert "llmos.dev/tenant" not in _labels(core, namespace)
    assert not core.list_namespaced_resource_quota(namespace).items
    assert _labels(core, "kube-system") == before

    core.patch_namespace(namespace, {"metadata": {"annotations": {"llmos.dev/adopt": namespace}}})
    objects.patch("tenants", namespace, {"spec": {"namespaces": [namespace]}})
    objects.wait_condition("tenants", namespace, "Ready", "True")
    assert _labels(core, namespace)["llmos.dev/tenant"] == namespace


def test_deleting_a_tenant_leaves_its_namespaces_without_gpus_or_ingress(as_tenant, namespace, cluster):
    core, apps, net = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api), client.NetworkingV1Api(cluster.api)
    as_tenant.tenant()
    as_tenant.model()
    as_tenant.deployment("d", replicas=2)
    as_tenant.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)

    as_tenant.delete("tenants", namespace)
    wait_for(lambda: _labels(core, namespace).get("llmos.dev/released") == namespace,
             message="the namespace marked released")
    assert "llmos.dev/tenant" not in _labels(core, namespace)
    wait_for(lambda: not deployment_exists(apps, namespace, "d"), message="llmos's Deployment removed")
    # The admission pass may remove the Deployment (no tenant) before the release is done: wait for its last step.
    wait_for(lambda: any(e.reason == "TenantReleased" for e in core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={namespace}").items), message="the TenantReleased Event")
    quota = core.read_namespaced_resource_quota("llmos-released-gpus", namespace)
    assert quota.spec.hard == {"requests.nvidia.com/gpu": "0"} and not quota.metadata.owner_references
    deny = net.read_namespaced_network_policy("llmos-released-deny-ingress", namespace)
    assert deny.spec.policy_types == ["Ingress"] and not deny.spec.ingress
    names = {p.metadata.name for p in net.list_namespaced_network_policy(namespace).items}
    assert names == {"llmos-released-deny-ingress"}  # the tenant's own policies went with it
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={namespace}").items
    assert any(e.reason == "TenantReleased" for e in events)
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, {"metadata": {"name": "gpu"}, "spec": GPU_POD})
    # Refused twice over: the chart's GPU policy covers released namespaces, and the zero quota stands behind it.
    assert refused.value.status == 403
    assert "exceeded quota" in refused.value.body or "use a ModelDeployment" in refused.value.body
    as_tenant.wait_condition("modeldeployments", "d", "QuotaAdmitted", "False", "NoTenant")


def test_a_namespace_given_up_is_released_and_the_rest_kept(objects, namespace, cluster):
    core = client.CoreV1Api(cluster.api)
    extra = _extra_namespace(namespace, uuid.uuid4().hex[:4])
    try:
        objects.tenant(namespaces=[namespace, extra])  # llmos creates `extra`
        wait_for(lambda: _labels(core, extra).get("llmos.dev/tenant") == namespace, message="extra namespace made")
        objects.patch("tenants", namespace, {"spec": {"namespaces": [namespace]}})
        wait_for(lambda: _labels(core, extra).get("llmos.dev/released") == namespace, message="extra released")
        assert _labels(core, namespace).get("llmos.dev/tenant") == namespace
        # Listing it again takes it back (llmos made it for this tenant).
        objects.patch("tenants", namespace, {"spec": {"namespaces": [namespace, extra]}})
        wait_for(lambda: _labels(core, extra).get("llmos.dev/tenant") == namespace, message="extra taken back")
        wait_for(lambda: not [q for q in core.list_namespaced_resource_quota(extra).items
                              if q.metadata.name == "llmos-released-gpus"], message="release quota removed")
    finally:
        core.delete_namespace(extra)


def test_a_quota_lowered_below_use_admits_nothing_new_and_keeps_pods_replaceable(as_tenant, namespace, cluster):
    core = client.CoreV1Api(cluster.api)
    as_tenant.tenant(gpus={"h100": 8})
    as_tenant.model()
    as_tenant.deployment("big", replicas=2, count=2)
    as_tenant.wait_condition("modeldeployments", "big", "Ready", "True", timeout=60)

    as_tenant.patch("tenants", namespace, {"spec": {"quota": {"gpus": {"h100": 2}}}})
    cond = as_tenant.wait_condition("tenants", namespace, "OverQuota", "True")
    assert "h100 4/2" in cond["message"]
    assert as_tenant.condition("tenants", namespace, "Ready")["reason"] == "OverQuota"
    as_tenant.deployment("small", count=1)
    as_tenant.wait_condition("modeldeployments", "small", "QuotaAdmitted", "False", "QuotaExceeded")

    # A running pod of the over-quota deployment can still be replaced: the backstop follows the ledger.
    selector = "llmos.dev/model-deployment=big"
    victim = core.list_namespaced_pod(namespace, label_selector=selector).items[0].metadata.name
    core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)

    def replaced():
        pods = [p for p in core.list_namespaced_pod(namespace, label_selector=selector).items
                if p.metadata.name != victim and p.metadata.deletion_timestamp is None
                and p.status.phase == "Running"]
        return len(pods) == 2

    wait_for(replaced, timeout=60, message="the deleted pod replaced")
    as_tenant.wait_condition("modeldeployments", "big", "Ready", "True", timeout=60)
