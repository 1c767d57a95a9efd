"""The llmos API: Tenant, Model and ModelDeployment (group ``llmos.dev``, version ``v1alpha1``).

These pydantic models are the single source of the API. ``crdgen`` turns them into ``crds/*.yaml``; the operator
parses the objects it watches with :func:`parse_object`. Python attribute names are snake_case; the JSON (and YAML)
names are camelCase through aliases, and both are accepted when building a model in Python.

Validation rules that the API server must enforce with CEL live next to the type they belong to, as :class:`Rule`
entries in ``__rules__``. Each carries its CEL expression (emitted into ``x-kubernetes-validations``) and the same
check in Python (run by pydantic), so that :func:`parse_object` and the API server refuse the same objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic_core import PydanticCustomError

GROUP = "llmos.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "llmos"

# Regular expressions shared by the schema (Go RE2 syntax: no look-around) and Python.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SOURCE_URI = r"^(file|pvc|s3|gs|hf|oci)://.+$"
PVC_URI = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$"
HF_URI = r"^hf://[^/]+(/[^/]+)?$"
ADAPTER_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_TYPE = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"

SignaturePolicy = Literal["Required", "Disabled"]
SourceVerify = Literal["inPlace", "copy"]
Quantization = Literal["none", "awq", "gptq", "fp8"]
ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Rule:
    """One validation rule of an object: CEL for the API server, the same check in Python for :func:`parse_object`.

    ``check`` gets the validated pydantic object and returns True when the rule holds. ``field_path`` is relative to
    the object (``.engine.tensorParallelSize``) and names the field the API server reports the error on.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def schema(self) -> dict:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _add_rules_to_schema(schema: dict, cls: type) -> None:
    rules: tuple[Rule, ...] = cls.__dict__.get("__rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.schema() for r in rules]


class ApiModel(BaseModel):
    """Base of every API type: camelCase aliases, snake_case accepted, unknown fields ignored, rules checked."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        json_schema_extra=_add_rules_to_schema,
    )
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self):
        for name, info in type(self).model_fields.items():
            # Lists the CRD declares as sets or maps: the API server refuses repeated items, so parse_object does.
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            list_type = extra.get("x-kubernetes-list-type")
            if list_type not in ("set", "map"):
                continue
            seen: set = set()
            for item in getattr(self, name) or ():
                key = item if list_type == "set" else tuple(
                    getattr(item, to_snake(k), None) for k in extra.get("x-kubernetes-list-map-keys", ()))
                if key in seen:
                    shown = item if list_type == "set" else ", ".join(map(str, key))
                    raise PydanticCustomError(
                        "llmos_rule", "{message}",
                        {"message": f"Duplicate value: {shown}", "field_path": f".{info.alias or name}"})
                seen.add(key)
        for rule in type(self).__dict__.get("__rules__", ()):
            if not rule.check(self):
                raise PydanticCustomError(
                    "llmos_rule", "{message}", {"message": rule.message, "field_path": rule.field_path or ""}
                )
        return self

    def to_dict(self) -> dict:
        """The JSON form (camelCase, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


class Condition(ApiModel):
    """A Kubernetes condition (the shape of metav1.Condition)."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE, description="Type of condition in CamelCase.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024, pattern=CONDITION_REASON, description="Machine-readable reason in CamelCase."
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation the condition was computed from."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status last changed (RFC 3339)."
    )


def _conditions_field(description: str = "Current state, as Kubernetes conditions.") -> Any:
    return Field(
        default_factory=list,
        max_length=16,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ObjectMeta(ApiModel):
    """The parts of metadata llmos reads. (The CRD schema leaves metadata to the API server.)"""

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SecretKeyRef(ApiModel):
    """A key of a Secret."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")
    namespace: str | None = Field(
        None, max_length=63, pattern=DNS_LABEL,
        description="Secret namespace: the operator's own namespace (the default); any other is refused.",
    )
    key: str = Field("publicKey", max_length=253, description="Key inside the Secret.")


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the object's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="ConfigMap name.")
    key: str = Field("model.sig", max_length=253, description="Key inside the ConfigMap.")


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


class TenantQuota(ApiModel):
    """What a tenant may use."""

    gpus: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="GPU class → number of GPUs the tenant's deployments may reserve in total.",
        json_schema_extra={"maxProperties": 64},
    )
    max_model_deployments: int | None = Field(
        None, ge=0, description="At most this many admitted ModelDeployments (unset: no limit)."
    )


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


