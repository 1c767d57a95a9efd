"""Signature verification in the operator, on the real control plane: a Model is Verified only when its OMS bundle
carries a valid signature by a key its tenant trusts; deployments of unverified Models reserve no GPU; key rotation
verifies and un-verifies."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from tests.integration.conftest import deployment_exists
from tests.support.waiting import wait_for


def _keypair() -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture(scope="module")
def signed_model(tmp_path_factory):
    """A small model directory signed by the 'release' key; also an unrelated 'stranger' key."""
    from llmos_signing import sign_model

    model_dir = tmp_path_factory.mktemp("weights") / "tiny"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (model_dir / "sub" / "model.safetensors").write_bytes(b"\x01" * 10000)
    release_private, release_public = _keypair()
    stranger_private, stranger_public = _keypair()
    bundle = sign_model(model_dir, release_private)
    statement = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
    return {
        "bundle": bundle, "root": statement["subject"][0]["digest"]["sha256"], "release": release_public,
        "stranger": stranger_public, "stranger_bundle": sign_model(model_dir, stranger_private,
                                                                    signature_path=model_dir.parent / "other.sig"),
    }


def _bundle_configmap(core: client.CoreV1Api, namespace: str, name: str, bundle: bytes) -> None:
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name), binary_data={"model.sig": base64.b64encode(bundle).decode()}))


@contextmanager
def _key_secret(core: client.CoreV1Api, namespace: str, public_pem: str) -> Iterator[str]:
    """A Secret ``keys-<namespace>`` holding a trusted public key, in the operator's own namespace (llmos-system for
    the operator under test; a Tenant's secretRef may name no other), deleted afterwards."""
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="llmos-system")))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    name = f"keys-{namespace}"
    core.create_namespaced_secret("llmos-system", client.V1Secret(
        metadata=client.V1ObjectMeta(name=name), string_data={"publicKey": public_pem}))
    try:
        yield name
    finally:
        core.delete_namespaced_secret(name, "llmos-system")


def _signed(objects, name="m"):
    return objects.model(name, policy="Required", signature={"bundleRef": {"name": f"{name}-sig", "key": "model.sig"}})


def test_a_model_signed_by_a_trusted_key_is_verified_and_served(objects, namespace, cluster, signed_model):
    core = client.CoreV1Api(cluster.api)
    objects.tenant(trustedKeys=[{"name": "release", "publicKey": signed_model["release"]}])
    _bundle_configmap(core, namespace, "m-sig", signed_model["bundle"])
    _signed(objects)
    cond = objects.wait_condition("models", "m", "Verified", "True")
    status = objects.get("models", "m")["status"]
    assert status["digest"] == f"sha256:{signed_model['root']}"
    assert status["signer"] == "release"
    assert status["fileCount"] == 2 and len(status["keyHint"]) == 64
    assert "release" in cond["message"]

    objects.deployment("d")
    objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
    assert objects.condition("modeldeployments", "d", "ModelVerified")["status"] == "True"
    dep = client.AppsV1Api(cluster.api).read_namespaced_deployment("d", namespace)
    (trust_name,) = [v.config_map.name for v in dep.spec.template.spec.volumes if v.name == "trust"]
    trust = core.read_namespaced_config_map(trust_name, namespace)
    assert trust.immutable and trust.metadata.annotations["llmos.dev/model-digest"] == status["digest"]
    assert status.get("servingRevision") is None and status.get("pendingRevision") is None  # no revision pinned

    def key(name: str) -> bytes:
        if name in (trust.data or {}):
            return trust.data[name].encode()
        return base64.b64decode(trust.binary_data[name])

    assert key("model.sig") == signed_model["bundle"]
    assert key("signer.pem").decode().strip() == signed_model["release"].strip()
    assert objects.get("modeldeployments", "d")["status"]["modelDigest"] == f"sha256:{signed_model['root']}"


@pytest.mark.parametrize("case", ["untrusted-key", "tampered-bundle", "missing-bundle"])
def test_an_unverified_model_reserves_no_gpu(objects, namespace, cluster, signed_model, case):
    core = client.CoreV1Api(cluster.api)
    objects.tenant(trustedKeys=[{"name": "release", "publicKey": signed_model["release"]}])
    if case == "untrusted-key":
        _bundle_configmap(core, namespace, "m-sig", signed_model["stranger_bundle"])
        reason = "UntrustedKey"
    elif case == "tampered-bundle":
        bundle = json.loads(signed_model["bundle"])
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        statement["predicate"]["resources"][0]["digest"] = "0" * 64
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        _bundle_configmap(core, namespace, "m-sig", json.dumps(bundle).encode())
        reason = "BadSignature"
    else:
        reason = "BundleUnavailable"
    _signed(objects)
    cond = objects.wait_condition("models", "m", "Verified", "False", reason)
    assert cond["message"]
    objects.deployment("d", count=2)
    objects.wait_condition("modeldeployments", "d", "QuotaAdmitted", "False", "ModelNotVerified")
    objects.wait_condition("modeldeployments", "d", "ModelVerified", "False", reason)
    assert objects.get("tenants", namespace)["status"].get("usage", {}).get("gpus", {}).get("h100", 0) == 0
    assert not deployment_exists(client.AppsV1Api(cluster.api), namespace, "d")


