"""The Tenant kind: the namespaces a tenant owns, its quotas per GPU class and more, its policy and trusted keys."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field

from .base import (
    _AGE,
    DNS_LABEL,
    ApiModel,
    Condition,
    PrinterColumn,
    Resource,
    Rule,
    SecretKeyRef,
    _condition_column,
    _conditions_field,
)

# ---------------------------------------------------------------------------------------------------------------------
# Tenant


class TrustedKey(ApiModel):
    """A public key whose signatures this tenant's models may carry."""

    __rules__ = (
        Rule(
            rule="has(self.publicKey) != has(self.secretRef)",
            message="set exactly one of publicKey and secretRef",
            check=lambda k: (k.public_key is None) != (k.secret_ref is None),
        ),
    )

    name: str = Field(max_length=63, pattern=DNS_LABEL, description="Name of the key, shown as the signer.")
    public_key: str | None = Field(
        None, max_length=16384, description="PEM-encoded public key (SubjectPublicKeyInfo)."
    )
    secret_ref: SecretKeyRef | None = Field(None, description="A Secret key holding the PEM-encoded public key.")


# A Kubernetes quantity (resource.Quantity), not negative; [.] and [+-] rather than escapes so that the same text
# is a Python and a CEL string.
_DECIMAL = r"(([0-9]+([.][0-9]*)?)|([.][0-9]+))"
QUANTITY = rf"^{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE][-+]?{_DECIMAL}))?$"
QUANTITY_MAX_LENGTH = 32


def _is_quantity(value: int | str | None) -> bool:
    if value is None or isinstance(value, int):
        return value is None or value >= 0
    return len(value) <= QUANTITY_MAX_LENGTH and re.match(QUANTITY, value) is not None


def _quantity_rule(json_name: str, attr: str) -> Rule:
    """``self.<json_name>``, an int-or-string, is a non-negative quantity (an integer, or 500m, 64Gi, 1.5, …)."""
    return Rule(
        rule=f"!has(self.{json_name}) || (type(self.{json_name}) == int ? self.{json_name} >= 0 : "
        f"size(self.{json_name}) <= {QUANTITY_MAX_LENGTH} && self.{json_name}.matches('{QUANTITY}'))",
        message=f"{json_name} must be a non-negative quantity, e.g. 8, 500m or 64Gi",
        field_path=f".{json_name}",
        check=lambda q: _is_quantity(getattr(q, attr)),
    )


def _quantity_field(description: str) -> Any:
    return Field(None, description=description,
                 json_schema_extra={"x-kubernetes-int-or-string": True, "maxLength": QUANTITY_MAX_LENGTH})


def _count_field(what: str) -> Any:
    return Field(None, ge=0, le=1_000_000, description=f"At most this many {what} in each of its namespaces, llmos's "
                 "own included (unset: the operator's default, tenancy.quota in its configuration).")


class TenantQuota(ApiModel):
    """What a tenant may use: GPUs in total, and in each of its namespaces CPU, memory and object counts (a
    ResourceQuota llmos writes beside the GPU one; unset fields take the operator's defaults)."""

    __rules__ = (
        _quantity_rule("cpu", "cpu"),
        _quantity_rule("memory", "memory"),
        _quantity_rule("ephemeralStorage", "ephemeral_storage"),
    )

    gpus: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="GPU class → number of GPUs the tenant's deployments may reserve in total.",
        json_schema_extra={"maxProperties": 64},
    )
    max_model_deployments: int | None = Field(
        None, ge=0, description="At most this many admitted ModelDeployments (unset: no limit)."
    )
    cpu: int | str | None = _quantity_field(
        "CPU requests of the tenant's own pods in each namespace; llmos adds what its model pods may take under the "
        "GPU quota (runtime.cpuPerGPU per GPU).")
    memory: int | str | None = _quantity_field(
        "Memory requests of the tenant's own pods in each namespace; llmos adds what its model pods may take under "
        "the GPU quota (runtime.memoryGiBPerGPU per GPU).")
    ephemeral_storage: int | str | None = _quantity_field(
        "Ephemeral-storage requests of the tenant's own pods in each namespace; llmos adds its model pods' share.")
    pods: int | None = Field(
        None, ge=0, le=1_000_000, description="Pods of the tenant's own in each namespace; llmos adds one per GPU of "
        "the GPU quota for its model pods (unset: the operator's default).")
    services: int | None = _count_field("Services")
    config_maps: int | None = _count_field("ConfigMaps")
    secrets: int | None = _count_field("Secrets")
    persistent_volume_claims: int | None = _count_field("PersistentVolumeClaims")
    replication_controllers: int | None = _count_field("ReplicationControllers")
    load_balancers: int | None = Field(
        None, ge=0, le=1_000_000, description="LoadBalancer Services in each namespace, where the platform allows "
        "them at all (chart value isolation.services.allowLoadBalancers; unset: the operator's default).")