# ---------------------------------------------------------------------------------------------------------------------
# Model


_OCI_NOT_YET = Rule(
    rule="!self.uri.startsWith('oci://')",
    message="oci:// sources are not supported by the runtime yet: use file://, pvc://, s3://, gs:// or hf://",
    field_path=".uri",
    check=lambda s: not s.uri.startswith("oci://"),
)


class ModelSource(ApiModel):
    """Where the weights come from."""

    __rules__ = (
        _OCI_NOT_YET,
        Rule(
            rule=f"!self.uri.startsWith('pvc://') || self.uri.matches('{PVC_URI}')",
            message="a pvc uri is pvc://<claim>/<path>, with claim a PersistentVolumeClaim name",
            field_path=".uri",
            check=lambda s: not s.uri.startswith("pvc://") or re.match(PVC_URI, s.uri) is not None,
        ),
        Rule(
            rule=f"!self.uri.startsWith('hf://') || self.uri.matches('{HF_URI}')",
            message="an hf uri is hf://<org>/<name>",
            field_path=".uri",
            check=lambda s: not s.uri.startswith("hf://") or re.match(HF_URI, s.uri) is not None,
        ),
    )

    uri: str = Field(
        max_length=2048,
        pattern=SOURCE_URI,
        description="file://, pvc://claim/path, s3://, gs://, hf://org/name or oci:// URI.",
    )
    revision: str | None = Field(None, max_length=256, description="Revision (git commit, tag, object version).")
    verify: SourceVerify = Field(
        "inPlace",
        description="inPlace: hash the files where they are (file://, pvc://) and serve them after checking nothing "
        "changed; copy: hash while copying into pod-private storage and serve the copy (for volumes other writers "
        "can change). Remote sources always land in pod-private storage.",
    )


class SignatureSpec(ApiModel):
    """Where the OpenSSF Model Signing bundle is, and whether one is required."""

    __rules__ = (
        Rule(
            rule="!(has(self.bundleRef) && has(self.uri))",
            message="set at most one of bundleRef and uri",
            check=lambda s: not (s.bundle_ref is not None and s.uri is not None),
        ),
        # The operator must never read a path of its own machine because a tenant named it.
        Rule(
            rule="!has(self.uri) || !self.uri.startsWith('file://')",
            message="file:// is not allowed for a signature: put the bundle in a ConfigMap of this namespace and "
            "name it in bundleRef",
            field_path=".uri",
            check=lambda s: s.uri is None or not s.uri.startswith("file://"),
        ),
    )

    bundle_ref: ConfigMapKeyRef | None = Field(None, description="A ConfigMap key holding the bundle (model.sig).")
    uri: str | None = Field(None, max_length=2048, pattern=SOURCE_URI, description="URI of the bundle.")
    policy: SignaturePolicy = Field(
        "Required", description="Required: serve only verified weights. Disabled: skip verification."
    )


class AdapterSource(ApiModel):
    """Where the adapter weights come from."""

    __rules__ = (_OCI_NOT_YET,)

    uri: str = Field(max_length=2048, pattern=SOURCE_URI, description="URI of the adapter weights.")
    revision: str | None = Field(None, max_length=256, description="Revision.")


class ModelAdapter(ApiModel):
    """A LoRA adapter of the model."""

    name: str = Field(max_length=63, pattern=ADAPTER_NAME, description="Name under which the adapter is served.")
    source: AdapterSource
    signature: SignatureSpec | None = Field(None, description="Signature of the adapter weights.")


