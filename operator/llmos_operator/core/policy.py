"""What the platform allows a tenant: one pure module, consulted by admission (controller), rendering and the Model
reconciler alike, and mirrored by the admission policies the Helm chart installs (engine flags, GPUs, namespaces).

Nothing here talks to the API server: callers pass what they read. Each check returns None when allowed, else a
(reason, message) pair whose message names the field and says what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmos_runtime.engine_args import refused_args

from ..api.names import ANNOTATION_ADOPT, LABEL_RELEASED, LABEL_TENANT
from ..api.types import Model, ModelDeployment, Tenant
from ..config import OperatorConfig

Refusal = tuple[str, str]


def protected_namespace(namespace: str, config: OperatorConfig) -> bool:
    """Namespaces no tenant may ever claim: the cluster's own and the operator's."""
    return namespace == "default" or namespace.startswith("kube-") or namespace == config.operator_namespace


def namespace_refusal(namespace: str, tenant: str, existing: Mapping[str, Any] | None,
                      config: OperatorConfig) -> str | None:
    """Why ``tenant`` may not take ``namespace`` (None: it may). ``existing``: the Namespace object as read now, or
    None if there is none (llmos will create it for the tenant)."""
    if protected_namespace(namespace, config):
        return f"namespace {namespace} is reserved for the cluster or the operator and cannot belong to a tenant"
    if existing is None:
        return None
    meta = existing.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    if tenant in (labels.get(LABEL_TENANT), labels.get(LABEL_RELEASED), annotations.get(ANNOTATION_ADOPT)):
        return None
    return (f"namespace {namespace} already exists and llmos did not create it for tenant {tenant}: the platform "
            f"must annotate it {ANNOTATION_ADOPT}={tenant} before the tenant can take it")


def refused_keys(tenant: Tenant, config: OperatorConfig) -> dict[str, str]:
    """Trusted keys whose Secret the operator will not read (key name → why): Secrets are read only in the operator's
    own namespace, so a Tenant cannot make the operator read another namespace's Secrets."""
    out = {}
    for key in tenant.spec.trusted_keys:
        ref = key.secret_ref
        if ref is not None and (ref.namespace or config.operator_namespace) != config.operator_namespace:
            out[key.name] = (f"trusted key {key.name}: spec.trustedKeys[].secretRef.namespace {ref.namespace} is "
                             f"refused (Secrets are read only in the operator's namespace {config.operator_namespace})")
    return out


def model_refusal(model: Model, tenant: Tenant | None) -> Refusal | None:
    """A Model the platform does not let this tenant serve, whatever its signature: one unsigned (policy Disabled)
    where the tenant may serve only signed weights — the base model or any of its adapters (an adapter without a
    signature of its own follows the Model's policy)."""
    if tenant is not None and tenant.spec.policy.allow_unsigned_models:
        return None
    owner = tenant.metadata.name if tenant else "(none)"
    why = (f"tenant {owner} may serve only signed weights (the platform sets Tenant "
           "spec.policy.allowUnsignedModels)")
    if model.spec.signature.policy == "Disabled":
        return ("SignatureRequired", f"spec.signature.policy is Disabled but {why}: sign the weights and set "
                                     "spec.signature.bundleRef")
    for i, adapter in enumerate(model.spec.adapters):
        if adapter.signature is not None and adapter.signature.policy == "Disabled":
            return ("SignatureRequired", f"spec.adapters[{i}].signature.policy (adapter {adapter.name}) is Disabled "
                                         f"but {why}: sign the adapter and set spec.adapters[{i}].signature.bundleRef")
    return None


def image_allowed(image: str | None, tenant: Tenant | None, config: OperatorConfig) -> bool:
    if image is None or image == config.runtime.image:
        return True
    prefixes = tenant.spec.policy.allowed_images if tenant else []
    return any(image.startswith(p) for p in prefixes if p)


def deployment_refusal(mdep: ModelDeployment, tenant: Tenant | None, config: OperatorConfig) -> Refusal | None:
    """A ModelDeployment the platform does not allow: it reserves no GPU and gets no pods."""
    image = mdep.spec.engine.image
    if not image_allowed(image, tenant, config):
        allowed = [config.runtime.image, *(tenant.spec.policy.allowed_images if tenant else [])]
        return ("ImageNotAllowed",
                f"spec.engine.image {image} is not allowed for this tenant (allowed: {', '.join(allowed)}; the "
                "platform sets Tenant spec.policy.allowedImages); no GPUs are reserved")
    if mdep.spec.access.api_keys == "Disabled" and tenant is not None and tenant.spec.policy.require_api_keys:
        return ("ApiKeysRequired", "spec.access.apiKeys Disabled is not allowed for this tenant (its Tenant's "
                "spec.policy.requireApiKeys is true): set it to Required and hand out keys (llmos key create); "
                "no GPUs are reserved")
    refused = refused_args(mdep.spec.engine.extra_args, allowed=config.allowed_engine_flags(),
                           allow_remote_code=bool(tenant and tenant.spec.policy.allow_remote_code))
    if refused:
        return ("EngineArgsNotAllowed", "; ".join(str(r) for r in refused) + "; no GPUs are reserved")
    return None


def remote_code(mdep: ModelDeployment) -> bool:
    """Does this deployment run code shipped with the weights (shown in status)?"""
    from llmos_runtime.engine_args import REMOTE_CODE_FLAG, has_flag

    return has_flag(mdep.spec.engine.extra_args, REMOTE_CODE_FLAG)
