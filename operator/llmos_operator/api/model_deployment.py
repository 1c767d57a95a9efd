"""The ModelDeployment kind: which Model, replicas, GPU class and count, engine arguments, rollout, runtime."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .autoscaling import AutoscalingSpec, AutoscalingStatus
from .base import (
    _AGE,
    DNS_1035_LABEL,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ApiModel,
    Condition,
    PrinterColumn,
    Resource,
    Rule,
    _condition_column,
    _conditions_field,
)

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


class RuntimeSpec(ApiModel):
    """How each model pod judges its engine and stops (unset: the runtime's defaults, docs/runtime.md)."""

    __rules__ = (
        Rule(
            rule="(has(self.watchdogRestartSeconds) ? self.watchdogRestartSeconds : 120)"
            " > (has(self.watchdogUnreadySeconds) ? self.watchdogUnreadySeconds : 30)",
            message="watchdogRestartSeconds must be greater than watchdogUnreadySeconds (defaults 120 and 30)",
            field_path=".watchdogRestartSeconds",
            check=lambda s: (s.watchdog_restart_seconds or 120) > (s.watchdog_unready_seconds or 30),
        ),
    )

    watchdog_unready_seconds: int | None = Field(
        None, ge=5, le=3600, description="Requests in flight and no token generated (or no answer from the engine) "
        "for this long: the pod leaves the Service's endpoints until the engine moves again (default 30).",
    )
    watchdog_restart_seconds: int | None = Field(
        None, ge=10, le=86400, description="Requests in flight and no token generated (or no answer from the engine) "
        "for this long: the container is restarted, its termination message saying why (default 120).",
    )
    drain_grace_seconds: int | None = Field(
        None, ge=0, le=600, description="After SIGTERM, new requests are still served this long (answers close "
        "their connection) while load balancers learn the pod is going; at least the time endpoint removal takes "
        "to reach them (default 10). terminationGracePeriodSeconds grows with it.",
    )
    keep_alive_seconds: int | None = Field(
        None, ge=1, le=3600, description="Idle keep-alive of client connections on the pod's ports; longer than the "
        "load balancers' in front (default 75).",
    )


class AccessSpec(ApiModel):
    """Who may call the model."""

    api_keys: str = Field(
        "Required", pattern="^(Required|Disabled)$", max_length=8,
        description="Required: every request carries an API key of this namespace (a Secret of type "
        "llmos.dev/api-key) allowed for this model, and its limits apply; Disabled: anyone the network lets reach "
        "the pods may call it (the Tenant's policy may forbid this).",
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
    runtime: RuntimeSpec = Field(
        default_factory=RuntimeSpec, description="The model pods' runtime: engine watchdog, drain, keep-alive."
    )
    access: AccessSpec = Field(
        default_factory=AccessSpec, description="API keys.", json_schema_extra={"default": {}}
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