class ModelSpec(ApiModel):
    """A model: its weights, their signature, and its LoRA adapters."""

    source: ModelSource
    served_name: str | None = Field(
        None, max_length=256, description="Name clients use in the OpenAI API (default: the Model's name)."
    )
    signature: SignatureSpec = Field(
        default_factory=SignatureSpec, description="Signature of the weights.", json_schema_extra={"default": {}}
    )
    quantization: Quantization = Field("none", description="none, awq, gptq or fp8.")
    adapters: list[ModelAdapter] = Field(
        default_factory=list,
        max_length=64,
        description="LoRA adapters deployments may serve.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ModelStatus(ApiModel):
    observed_generation: int | None = Field(None, ge=0, description="The generation this status describes.")
    digest: str | None = Field(
        None, max_length=256, description="Digest of the verified weights being served (sha256:…); a newer revision "
        "replaces it only once verified."
    )
    serving_revision: str | None = Field(
        None, max_length=256, description="source.revision of the weights being served (digest, signer and the rest "
        "of this status describe them)."
    )
    pending_revision: str | None = Field(
        None, max_length=256, description="source.revision of the newest spec while it is not the one served (being "
        "checked, or rejected: see the Verified condition)."
    )
    short_digest: str | None = Field(None, max_length=32, description="The digest's first 12 hex characters.")
    signer: str | None = Field(None, max_length=256, description="Name of the key that signed the weights.")
    key_hint: str | None = Field(
        None, max_length=128, description="sha256 of the signer's public key PEM (the OMS key hint)."
    )
    file_count: int | None = Field(None, ge=0, description="Files the signed manifest covers.")
    conditions: list[Condition] = _conditions_field("Current state; Verified says whether the weights may be served.")


# ---------------------------------------------------------------------------------------------------------------------
# ModelDeployment


class GPUSpec(ApiModel):
    """GPUs of one replica."""

    class_: str = Field(
        alias="class",
        max_length=63,
        pattern=DNS_LABEL,
        description="GPU class from the operator configuration (e.g. h100, l4). Immutable.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "gpu.class is immutable: create a new ModelDeployment to move to another GPU class",
                }
            ]
        },
    )
    count: int = Field(ge=1, le=64, description="GPUs per replica.")


class EngineSpec(ApiModel):
    """vLLM engine settings."""

    tensor_parallel_size: int | None = Field(
        None, ge=1, le=64, description="Tensor parallel size; must divide gpu.count (default: gpu.count)."
    )
    max_model_len: int | None = Field(None, ge=1, description="Maximum context length.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Fraction of GPU memory vLLM may use (0 < x ≤ 1)."
    )
    extra_args: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list,
        max_length=64,
        description="Further vLLM arguments, appended last.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    image: str | None = Field(None, max_length=512, description="Runtime image (default: operator configuration).")


class RolloutSpec(ApiModel):
    """How a new revision replaces the running one."""

    __rules__ = (
        Rule(
            rule="!has(self.maxSurge) || (type(self.maxSurge) == int ? self.maxSurge >= 0 : self.maxSurge == 'auto')",
            message="maxSurge must be a non-negative integer or 'auto'",
            field_path=".maxSurge",
            check=lambda r: (r.max_surge >= 0) if isinstance(r.max_surge, int) else r.max_surge == "auto",
        ),
        Rule(
            rule="!(has(self.maxSurge) && has(self.maxUnavailable) && type(self.maxSurge) == int"
            " && self.maxSurge == 0 && self.maxUnavailable == 0)",
            message="maxSurge and maxUnavailable must not both be 0",
            field_path=".maxUnavailable",
            check=lambda r: not (isinstance(r.max_surge, int) and r.max_surge == 0 and r.max_unavailable == 0),
        ),
    )

    max_surge: int | str = Field(
        "auto",
        description="Extra replicas during a rollout, reserved in the tenant's quota before they start: an integer "
        "(the rollout waits, WaitingForSurgeQuota, until that many replicas' GPUs are free), or auto (one replica "
        "when the tenant has the GPUs to spare, else none).",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    max_unavailable: int = Field(
        0, ge=0, description="Replicas that may be unavailable during a rollout; llmos never raises it. With 0 and no "
        "GPUs to surge, the rollout waits (WaitingForSurgeQuota)."
    )
    progress_deadline_seconds: int = Field(
        2400, ge=60, description="A rollout making no progress for this long has failed (RolloutFailed)."
    )
    auto_rollback: bool = Field(
        False, description="When a rollout fails (no progress within progressDeadlineSeconds, or new pods that fail "
        "verification or crash-loop), render the previous revision again. Otherwise the rollout stops (the "
        "Deployment is paused) and the old pods keep serving. Either way the failed revision is not retried until "
        "the spec (or the Model) changes again."
    )


AutoscalingMetric = Literal["waitingRequests", "runningRequests", "kvCacheUsage"]


class AutoscalingSpec(ApiModel):
    """Replicas that follow the load, inside the tenant's quota (docs/autoscaling.md)."""

    __rules__ = (
        Rule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            field_path=".minReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
        ),
        Rule(
            rule="self.metric != 'kvCacheUsage' || self.target <= 1.0",
            message="the target of kvCacheUsage is a fraction of the KV cache: 0 < target <= 1",
            field_path=".target",
            check=lambda a: a.metric != "kvCacheUsage" or a.target <= 1,
        ),
    )

    min_replicas: int = Field(
        1, ge=1, le=1000, description="Fewest replicas (at least 1: with no replica there is no load to read). "
        "Admitted whole or not at all, like spec.replicas of a deployment without autoscaling."
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas. Replicas above minReplicas are granted as "
                              "the tenant's quota allows; the rest waits in the tenant's queue (ScalingLimited).")
    metric: AutoscalingMetric = Field(
        description="What each ready replica's engine reports, averaged over them: waitingRequests "
        "(vllm:num_requests_waiting), runningRequests (vllm:num_requests_running) or kvCacheUsage "
        "(vllm:kv_cache_usage_perc, a fraction)."
    )
    target: float = Field(gt=0, le=100000, description="The average per ready replica to keep (a fraction of the "
                          "KV cache for kvCacheUsage); desired replicas = ceil(sum over ready replicas / target), "
                          "changed only outside a 10 % tolerance.")
    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale up only to the lowest count recommended within this window."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale down only to the highest count recommended within this window."
    )


