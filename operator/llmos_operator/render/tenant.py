"""Desired children of a Tenant in each namespace it owns, and what stays in a namespace it gave up.

Owned namespace: labels (tenant, Pod Security ``restricted``, remote code and exec allowed or not), one ResourceQuota
(the GPU backstop, equal to what the admission ledger reserves there, and CPU, memory and object counts from
``Tenant.spec.quota``) with a LimitRange giving default requests, ingress and egress NetworkPolicies, the runtime's
ServiceAccount and RoleBinding. Every child carries ``app.kubernetes.io/managed-by: llmos`` and a fixed name: the
chart's admission policies keep them the operator's. The Namespace dicts carry only the labels llmos needs:
server-side apply them onto an existing namespace, never own a namespace by the Tenant (deleting a Tenant must not
delete its tenants' data). The rest is llmos's own and owned by the Tenant.

Released namespace (its Tenant was deleted or no longer lists it): a zero GPU ResourceQuota and a deny-all ingress
policy that are NOT owned by the Tenant, so garbage collection leaves them; the tenant label gives way to
``llmos.dev/released``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import ROUND_CEILING, Decimal

from kubernetes.utils.quantity import parse_quantity

from ..api.names import (
    API_KEYS_CONFIGMAP,
    EGRESS_POLICY_NAME,
    LABEL_ALLOW_EXEC,
    LABEL_ALLOW_REMOTE_CODE,
    LABEL_GATEWAY,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_RELEASED,
    LABEL_TENANT,
    LEGACY_GPU_QUOTA_NAME,
    LIMIT_RANGE_NAME,
    MANAGED_BY,
    NETWORK_POLICY_NAME,
    OPERATOR_APP,
    RELEASED_POLICY_NAME,
    RELEASED_QUOTA_NAME,
    RUNTIME_BINDING_NAME,
    RUNTIME_SERVICE_ACCOUNT,
    TENANT_QUOTA_NAME,
)
from ..api.types import Tenant
from ..config import OperatorConfig

POD_SECURITY = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
LINK_LOCAL = "169.254.0.0/16"  # cloud metadata endpoints live here


def _labels(tenant: Tenant) -> dict[str, str]:
    return {LABEL_TENANT: tenant.metadata.name, LABEL_MANAGED_BY: MANAGED_BY}


def gpu_resources(config: OperatorConfig) -> list[str]:
    """Every extended resource some GPU class is counted by."""
    return sorted({c.resource_name for c in config.gpu_classes.values()})


def render_namespace(tenant: Tenant, namespace: str) -> dict:
    labels = {LABEL_TENANT: tenant.metadata.name, **POD_SECURITY}
    if tenant.spec.policy.allow_remote_code:
        labels[LABEL_ALLOW_REMOTE_CODE] = "true"
    if tenant.spec.policy.allow_exec:
        labels[LABEL_ALLOW_EXEC] = "true"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}}


def gpu_backstop(config: OperatorConfig, reserved: Mapping[str, int] | None = None) -> dict[str, str]:
    """A backstop, not the admission mechanism: pods of a namespace may request no more of each GPU resource than the
    admission ledger reserves there (``reserved``: resource → GPUs, surge room included). Resources with nothing
    reserved are pinned to 0, so the tenant's total is never copied into every namespace."""
    return {f"requests.{r}": str((reserved or {}).get(r, 0)) for r in gpu_resources(config)}


def _quantity(value: int | str) -> Decimal:
    return Decimal(parse_quantity(value))


def _format(amount: Decimal, *, cpu: bool = False) -> str:
    """A quantity as people write it: whole CPUs or millicores; bytes in the largest binary unit that divides them."""
    if cpu:
        if amount == amount.to_integral_value():
            return str(int(amount))
        return f"{int((amount * 1000).to_integral_value(ROUND_CEILING))}m"
    whole = int(amount.to_integral_value(ROUND_CEILING))
    for suffix, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if whole and whole % size == 0:
            return f"{whole // size}{suffix}"
    return str(whole)


