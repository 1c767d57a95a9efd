"""Renderers of children, pure: the objects llmos wants to exist, as plain dicts without ownerReferences (the
controller adds them). No decisions: what quota admitted and what the rollout planner chose come in as arguments.

Children of an admitted ModelDeployment (``render.model_deployment``)::

    children = render_children(mdep, model, gpu_class, config,
                               replicas=decision.replicas,        # what quota admitted, not spec.replicas
                               bundle=bundle_bytes, signer_pem=pem)  # None when signature.policy is Disabled
    # → [ConfigMap <name>-trust-<hash>, ConfigMap <name>-adapters, Deployment, Service, PodDisruptionBudget]
    # Raises core.errors.RenderError(reason="UnknownAdapter" | "SignatureUnavailable").

Children of a Tenant (``render.tenant``)::

    render_tenant_children(tenant, config, namespaces=owned)
    # → Namespace (labels only), LimitRange, ResourceQuota, ingress and egress NetworkPolicies, runtime
    #   ServiceAccount and RoleBinding
    render_tenant_quota(tenant, ns, config, reserved)  # the ledger's GPUs there and Tenant.spec.quota (admission's)
    render_released_namespace(ns, former_tenant, config)  # zero GPU quota, deny-all ingress, not owned
"""

from ..core.errors import RenderError
from .common import labels, selector_labels, selector_string
from .model_deployment import (
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
from .tenant import (
    render_egress_policy,
    render_namespace,
    render_network_policy,
    render_released_namespace,
    render_tenant_children,
    render_tenant_quota,
)

__all__ = [
    "RenderError", "engine_args", "labels", "pod_requests", "render_adapters_configmap", "render_children",
    "render_deployment", "render_egress_policy", "render_namespace", "render_network_policy", "render_pdb",
    "render_released_namespace", "render_service", "render_tenant_children", "render_tenant_quota",
    "render_trust_configmap", "runtime_command", "selector_labels", "selector_string",
]
