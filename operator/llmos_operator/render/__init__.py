"""Pure renderers: the objects llmos wants to exist, and the status it wants to report. No kopf, no I/O.

Children of an admitted ModelDeployment (``render.model_deployment``)::

    children = render_children(mdep, model, gpu_class, config,
                               replicas=decision.replicas,        # what quota admitted, not spec.replicas
                               bundle=bundle_bytes, signer_pem=pem)  # None when signature.policy is Disabled
    # → [ConfigMap <name>-trust-<hash>, ConfigMap <name>-adapters, Deployment, Service, PodDisruptionBudget]
    plan = plan_rollout(mdep, desired_deployment, facts, decision)  # render.rollout: what to apply while rolling
    # Raises RenderError(reason="UnknownAdapter" | "SignatureUnavailable").
    # The handler adds ownerReferences (kopf.adopt) and applies each; nothing here sets them.

Children of a Tenant (``render.tenant``)::

    render_tenant_children(tenant, config, namespaces=owned, reserved={ns: {resource: gpus}})
    # → Namespace (labels only), ResourceQuota (the ledger's GPUs there), ingress and egress NetworkPolicies,
    #   runtime ServiceAccount and RoleBinding
    render_released_namespace(ns, former_tenant, config)  # zero GPU quota, deny-all ingress, not owned

Status (``render.status``), applied as a JSON merge patch (None deletes a field)::

    desired_status(mdep, config, decision=..., model=..., deployment=..., fit=..., scheduling=...,
                   termination_messages=[...], render_error=None)
    tenant_status(tenant, config, result=admission_result, conflicts={ns: owner})
    model_status(model, verified=True, reason="SignatureDisabled", message=..., digest=..., signer=...)
    transitions(old_conditions, new_conditions)  # → Events to emit

Related pure helpers: ``placement.can_ever_fit`` / ``summarize_scheduling_failures`` (facts for desired_status),
``quota.admit`` (the decision), ``render.model_deployment.pod_requests`` (what one pod requests, for can_ever_fit),
``endpoint_url``.
"""

from .common import labels, selector_labels, selector_string
from .model_deployment import (
    RenderError,
    endpoint_url,
    engine_args,
    pod_requests,
    render_adapters_configmap,
    render_children,
    render_deployment,
    render_pdb,
    render_service,
    render_trust_configmap,
    runtime_command,
)
from .status import (
    DEGRADED,
    MODEL_VERIFIED,
    PROGRESSING,
    QUOTA_ADMITTED,
    READY,
    VERIFIED,
    ModelCheck,
    Transition,
    check_model,
    desired_status,
    map_patch,
    merge_conditions,
    model_status,
    now_rfc3339,
    tenant_status,
    transitions,
)
from .tenant import (
    render_egress_policy,
    render_namespace,
    render_network_policy,
    render_released_namespace,
    render_resource_quota,
    render_tenant_children,
)

__all__ = [
    "DEGRADED", "MODEL_VERIFIED", "PROGRESSING", "QUOTA_ADMITTED", "READY", "VERIFIED", "ModelCheck", "RenderError",
    "Transition", "check_model", "desired_status", "endpoint_url", "engine_args", "labels", "map_patch",
    "merge_conditions", "model_status", "now_rfc3339", "pod_requests", "render_adapters_configmap",
    "render_children", "render_deployment", "render_egress_policy", "render_namespace", "render_network_policy", "render_pdb",
    "render_released_namespace", "render_resource_quota", "render_service", "render_tenant_children", "render_trust_configmap",
    "runtime_command", "selector_labels", "selector_string", "tenant_status", "transitions",
]