def model_pods_share(tenant: Tenant, config: OperatorConfig) -> dict[str, Decimal]:
    """The most llmos's model pods of this tenant can request in one namespace: admission keeps their GPUs (rollout
    surge and departing pods included) within the GPU quota, each pod has at least one GPU, and per GPU a pod asks
    for runtime.cpuPerGPU / memoryGiBPerGPU — or, where that is 0, the LimitRange's default request (per pod, so at
    most that per GPU). Added to the tenant's own budget, so that a deployment the GPU quota admitted is never
    refused by the CPU or memory quota."""
    gpus = Decimal(sum(tenant.spec.quota.gpus.values()))
    runtime, defaults = config.runtime, config.tenancy.default_requests
    cpu = Decimal(runtime.cpu_per_gpu) if runtime.cpu_per_gpu else _quantity(defaults.cpu)
    memory = Decimal(runtime.memory_gib_per_gpu * 2**30) if runtime.memory_gib_per_gpu else _quantity(defaults.memory)
    storage = _quantity(defaults.ephemeral_storage)
    return {"cpu": gpus * cpu, "memory": gpus * memory, "ephemeral-storage": gpus * storage, "pods": gpus}


def render_tenant_quota(tenant: Tenant, namespace: str, config: OperatorConfig,
                        reserved: Mapping[str, int] | None = None) -> dict:
    """The namespace's one ResourceQuota: the GPU backstop (:func:`gpu_backstop`, what the ledger reserves here) and
    CPU, memory, ephemeral storage and object counts (``Tenant.spec.quota``, unset fields from ``tenancy.quota`` of
    the configuration): the tenant's own budget plus llmos's model pods' share (:func:`model_pods_share`); object
    counts include llmos's objects. No NodePort Services at all. One quota, not two: the API server updates the
    status of every quota a pod counts against at each pod create."""
    quota, defaults = tenant.spec.quota, config.tenancy.quota

    def pick(name: str) -> int | str:
        value = getattr(quota, name)
        return getattr(defaults, name) if value is None else value

    share = model_pods_share(tenant, config)
    hard = {
        **gpu_backstop(config, reserved),
        "requests.cpu": _format(_quantity(pick("cpu")) + share["cpu"], cpu=True),
        "requests.memory": _format(_quantity(pick("memory")) + share["memory"]),
        "requests.ephemeral-storage": _format(_quantity(pick("ephemeral_storage")) + share["ephemeral-storage"]),
        "pods": str(int(pick("pods")) + int(share["pods"])),
        "services": str(pick("services")),
        "services.nodeports": "0",
        "services.loadbalancers": str(pick("load_balancers")),
        "configmaps": str(pick("config_maps")),
        "secrets": str(pick("secrets")),
        "persistentvolumeclaims": str(pick("persistent_volume_claims")),
        "replicationcontrollers": str(pick("replication_controllers")),
        "resourcequotas": str(defaults.resource_quotas),
    }
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": TENANT_QUOTA_NAME, "namespace": namespace, "labels": _labels(tenant)},
            "spec": {"hard": hard}}


def render_limit_range(tenant: Tenant, namespace: str, config: OperatorConfig) -> dict:
    """Default requests for containers that name none (no default limits: a limit llmos did not ask for would
    throttle or kill a model pod)."""
    defaults = config.tenancy.default_requests
    return {"apiVersion": "v1", "kind": "LimitRange",
            "metadata": {"name": LIMIT_RANGE_NAME, "namespace": namespace, "labels": _labels(tenant)},
            "spec": {"limits": [{"type": "Container", "defaultRequest": {
                "cpu": defaults.cpu, "memory": defaults.memory, "ephemeral-storage": defaults.ephemeral_storage}}]}}


def render_network_policy(tenant: Tenant, namespace: str, config: OperatorConfig | None = None) -> dict:
    """Ingress to every pod only from the tenant's own namespaces and from gateway namespaces; and the operator's
    pods to the runtime's health port, where the autoscaler reads the engine's load (``/metrics``)."""
    gateway = config.network.gateway_label if config else LABEL_GATEWAY
    operator = [] if config is None else [{
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.operator_namespace}},
                  "podSelector": {"matchLabels": {LABEL_NAME: OPERATOR_APP}}}],
        "ports": [{"protocol": "TCP", "port": config.runtime.health_port}],
    }]
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
                        {"namespaceSelector": {"matchLabels": {gateway: "true"}}},
                    ]
                },
                *operator,
            ],
        },
    }


