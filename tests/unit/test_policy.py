"""What the platform allows a tenant (operator/llmos_operator/policy.py)."""

import pytest

from llmos_operator.api import parse_object
from llmos_operator.config import config_from_yaml, default_config
from llmos_operator.core import policy

pytestmark = pytest.mark.unit
CFG = default_config()


def tenant(**pol):
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a"},
                         "spec": {"namespaces": ["a1"], "policy": pol}})


def mdep(image=None, extra_args=()):
    engine = {"extraArgs": list(extra_args)}
    if image:
        engine["image"] = image
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "chat", "namespace": "a1"},
                         "spec": {"model": "m", "gpu": {"class": "h100", "count": 1}, "engine": engine}})


def model(policy_="Required", adapters=()):
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Model", "metadata": {"name": "m", "namespace": "a1"},
                         "spec": {"source": {"uri": "hf://org/m"}, "signature": {"policy": policy_},
                                  "adapters": list(adapters)}})


@pytest.mark.parametrize("ns", ["default", "kube-system", "kube-public", "llmos-system"])
def test_protected_namespaces_are_never_a_tenants(ns):
    assert policy.namespace_refusal(ns, "team-a", None, CFG) is not None


def test_existing_namespace_needs_the_platforms_adoption():
    existing = {"metadata": {"name": "prod", "labels": {}}}
    why = policy.namespace_refusal("prod", "team-a", existing, CFG)
    assert "llmos.dev/adopt=team-a" in why
    adopted = {"metadata": {"name": "prod", "annotations": {"llmos.dev/adopt": "team-a"}}}
    assert policy.namespace_refusal("prod", "team-a", adopted, CFG) is None
    assert policy.namespace_refusal("prod", "team-b", adopted, CFG) is not None
    ours = {"metadata": {"name": "a1", "labels": {"llmos.dev/tenant": "team-a"}}}
    assert policy.namespace_refusal("a1", "team-a", ours, CFG) is None
    released = {"metadata": {"name": "a1", "labels": {"llmos.dev/released": "team-a"}}}
    assert policy.namespace_refusal("a1", "team-a", released, CFG) is None
    assert policy.namespace_refusal("new", "team-a", None, CFG) is None


def test_unsigned_models_only_where_the_platform_allows():
    reason, message = policy.model_refusal(model("Disabled"), tenant())
    assert reason == "SignatureRequired" and "allowUnsignedModels" in message
    assert policy.model_refusal(model("Disabled"), None)[0] == "SignatureRequired"
    assert policy.model_refusal(model("Disabled"), tenant(allowUnsignedModels=True)) is None
    assert policy.model_refusal(model(), tenant()) is None


def test_an_unsigned_adapter_follows_the_same_rule_as_its_model():
    # Issue 18, attack 3: an adapter with signature policy Disabled under a signed model.
    unsigned = {"name": "sql", "source": {"uri": "hf://org/sql"}, "signature": {"policy": "Disabled"}}
    signed = {"name": "chat", "source": {"uri": "hf://org/chat"}}  # no signature of its own: the Model's policy
    reason, message = policy.model_refusal(model(adapters=[signed, unsigned]), tenant())
    assert reason == "SignatureRequired" and "spec.adapters[1].signature.policy (adapter sql)" in message
    assert policy.model_refusal(model(adapters=[signed, unsigned]), tenant(allowUnsignedModels=True)) is None
    assert policy.model_refusal(model(adapters=[signed]), tenant()) is None


def test_images_default_to_the_operators_runtime_image_only():
    assert policy.deployment_refusal(mdep(), tenant(), CFG) is None
    assert policy.deployment_refusal(mdep(image=CFG.runtime.image), tenant(), CFG) is None
    reason, message = policy.deployment_refusal(mdep(image="evil.io/x:1"), tenant(), CFG)
    assert reason == "ImageNotAllowed" and "spec.engine.image evil.io/x:1" in message
    ok = tenant(allowedImages=["registry.corp/llmos/"])
    assert policy.deployment_refusal(mdep(image="registry.corp/llmos/runtime:2"), ok, CFG) is None
    assert policy.deployment_refusal(mdep(image="registry.corp/other:2"), ok, CFG)[0] == "ImageNotAllowed"


@pytest.mark.parametrize("args,index,flag", [
    (["--trust-remote-code"], 0, "--trust-remote-code"),
    (["--max-num-seqs", "8", "--tokenizer", "/x"], 2, "--tokenizer"),
    (["--lora-modules", "a=/x"], 0, "--lora-modules"),
    (["--chat_template=/etc/passwd"], 0, "--chat-template"),
])
def test_engine_flags_outside_the_allow_list_are_refused_with_the_field(args, index, flag):
    reason, message = policy.deployment_refusal(mdep(extra_args=args), tenant(), CFG)
    assert reason == "EngineArgsNotAllowed"
    assert f"spec.engine.extraArgs[{index}]" in message and flag in message


def test_allowed_engine_flags_both_spellings_and_platform_extensions():
    assert policy.deployment_refusal(mdep(extra_args=["--max_num_seqs", "8", "--enable-prefix-caching",
                                                       "--seed", "-1"]), tenant(), CFG) is None
    assert policy.deployment_refusal(mdep(extra_args=["--trust-remote-code"]),
                                     tenant(allowRemoteCode=True), CFG) is None
    cfg = config_from_yaml("engine: {extraAllowedFlags: [--my-flag]}")
    assert policy.deployment_refusal(mdep(extra_args=["--my_flag=1"]), tenant(), cfg) is None
    assert policy.remote_code(mdep(extra_args=["--trust_remote_code"]))


def test_secrets_are_read_only_in_the_operators_namespace():
    t = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a"},
                      "spec": {"trustedKeys": [
                          {"name": "ok", "secretRef": {"name": "k"}},
                          {"name": "also-ok", "secretRef": {"name": "k", "namespace": "llmos-system"}},
                          {"name": "theirs", "secretRef": {"name": "k", "namespace": "kube-system"}}]}})
    refused = policy.refused_keys(t, CFG)
    assert list(refused) == ["theirs"] and "kube-system is refused" in refused["theirs"]
