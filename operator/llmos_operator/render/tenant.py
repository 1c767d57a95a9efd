"""Desired children of a Tenant: its namespaces, and in each a GPU ResourceQuota and an isolating NetworkPolicy.

The Namespace dicts carry only the labels llmos needs: apply them as a merge patch onto an existing namespace (never
own a namespace by the Tenant: deleting a Tenant must not delete its tenants' data). ResourceQuota and NetworkPolicy
are llmos's own and may be owned by the Tenant.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..api.types import Tenant
from ..config import OperatorConfig
from .common import LABEL_GATEWAY, LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY, RUNTIME_SERVICE_ACCOUNT

RESOURCE_QUOTA_NAME = "llmos-gpus"
NETWORK_POLICY_NAME = "llmos-tenant-isolation"


def _labels(tenant: Tenant) -> dict[str, str]:
    return {LABEL_TENANT: tenant.metadata.name, LABEL_MANAGED_BY: MANAGED_BY}


def gpu_resource_totals(tenant: Tenant, config: OperatorConfig) -> dict[str, int]:
    """Extended resource name → the tenant's GPUs of all classes counted by it (classes not configured are
    skipped: nothing can be admitted for them)."""
    totals: dict[str, int] = {}
    for class_name, gpus in tenant.spec.quota.gpus.items():
        gpu_class = config.gpu_class(class_name)
        if gpu_class is not None:
            totals[gpu_class.resource_name] = totals.get(gpu_class.resource_name, 0) + gpus
    return dict(sorted(totals.items()))


def render_namespace(tenant: Tenant, namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": _labels(tenant)}}


def render_resource_quota(tenant: Tenant, namespace: str, config: OperatorConfig) -> dict:
    """A backstop, not the admission mechanism: no namespace of the tenant may request more GPUs (of each extended
    resource) than the tenant has in total. Resources the tenant has no quota of are pinned to 0."""
    totals = gpu_resource_totals(tenant, config)
    for gpu_class in config.gpu_classes.values():
        totals.setdefault(gpu_class.resource_name, 0)
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": RESOURCE_QUOTA_NAME, "namespace": namespace, "labels": _labels(tenant)},
        "spec": {"hard": {f"requests.{name}": str(n) for name, n in sorted(totals.items())}},
    }


def render_network_policy(tenant: Tenant, namespace: str) -> dict:
    """Ingress to every pod only from the tenant's own namespaces and from namespaces labelled
    ``llmos.dev/gateway=true`` (egress is left open: runtimes fetch weights)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETWORK_POLICY_NAME, "namespace": namespace, "labels": _labels(tenant)},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {LABEL_TENANT: tenant.metadata.name}}},
                        {"namespaceSelector": {"matchLabels": {LABEL_GATEWAY: "true"}}},
                    ]
                }
            ],
        },
    }


def render_runtime_access(tenant: Tenant, namespace: str) -> list[dict]:
    """The runtime pods' ServiceAccount, and a Role that lets them read and annotate pods of this namespace only
    (each reports the adapters it loaded on its own pod; the operator aggregates them)."""
    meta = {"name": RUNTIME_SERVICE_ACCOUNT, "namespace": namespace, "labels": _labels(tenant)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RUNTIME_SERVICE_ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": RUNTIME_SERVICE_ACCOUNT, "namespace": namespace}]},
    ]


def render_tenant_children(
    tenant: Tenant, config: OperatorConfig, namespaces: Iterable[str] | None = None
) -> list[dict]:
    """For each namespace the tenant owns (default: all it claims; pass the owned ones after
    ``quota.namespace_owners`` refused conflicting claims): Namespace, ResourceQuota, NetworkPolicy, and the runtime's
    ServiceAccount, Role and RoleBinding."""
    out: list[dict] = []
    for ns in namespaces if namespaces is not None else tenant.spec.namespaces:
        out += [render_namespace(tenant, ns), render_resource_quota(tenant, ns, config), render_network_policy(tenant, ns)]
        out += render_runtime_access(tenant, ns)
    return out