class AutoscalingStatus(ApiModel):
    """What the autoscaler decided last (written only when the desired count changes)."""

    desired_replicas: int | None = Field(
        None, ge=0, description="Replicas the autoscaler asks admission for: kept here so that a restarted operator "
        "asks for the same before it has read any load."
    )
    metric_value: float | None = Field(None, description="The metric's average per ready replica at that decision.")
    measured_replicas: int | None = Field(None, ge=0, description="Ready replicas whose metrics that decision read.")
    last_scale_time: str | None = Field(
        None, json_schema_extra={"format": "date-time"}, description="When the desired count last changed."
    )


class ModelDeploymentSpec(ApiModel):
    """A deployment of a Model on GPUs of one class."""

    __rules__ = (
        Rule(
            rule="!has(self.engine) || !has(self.engine.tensorParallelSize)"
            " || self.gpu.count % self.engine.tensorParallelSize == 0",
            message="engine.tensorParallelSize must divide gpu.count (the GPUs of one replica)",
            field_path=".engine.tensorParallelSize",
            check=lambda s: s.engine.tensor_parallel_size is None
            or s.gpu.count % s.engine.tensor_parallel_size == 0,
        ),
    )

    model: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Name of a Model in this namespace.")
    replicas: int = Field(1, ge=0, le=1000, description="Number of replicas (with spec.autoscaling: where it "
                          "starts).")
    gpu: GPUSpec
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine settings.")
    adapters: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list,
        max_length=64,
        description="Names of the Model's adapters to serve.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec, description="Rollout settings.", json_schema_extra={"default": {}}
    )
    autoscaling: AutoscalingSpec | None = Field(
        None, description="Follow the load between minReplicas and maxReplicas (spec.replicas is then only where "
        "it starts; the scale subresource's writes are not used). Not together with an external autoscaler "
        "(HorizontalPodAutoscaler, KEDA) on this object: that is reported (ScalingActive=False) and scaling holds."
    )


class AdapterStatus(ApiModel):
    """How many replicas serve one LoRA adapter, as their runtimes report it."""

    name: str = Field(max_length=63, description="Adapter name.")
    loaded_replicas: int = Field(0, ge=0, description="Pods whose engine has the adapter loaded.")
    failed_replicas: int = Field(0, ge=0, description="Pods that refused or failed to load it.")
    signature: str | None = Field(
        None, max_length=64, description="The operator's verification of its signature bundle: Verified, "
        "SignatureDisabled (served unverified: the tenant allows it), or why not (the runtimes refuse it then).")
    signer: str | None = Field(None, max_length=253, description="The trusted key that signed it, when Verified.")
    message: str | None = Field(None, max_length=1024, description="Why it failed, from one of those pods, or why "
                                "its signature does not verify.")


