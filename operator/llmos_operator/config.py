"""Operator configuration: GPU classes, trusted cluster keys, the runtime image and its ports.

GPU classes are configuration, not a CRD: the platform team owns them (the Helm chart ships them in a ConfigMap,
key ``config.yaml``). The built-in default matches the local cluster's fake nodes::

    gpuClasses:
      h100:
        nodeLabels: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
        tolerations: [{key: nvidia.com/gpu, operator: Equal, value: present, effect: NoSchedule}]
        resourceName: nvidia.com/gpu
        memoryGiB: 80
      l4: {...}
    trustedKeys: {}            # name → PEM public key, trusted for every tenant
    runtime:
      image: ghcr.io/llmos/runtime:<package version>   # what `make images` tags (GPU flavour)
      openaiPort: 8000
      healthPort: 8081

A file or ConfigMap replaces whole top-level sections it names (``gpuClasses`` replaces the default classes,
it is not merged into them); sections it leaves out keep their defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from .api.types import DNS_LABEL, QUANTITY, QUANTITY_MAX_LENGTH

CONFIG_ENV = "LLMOS_OPERATOR_CONFIG"  # path of a YAML file, used when load_config() is given none
CONFIGMAP_KEY = "config.yaml"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}


IMAGE_REGISTRY = "ghcr.io/llmos"  # hack/build-images.sh and the chart's values use the same names


def default_image(component: str) -> str:
    """``ghcr.io/llmos/<component>:<package version>``: the tag `make images` gives and the chart defaults to."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tag = version("llmos")
    except PackageNotFoundError:  # running from a source tree that was never installed
        tag = "latest"
    return f"{IMAGE_REGISTRY}/{component}:{tag}"