class TenantPolicy(ApiModel):
    """What the platform allows this tenant (a tenant cannot edit its Tenant)."""

    allow_unsigned_models: bool = Field(
        False, description="Serve Models with signature.policy Disabled (default false: every model must verify)."
    )
    allowed_images: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list,
        max_length=32,
        description="Image prefixes a ModelDeployment's engine.image may start with (empty: only the operator's "
        "configured runtime image).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    allow_remote_code: bool = Field(
        False, description="Allow --trust-remote-code in engine.extraArgs (runs Python shipped with the weights)."
    )
    allow_exec: bool = Field(
        False, description="Allow kubectl exec, attach and port-forward into pods of the tenant's namespaces (they "
        "read a model pod's memory and secrets; the operator labels the namespaces llmos.dev/allow-exec=true)."
    )


class TenantSpec(ApiModel):
    """A tenant: namespaces it owns and its GPU budget per GPU class."""

    __rules__ = (
        Rule(
            rule="self.namespaces.all(n, !n.startsWith('kube-') && n != 'default')",
            message="a tenant may not claim default or a kube-* namespace",
            field_path=".namespaces",
            check=lambda s: all(not n.startswith("kube-") and n != "default" for n in s.namespaces),
        ),
    )

    namespaces: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL)]] = Field(
        default_factory=list,
        max_length=256,
        description="Namespaces the tenant owns; llmos creates them and labels them llmos.dev/tenant=<name>. An "
        "existing namespace is taken only if the platform annotated it llmos.dev/adopt=<tenant>; default, kube-* "
        "and the operator's namespace never.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    quota: TenantQuota = Field(default_factory=TenantQuota, description="GPU budget.")
    priority: int = Field(0, description="Higher is admitted first when tenants compete for GPUs.")
    cordoned: bool = Field(False, description="Admit nothing new (running deployments keep their GPUs).")
    trusted_keys: list[TrustedKey] = Field(
        default_factory=list,
        max_length=32,
        description="Public keys trusted to sign this tenant's models.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    policy: TenantPolicy = Field(
        default_factory=TenantPolicy, description="What the platform allows this tenant.",
        json_schema_extra={"default": {}},
    )


class Reservation(ApiModel):
    """GPUs reserved for one admitted ModelDeployment (an entry of the admission ledger)."""

    class_: str = Field(alias="class", max_length=63, description="GPU class.")
    gpus: int = Field(ge=0, description="GPUs reserved (replicas × gpu.count as admitted).")
    uid: str = Field(max_length=64, description="UID of the ModelDeployment the GPUs are reserved for (of the pod, "
                     "for kind pod).")
    kind: str | None = Field(
        None, pattern="^(surge|releasing|pod)$", max_length=9,
        description="surge: GPUs reserved for a rollout's extra pods (key <namespace>/<name>#surge), freed when the "
        "rollout ends; releasing: GPUs that pods of the deployment still hold beyond its reservation (scaled down or "
        "no longer admitted, and they are terminating; key <namespace>/<name>#releasing), freed as they go; pod: GPUs "
        "a pod holds that no live ModelDeployment accounts for (its deployment was deleted, or an intruder the "
        "operator removes; key <namespace>/<pod>#pod, class of its node), freed when the pod is gone; absent for the "
        "deployment's own reservation."
    )


class TenantUsage(ApiModel):
    gpus: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="GPU class → GPUs reserved by admitted deployments."
    )


class TenantStatus(ApiModel):
    observed_generation: int | None = Field(None, ge=0, description="The generation this status describes.")
    usage: TenantUsage = Field(default_factory=TenantUsage, description="GPUs in use per class.")
    admitted: int = Field(0, ge=0, description="Admitted ModelDeployments.")
    queued: int = Field(0, ge=0, description="ModelDeployments waiting for admission.")
    gpu_summary: str | None = Field(
        None, max_length=1024, description='GPUs used/allowed per class, e.g. "h100 4/8, l4 0/4".'
    )
    reservations: dict[str, Reservation] = Field(
        default_factory=dict,
        description='The admission ledger: "<namespace>/<name>" → GPUs reserved for that ModelDeployment.',
    )
    conditions: list[Condition] = _conditions_field()


class Tenant(Resource):
    """A tenant: namespaces it owns, a GPU budget per GPU class, and the keys it trusts."""

    KIND = "Tenant"
    PLURAL = "tenants"
    SCOPE = "Cluster"
    SHORT_NAMES = ("tn",)
    PRINTER_COLUMNS = (
        PrinterColumn("Namespaces", "string", ".spec.namespaces", "Namespaces the tenant owns"),
        PrinterColumn("GPUs", "string", ".status.gpuSummary", "GPUs used/allowed per class"),
        PrinterColumn("Admitted", "integer", ".status.admitted", "Admitted ModelDeployments"),
        PrinterColumn("Queued", "integer", ".status.queued", "ModelDeployments waiting for GPUs"),
        PrinterColumn("Priority", "integer", ".spec.priority", "Admission priority", priority=1),
        PrinterColumn("Cordoned", "boolean", ".spec.cordoned", "Admits nothing new", priority=1),
        _condition_column("Ready", "Ready", priority=1),
        _AGE,
    )

    kind: str = "Tenant"
    spec: TenantSpec = Field(default_factory=TenantSpec)
    status: TenantStatus = Field(default_factory=TenantStatus)