class ModelDeploymentStatus(ApiModel):
    observed_generation: int | None = Field(None, ge=0, description="The generation this status describes.")
    replicas: int | None = Field(None, ge=0, description="Pods of the deployment.")
    ready_replicas: int | None = Field(None, ge=0, description="Pods ready to serve.")
    updated_replicas: int | None = Field(None, ge=0, description="Pods of the current revision.")
    endpoint: str | None = Field(None, max_length=1024, description="OpenAI-compatible base URL inside the cluster.")
    model_digest: str | None = Field(None, max_length=256, description="Digest of the weights being served.")
    revision: str | None = Field(
        None, max_length=256, description="The revision all ready pods serve: the Model's digest (or, unsigned, the "
        "pod template hash)."
    )
    target_revision: str | None = Field(
        None, max_length=256, description="The revision being rolled out; equal to revision when no rollout runs."
    )
    serving_template: str | None = Field(
        None, max_length=64, description="Pod template hash (llmos.dev/config-hash) of the last complete rollout: "
        "what a rollback returns to."
    )
    serving_template_checksum: str | None = Field(
        None, max_length=80, description="sha256 of the whole pod template of the last complete rollout, as the API "
        "server stored it: a rollback copies only a ReplicaSet template with this checksum (tenants cannot write "
        "status, so a ReplicaSet they forge is never rolled back to)."
    )
    failed_template: str | None = Field(
        None, max_length=64, description="Pod template hash of a rollout that failed; not retried until the spec or "
        "the Model changes."
    )
    queue_position: int | None = Field(None, ge=1, description="Place in the admission queue while waiting.")
    desired_replicas: int | None = Field(
        None, ge=0, description="Replicas wanted: spec.replicas, or the autoscaler's count (status.autoscaling)."
    )
    granted_replicas: int | None = Field(
        None, ge=0, description="Replicas the tenant's quota reserves GPUs for (fewer than desired while the rest "
        "waits: ScalingLimited)."
    )
    autoscaling: AutoscalingStatus | None = Field(None, description="The autoscaler's last decision.")
    selector: str | None = Field(None, max_length=1024, description="Label selector of the pods (scale subresource).")
    gpu_summary: str | None = Field(None, max_length=128, description='GPU class × GPUs per replica, e.g. "h100×2".')
    remote_code: bool | None = Field(
        None, description="True when the engine runs code shipped with the weights (--trust-remote-code, allowed by "
        "the tenant's policy)."
    )
    ready_summary: str | None = Field(None, max_length=64, description='Ready/desired replicas, e.g. "1/2".')
    adapters: list[AdapterStatus] = Field(
        default_factory=list,
        max_length=64,
        description="LoRA adapters of spec.adapters and the replicas that serve them.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    conditions: list[Condition] = _conditions_field(
        "Ready, QuotaAdmitted, ModelVerified, Progressing, Degraded, ScalingActive and ScalingLimited."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Resources


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0

    def schema(self) -> dict:
        out = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


def _condition_column(name: str, cond: str, field: str = "status", priority: int = 0) -> PrinterColumn:
    return PrinterColumn(
        name, "string", f'.status.conditions[?(@.type=="{cond}")].{field}', f"{cond} condition {field}", priority
    )


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


class Resource(ApiModel):
    """Common part of the three kinds."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]]
    SCALE: ClassVar[dict | None] = None
    # Restriction of metadata.name (the only part of metadata a CRD schema may restrict), checked by parse_as too.
    NAME_SCHEMA: ClassVar[dict | None] = None

    api_version: str = API_VERSION
    kind: str = ""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @property
    def key(self) -> str:
        """``namespace/name`` (or ``name`` for a cluster-scoped object)."""
        ns = self.metadata.namespace
        return f"{ns}/{self.metadata.name}" if ns else self.metadata.name


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


class Model(Resource):
    """A model: where its weights come from, who must have signed them, and its LoRA adapters."""

    KIND = "Model"
    PLURAL = "models"
    SCOPE = "Namespaced"
    SHORT_NAMES = ("mdl",)
    PRINTER_COLUMNS = (
        PrinterColumn("Source", "string", ".spec.source.uri", "Where the weights come from"),
        _condition_column("Verified", "Verified"),
        PrinterColumn("Signer", "string", ".status.signer", "Key that signed the weights"),
        PrinterColumn("Digest", "string", ".status.shortDigest", "Digest of the verified weights (short)"),
        PrinterColumn("Full-Digest", "string", ".status.digest", "Digest of the verified weights", priority=1),
        _condition_column("Reason", "Verified", "reason", priority=1),
        _AGE,
    )

    kind: str = "Model"
    spec: ModelSpec
    status: ModelStatus = Field(default_factory=ModelStatus)

    @property
    def served_name(self) -> str:
        return self.spec.served_name or self.metadata.name


class ModelDeployment(Resource):
    """A Model served by vLLM on a number of replicas, each with GPUs of one class."""

    KIND = "ModelDeployment"
    PLURAL = "modeldeployments"
    SCOPE = "Namespaced"
    SHORT_NAMES = ("mdep",)
    PRINTER_COLUMNS = (
        PrinterColumn("Model", "string", ".spec.model", "Model served"),
        PrinterColumn("GPU", "string", ".status.gpuSummary", "GPU class × GPUs per replica"),
        PrinterColumn("Desired", "integer", ".status.desiredReplicas", "Replicas wanted (spec or autoscaler)"),
        PrinterColumn("Granted", "integer", ".status.grantedReplicas", "Replicas the quota reserves GPUs for"),
        PrinterColumn("Ready", "string", ".status.readySummary", "Ready/desired replicas"),
        _condition_column("Admitted", "QuotaAdmitted"),
        _condition_column("Status", "Ready", "reason", priority=1),
        PrinterColumn("Queue", "integer", ".status.queuePosition", "Place in the admission queue", priority=1),
        PrinterColumn("Endpoint", "string", ".status.endpoint", "OpenAI base URL", priority=1),
        _AGE,
    )
    SCALE = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    # The name also names the Service, so it must be a DNS-1035 label.
    NAME_SCHEMA = {
        "description": "A DNS-1035 label: it also names the Service.",
        "type": "string",
        "maxLength": 63,
        "pattern": DNS_1035_LABEL,
    }

    kind: str = "ModelDeployment"
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)

    @property
    def gpus_demanded(self) -> int:
        """GPUs the spec asks for: replicas × gpu.count."""
        return self.spec.replicas * self.spec.gpu.count

    @property
    def tensor_parallel_size(self) -> int:
        return self.spec.engine.tensor_parallel_size or self.spec.gpu.count


KINDS: dict[str, type[Resource]] = {cls.KIND: cls for cls in (Tenant, Model, ModelDeployment)}


# ---------------------------------------------------------------------------------------------------------------------
# Parsing raw objects


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. spec.gpu.count
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidObject(ValueError):
    """A raw object does not match the API. ``errors`` name each field path, as the API server would."""

    def __init__(self, kind: str, name: str, errors: list[FieldError]):
        self.kind, self.name, self.errors = kind, name, errors
        super().__init__(f"{kind} {name!r} is invalid: " + "; ".join(str(e) for e in errors))


def _loc_to_path(loc: tuple, extra: str = "") -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    if extra:
        out += extra if out else extra.lstrip(".")
    return out


T = TypeVar("T", bound=Resource)


def parse_as(cls: type[T], raw: Mapping[str, Any]) -> T:
    """Validate a raw object (as kopf or the API returns it) into ``cls``; raise :class:`InvalidObject`."""
    name = ((raw.get("metadata") or {}).get("name")) or ""
    try:
        obj = cls.model_validate(raw)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            extra = (err.get("ctx") or {}).get("field_path", "") if err["type"] == "llmos_rule" else ""
            errors.append(FieldError(_loc_to_path(err["loc"], extra), err["msg"]))
        raise InvalidObject(cls.KIND, name, errors) from None
    rule = cls.NAME_SCHEMA
    if rule and (len(obj.metadata.name) > rule["maxLength"] or not re.match(rule["pattern"], obj.metadata.name)):
        raise InvalidObject(
            cls.KIND, name, [FieldError("metadata.name", f"must match {rule['pattern']} (at most {rule['maxLength']} characters)")]
        )
    return obj


def parse_object(raw: Mapping[str, Any]) -> Resource:
    """Parse a Tenant, Model or ModelDeployment by its ``kind``."""
    kind = raw.get("kind")
    cls = KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise InvalidObject(str(kind), (raw.get("metadata") or {}).get("name", ""), [FieldError("kind", "unknown kind")])
    return parse_as(cls, raw)