class _Config(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class GPUClass(_Config):
    """A kind of GPU: which nodes have it, what to tolerate there, the extended resource that counts it."""

    name: str = Field("", pattern=r"^$|" + DNS_LABEL, max_length=63)  # filled from the map key
    node_labels: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    resource_name: str = DEFAULT_GPU_RESOURCE
    memory_gib: int = Field(0, ge=0, alias="memoryGiB")


class RuntimeConfig(_Config):
    """The pod that serves a model."""

    image: str = Field(default_factory=lambda: default_image("runtime"))
    # Always: the Multi-Tenancy Benchmarks' rule for tenant pods, which the chart's admission policy enforces on
    # llmos's pods as well (isolation.requireImagePullAlways).
    image_pull_policy: str = "Always"
    openai_port: int = Field(8000, ge=1, le=65535)
    health_port: int = Field(8081, ge=1, le=65535)
    cpu_per_gpu: int = Field(2, ge=0, alias="cpuPerGPU")  # CPU cores requested per GPU
    memory_gib_per_gpu: int = Field(16, ge=0, alias="memoryGiBPerGPU")  # host memory requested per GPU
    shm_size_gib: int = Field(8, ge=0, alias="shmSizeGiB")  # /dev/shm for tensor-parallel NCCL traffic
    startup_timeout_seconds: int = Field(1800, ge=60)  # a big model may take this long to fetch, verify and load
    # ClusterRole the runtime pods' ServiceAccount is bound to in each tenant namespace (the chart ships it: get and
    # patch pods, narrowed by an admission policy to the pod's own adapter report).
    role_name: str = Field("llmos-runtime", max_length=253)


class EngineConfig(_Config):
    """Engine flags tenants may use in spec.engine.extraArgs beyond llmos_runtime.engine_args' allow-list."""

    extra_allowed_flags: tuple[str, ...] = ()


class NetworkConfig(_Config):
    """Address ranges tenant pods may not reach (egress): the cluster's pod and service ranges, the nodes.
    Link-local (169.254.0.0/16, cloud metadata) is always denied."""

    cluster_cidrs: tuple[str, ...] = Field(("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), alias="clusterCIDRs")
    # Namespaces labelled so receive traffic from every tenant (an ingress gateway).
    gateway_label: str = "llmos.dev/gateway"


# A Kubernetes quantity; YAML's 16 is read as "16".
Quantity = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
    StringConstraints(pattern=QUANTITY, max_length=QUANTITY_MAX_LENGTH),
]


class TenantQuotaDefaults(_Config):
    """Tenant.spec.quota where a Tenant leaves it unset: the ResourceQuota llmos-tenant-quota of each tenant
    namespace. CPU, memory, ephemeral storage and pods are for the tenant's own pods (llmos adds its model pods'
    share); object counts include llmos's own objects."""

    cpu: Quantity = "16"
    memory: Quantity = "64Gi"
    ephemeral_storage: Quantity = "100Gi"
    pods: int = Field(50, ge=0)
    services: int = Field(50, ge=0)
    config_maps: int = Field(100, ge=0)
    secrets: int = Field(100, ge=0)
    persistent_volume_claims: int = Field(20, ge=0)
    replication_controllers: int = Field(10, ge=0)
    load_balancers: int = Field(0, ge=0)
    resource_quotas: int = Field(4, ge=2)  # tenants write none; llmos writes two (GPUs, this one)


class DefaultRequests(_Config):
    """Requests the LimitRange llmos-tenant-limits gives each container that names none, so that a pod asking for
    nothing is counted by the quota rather than refused by it."""

    cpu: Quantity = "100m"
    memory: Quantity = "128Mi"
    ephemeral_storage: Quantity = "1Gi"


class TenancyConfig(_Config):
    """What every tenant namespace gets besides GPUs (docs/security.md, the Multi-Tenancy Benchmarks)."""

    quota: TenantQuotaDefaults = Field(default_factory=TenantQuotaDefaults)
    default_requests: DefaultRequests = Field(default_factory=DefaultRequests)


class LimitsConfig(_Config):
    """API keys' limits: exact across a deployment's replicas when they share a store (Valkey/Redis,
    ``redis://host:port``; the tenant pods' egress must reach it), else each replica enforces its share."""

    store_url: str | None = Field(None, pattern=r"^(redis|valkey)://", max_length=512, alias="storeURL")


class GatewayConfig(_Config):
    """A Gateway API parent (or several) that exposes every ModelDeployment: an HTTPRoute per deployment,
    ``/<namespace>/<name>/v1`` → its Service (prefix rewritten to ``/v1``). Unset: no routes. The Gateway's listener
    must admit routes from tenant namespaces (its allowedRoutes)."""

    parent_refs: tuple[dict[str, Any], ...] = ()  # Gateway API ParentReference: name, namespace, sectionName, port
    hostnames: tuple[str, ...] = ()
class AutoscalerConfig(_Config):
    """How the operator reads the load of deployments with spec.autoscaling (docs/autoscaling.md)."""

    enabled: bool = True  # false: spec.autoscaling is reported (ScalingActive=False) and never acted on
    # Every ready replica's /metrics this often, and a decision. 10 s: ~2 % of a core for 1,000 one-replica
    # deployments (bench/autoscale.py), a load step decided within ~11 s.
    poll_seconds: float = Field(10.0, ge=1, le=10)
    timeout_seconds: float = Field(2.0, gt=0, le=10)  # one scrape, connection to last byte
    max_concurrent: int = Field(32, ge=1, le=1024)  # scrapes in flight at once
    max_response_bytes: int = Field(4 * 1024 * 1024, ge=4096)  # read of one answer at most (scanned as it comes)


def _default_gpu_classes() -> dict[str, GPUClass]:
    return {
        "h100": GPUClass(
            name="h100",
            node_labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            tolerations=(GPU_TOLERATION,),
            memory_gib=80,
        ),
        "l4": GPUClass(
            name="l4",
            node_labels={"nvidia.com/gpu.product": "NVIDIA-L4"},
            tolerations=(GPU_TOLERATION,),
            memory_gib=24,
        ),
    }


class OperatorConfig(_Config):
    gpu_classes: dict[str, GPUClass] = Field(default_factory=_default_gpu_classes, alias="gpuClasses")
    trusted_keys: dict[str, str] = Field(default_factory=dict)  # name → PEM, trusted for every tenant
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    tenancy: TenancyConfig = Field(default_factory=TenancyConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)
    # The operator's own namespace (trusted-key Secrets live only there; no tenant may claim it). The chart sets it
    # through $LLMOS_OPERATOR_NAMESPACE.
    operator_namespace: str = Field(default_factory=lambda: os.environ.get("LLMOS_OPERATOR_NAMESPACE", "llmos-system"))

    def allowed_engine_flags(self) -> frozenset[str]:
        from llmos_runtime.engine_args import DEFAULT_ALLOWED_FLAGS, normalise_flag

        return DEFAULT_ALLOWED_FLAGS | {normalise_flag(f) for f in self.engine.extra_allowed_flags}

    @field_validator("gpu_classes", mode="before")
    @classmethod
    def _name_classes(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for name, gpu_class in value.items():
                if isinstance(gpu_class, GPUClass):
                    out[name] = gpu_class.model_copy(update={"name": name})
                else:
                    out[name] = {**(gpu_class or {}), "name": name}
            return out
        return value

    def gpu_class(self, name: str) -> GPUClass | None:
        return self.gpu_classes.get(name)

    def to_yaml(self) -> str:
        """The configuration as the ConfigMap's ``config.yaml`` (for the Helm chart and docs)."""
        data = self.model_dump(mode="json", by_alias=True)
        for gpu_class in data["gpuClasses"].values():
            gpu_class.pop("name")
        return yaml.safe_dump(data, sort_keys=False)


class ConfigError(ValueError):
    pass


def parse_config(data: Mapping[str, Any] | None) -> OperatorConfig:
    """Configuration from a parsed YAML mapping; sections it leaves out keep their defaults."""
    try:
        return OperatorConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        details = "; ".join(
            ".".join(str(p) for p in err["loc"]) + ": " + err["msg"] for err in exc.errors()
        )
        raise ConfigError(f"invalid operator configuration: {details}") from None


def config_from_yaml(text: str) -> OperatorConfig:
    data = yaml.safe_load(text) if text.strip() else {}
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError("invalid operator configuration: the YAML document must be a mapping")
    return parse_config(data)


def config_from_configmap(data: Mapping[str, str] | None, key: str = CONFIGMAP_KEY) -> OperatorConfig:
    """Configuration from a ConfigMap's ``data`` (its ``config.yaml`` key; absent → defaults)."""
    return config_from_yaml((data or {}).get(key, ""))


def load_config(path: str | os.PathLike | None = None) -> OperatorConfig:
    """Configuration from ``path``, else from the file named by $LLMOS_OPERATOR_CONFIG, else the defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return OperatorConfig()
    return config_from_yaml(Path(path).read_text())


def default_config() -> OperatorConfig:
    return OperatorConfig()