def render_egress_policy(tenant: Tenant, namespace: str, config: OperatorConfig) -> dict:
    """Egress: DNS (kube-system's DNS pods), the tenant's own namespaces, and the world outside the cluster — not
    link-local (cloud metadata), not the cluster's ranges (API server, nodes, other tenants' pods and services)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": EGRESS_POLICY_NAME, "namespace": namespace, "labels": _labels(tenant)},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                },
                {"to": [{"namespaceSelector": {"matchLabels": {LABEL_TENANT: tenant.metadata.name}}}]},
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                     "except": [LINK_LOCAL, *config.network.cluster_cidrs]}}]},
            ],
        },
    }


def render_runtime_access(tenant: Tenant, namespace: str, config: OperatorConfig) -> list[dict]:
    """The runtime pods' ServiceAccount, bound to the chart's runtime ClusterRole in this namespace only (get and
    patch pods; the chart's admission policy narrows patch to the pod's own adapter report)."""
    meta = {"name": RUNTIME_SERVICE_ACCOUNT, "namespace": namespace, "labels": _labels(tenant)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta),
         "automountServiceAccountToken": False},  # pods that report adapters mount it explicitly
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": dict(meta, name=RUNTIME_BINDING_NAME),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": config.runtime.role_name},
         "subjects": [{"kind": "ServiceAccount", "name": RUNTIME_SERVICE_ACCOUNT, "namespace": namespace}]},
    ]


def render_tenant_children(
    tenant: Tenant, config: OperatorConfig, namespaces: Iterable[str] | None = None,
    reserved: Mapping[str, Mapping[str, int]] | None = None,
) -> list[dict]:
    """For each namespace the tenant owns (default: all it claims; pass the owned ones after the refused and
    conflicting claims are taken out): Namespace, LimitRange, the ResourceQuota (``reserved``: namespace → resource →
    GPUs), NetworkPolicies, and the runtime's ServiceAccount and RoleBinding."""
    out: list[dict] = []
    for ns in namespaces if namespaces is not None else tenant.spec.namespaces:
        out += [
            render_namespace(tenant, ns),
            # The quota is listed for completeness; admission writes it from the ledger, perhaps before the
            # LimitRange exists: a pod naming no requests is refused until then and its ReplicaSet retries.
            render_limit_range(tenant, ns, config),
            render_tenant_quota(tenant, ns, config, (reserved or {}).get(ns)),
            render_network_policy(tenant, ns, config),
            render_egress_policy(tenant, ns, config),
        ]
        out += render_runtime_access(tenant, ns, config)
    return out


def render_released_namespace(namespace: str, former_tenant: str, config: OperatorConfig) -> list[dict]:
    """What a namespace keeps once its tenant is gone: no GPUs, no ingress; not owned by anyone, so garbage
    collection of the Tenant does not remove them. Apply the Namespace with the same field manager so the tenant
    label llmos wrote is removed."""
    labels = {LABEL_RELEASED: former_tenant, **POD_SECURITY}
    child_labels = {LABEL_RELEASED: former_tenant, LABEL_MANAGED_BY: MANAGED_BY}
    # The Namespace's label last: whoever sees the namespace released finds its zero quota and policy in place.
    return [
        {"apiVersion": "v1", "kind": "ResourceQuota",
         "metadata": {"name": RELEASED_QUOTA_NAME, "namespace": namespace, "labels": child_labels},
         "spec": {"hard": {f"requests.{r}": "0" for r in gpu_resources(config)}}},  # extended resources: requests only
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": RELEASED_POLICY_NAME, "namespace": namespace, "labels": child_labels},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}},
    ]


# What the tenant's children in a namespace are, by kind and name: removed when the namespace is released.
TENANT_CHILDREN = (
    ("ResourceQuota", TENANT_QUOTA_NAME),
    ("ResourceQuota", LEGACY_GPU_QUOTA_NAME),
    ("LimitRange", LIMIT_RANGE_NAME),
    ("NetworkPolicy", NETWORK_POLICY_NAME),
    ("NetworkPolicy", EGRESS_POLICY_NAME),
    ("RoleBinding", RUNTIME_BINDING_NAME),
    ("ServiceAccount", RUNTIME_SERVICE_ACCOUNT),
    ("ConfigMap", API_KEYS_CONFIGMAP),  # written by controller/api_keys.py, removed with the others on release
)
RELEASED_CHILDREN = (("ResourceQuota", RELEASED_QUOTA_NAME), ("NetworkPolicy", RELEASED_POLICY_NAME))