def test_key_rotation_verifies_and_unverifies(objects, namespace, cluster, signed_model):
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    objects.tenant(trustedKeys=[{"name": "old", "publicKey": signed_model["stranger"]}])
    _bundle_configmap(core, namespace, "m-sig", signed_model["bundle"])
    _signed(objects)
    objects.deployment("d")
    objects.wait_condition("models", "m", "Verified", "False", "UntrustedKey")

    # Adding the signer's key verifies the model, and its deployment is admitted.
    objects.patch("tenants", namespace, {"spec": {"trustedKeys": [
        {"name": "old", "publicKey": signed_model["stranger"]}, {"name": "release", "publicKey": signed_model["release"]}]}})
    objects.wait_condition("models", "m", "Verified", "True", timeout=30)
    objects.wait_condition("modeldeployments", "d", "QuotaAdmitted", "True", timeout=30)
    wait_for(lambda: deployment_exists(apps, namespace, "d"), message="pods of the verified model")

    # Removing it un-verifies the model; the deployment says so and stops serving.
    objects.patch("tenants", namespace, {"spec": {"trustedKeys": [{"name": "old", "publicKey": signed_model["stranger"]}]}})
    objects.wait_condition("models", "m", "Verified", "False", "UntrustedKey", timeout=30)
    objects.wait_condition("modeldeployments", "d", "ModelVerified", "False", "UntrustedKey", timeout=30)
    wait_for(lambda: not deployment_exists(apps, namespace, "d"), message="pods of the unverified model gone")
    # Its pods' GPUs stay counted while they terminate, then are freed.
    wait_for(lambda: objects.get("tenants", namespace)["status"].get("usage", {}).get("gpus", {}).get("h100", 0) == 0,
             timeout=30, message="the tenant's GPUs freed")


def test_a_trusted_key_can_come_from_a_secret(objects, namespace, cluster, signed_model):
    core = client.CoreV1Api(cluster.api)
    with _key_secret(core, namespace, signed_model["release"]) as secret:
        objects.tenant(trustedKeys=[{"name": "release", "secretRef": {"name": secret}}])
        _bundle_configmap(core, namespace, "m-sig", signed_model["bundle"])
        _signed(objects)
        objects.wait_condition("models", "m", "Verified", "True")


def test_a_secret_in_another_namespace_is_never_read(objects, namespace, cluster, signed_model):
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="keys"), string_data={"publicKey": signed_model["release"]}))
    objects.tenant(trustedKeys=[{"name": "release", "secretRef": {"name": "keys", "namespace": namespace}}])
    cond = objects.wait_condition("tenants", namespace, "Ready", "False", "TrustedKeyRefused")
    assert f"secretRef.namespace {namespace} is refused" in cond["message"]
    _bundle_configmap(core, namespace, "m-sig", signed_model["bundle"])
    _signed(objects)
    objects.wait_condition("models", "m", "Verified", "False", "NoTrustedKeys")


def test_disabled_verification_is_served_with_a_warning(objects, namespace, cluster):
    objects.tenant()
    objects.model(policy="Disabled")
    cond = objects.wait_condition("models", "m", "Verified", "False", "SignatureDisabled")
    assert "without verification" in cond["message"]
    objects.deployment("d")
    objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
    assert objects.condition("modeldeployments", "d", "ModelVerified")["reason"] == "SignatureDisabled"
    events = client.CoreV1Api(cluster.api).list_namespaced_event(namespace, field_selector="involvedObject.name=m")
    assert any(e.type == "Warning" and e.reason == "SignatureDisabled" for e in events.items)


# --- Re-verification by watch: the operator under test resyncs only every 10 minutes ---------------------------------

def test_a_bundle_configmap_edit_reverifies_the_model_within_seconds(objects, namespace, cluster, signed_model):
    core = client.CoreV1Api(cluster.api)
    objects.tenant(trustedKeys=[{"name": "release", "publicKey": signed_model["release"]}])
    _bundle_configmap(core, namespace, "m-sig", signed_model["stranger_bundle"])
    _signed(objects)
    objects.wait_condition("models", "m", "Verified", "False", "UntrustedKey")
    core.patch_namespaced_config_map("m-sig", namespace, {
        "binaryData": {"model.sig": base64.b64encode(signed_model["bundle"]).decode()}})
    objects.wait_condition("models", "m", "Verified", "True", timeout=15)
    core.delete_namespaced_config_map("m-sig", namespace)
    objects.wait_condition("models", "m", "Verified", "False", "BundleUnavailable", timeout=15)


def test_a_key_secret_edit_reverifies_the_model_within_seconds(objects, namespace, cluster, signed_model):
    core = client.CoreV1Api(cluster.api)
    with _key_secret(core, namespace, signed_model["stranger"]) as secret:
        objects.tenant(trustedKeys=[{"name": "release", "secretRef": {"name": secret}}])
        _bundle_configmap(core, namespace, "m-sig", signed_model["bundle"])
        _signed(objects)
        objects.wait_condition("models", "m", "Verified", "False", "UntrustedKey")
        core.patch_namespaced_secret(secret, "llmos-system", {"stringData": {"publicKey": signed_model["release"]}})
        objects.wait_condition("models", "m", "Verified", "True", timeout=15)
        core.patch_namespaced_secret(secret, "llmos-system", {"stringData": {"publicKey": signed_model["stranger"]}})
        objects.wait_condition("models", "m", "Verified", "False", "UntrustedKey", timeout=15)
