"""Desired children of an admitted ModelDeployment, as plain dicts ready to apply.

Children (all in the ModelDeployment's namespace, without ownerReferences — the handler adds them):

- ConfigMap ``<model>-trust-<content hash>``: ``model.sig`` (the signature bundle) and ``signer.pem`` (the signer's
  public key), mounted at /etc/llmos/trust. The Model's, not the deployment's: every deployment of the same Model
  revision mounts the same one (the Model is its owner). Immutable and named by its content, so each revision's pods
  keep the bundle they were made for (the controller deletes those no ReplicaSet or pod uses any more). None for an
  unsigned Model without adapters.
- ConfigMap ``<name>-adapters`` (only when the Model declares adapters): ``adapters.json``, the adapter set wanted,
  and ``<adapter>.sig``, the signature bundle of each adapter, mounted at /etc/llmos/adapters. The runtime watches
  it and loads/unloads adapters live, so a change does not restart pods. ``adapters.json`` is
  ``{"adapters": [{"name", "source": {"uri", "revision"?}, "signature": "<adapter>.sig" | null}]}``: the signature
  is a path relative to the file (null when the adapter's policy, else the Model's, is Disabled); a required
  signature whose bundle the operator did not supply is written as the API's object, which the runtime refuses
  for that adapter alone (fail closed, reason reported).
- apps/v1 Deployment ``<name>``: one container ``runtime`` running ``llmos-runtime serve … -- <vLLM args>``.
- v1 Service ``<name>``: ClusterIP, port ``openai`` (8000).
- policy/v1 PodDisruptionBudget ``<name>``: at most one pod evicted at a time; only for more than one replica (for
  one, "at most one" allows every eviction: the object would cost writes and protect nothing).

The Deployment's rollout strategy is the controller's decision (``render/rollout.py``): the surge it reserved in the
tenant's quota and the user's ``maxUnavailable``, never more.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import Any

from llmos_runtime.engine_args import REMOTE_CODE_FLAG, has_flag
from llmos_runtime.termination import TerminationBudget

from ..api.types import Model, ModelDeployment
from ..config import GPUClass, OperatorConfig
from ..core.errors import RenderError
from ..core.placement import pod_placement
from ..core.rollout import idle_strategy
from .common import (
    ADAPTERS_DIR,
    ADAPTERS_FILE,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_MODEL_DIGEST,
    CACHE_DIR,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_NAME,
    MANAGED_BY,
    PVC_ROOT,
    RUNTIME_APP,
    RUNTIME_CONTAINER,
    RUNTIME_SERVICE_ACCOUNT,
    SIGNATURE_FILE,
    SIGNER_KEY_FILE,
    TRUST_DIR,
    adapters_configmap_name,
    labels,
    pvc_claim,
    selector_labels,
    stable_hash,
    trust_configmap_name,
)

RUNTIME_UID = 1000
REVISION_HISTORY_LIMIT = 5
STARTUP_PERIOD_SECONDS = 10


# ---------------------------------------------------------------------------------------------------------------------
# The runtime's command line


def _signature_enabled(model: Model) -> bool:
    return model.spec.signature.policy != "Disabled"


def wanted_adapters(mdep: ModelDeployment, model: Model) -> list[dict[str, Any]]:
    """The Model's adapters the deployment asks for, in the deployment's order, as declared (``name``, ``source``,
    ``signature`` when set). Raises RenderError(UnknownAdapter)."""
    declared = {a.name: a for a in model.spec.adapters}
    missing = [name for name in mdep.spec.adapters if name not in declared]
    if missing:
        raise RenderError(
            "UnknownAdapter",
            f"adapters {', '.join(missing)} are not declared by Model {model.metadata.name} "
            f"(declared: {', '.join(declared) or 'none'})",
        )
    out = []
    for name in mdep.spec.adapters:
        adapter = declared[name]
        item: dict[str, Any] = {"name": name, "source": adapter.source.to_dict()}
        if adapter.signature is not None:
            item["signature"] = adapter.signature.to_dict()
        out.append(item)
    return out


def engine_args(mdep: ModelDeployment, model: Model) -> list[str]:
    """vLLM arguments, after the runtime's ``--``."""
    engine = mdep.spec.engine
    args = ["--tensor-parallel-size", str(mdep.tensor_parallel_size)]
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    if engine.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    if model.spec.quantization != "none":
        args += ["--quantization", model.spec.quantization]
    if mdep.spec.adapters:
        # Slots for the Model's whole adapter list, so that changing which adapters are served (adapters.json,
        # loaded live) never changes the pod template and restarts pods.
        args += ["--enable-lora", "--max-loras", str(max(len(model.spec.adapters), len(mdep.spec.adapters)))]
    return args + list(engine.extra_args)


def tenant_key_file(key_name: str) -> str:
    return f"key-{key_name}.pem"


def runtime_command(mdep: ModelDeployment, model: Model, config: OperatorConfig,
                    tenant_keys: Iterable[str] = ()) -> list[str]:
    """The container's command: the runtime CLI, then ``--`` and the vLLM arguments. ``tenant_keys``: names of the
    tenant's trusted keys (files of the trust ConfigMap): adapters may be signed by any of them."""
    cmd = ["llmos-runtime", "serve", "--source", model.spec.source.uri]
    if model.spec.source.revision:
        cmd += ["--revision", model.spec.source.revision]
    if model.spec.source.verify == "copy":
        cmd += ["--verify-mode", "copy"]
    cmd += ["--served-name", model.served_name]
    if _signature_enabled(model):
        cmd += ["--signature", f"{TRUST_DIR}/{SIGNATURE_FILE}", "--trusted-key", f"{TRUST_DIR}/{SIGNER_KEY_FILE}"]
        if model.status.digest:
            # Ready means this revision: a runtime that verified other weights refuses to start.
            cmd += ["--expect-digest", model.status.digest]
    if mdep.spec.adapters:
        for key_name in sorted(tenant_keys):
            cmd += ["--trusted-key", f"{TRUST_DIR}/{tenant_key_file(key_name)}"]
    # The runtime refuses non-allow-listed engine flags itself; it must know what the platform added or allowed.
    for flag in config.engine.extra_allowed_flags:
        cmd += ["--allow-engine-flag", flag]
    if has_flag(mdep.spec.engine.extra_args, REMOTE_CODE_FLAG):
        cmd += ["--allow-remote-code"]  # admission let it through: the tenant's policy allows remote code
    serving = mdep.spec.runtime
    for flag, value in (("--watchdog-unready-after", serving.watchdog_unready_seconds),
                        ("--watchdog-restart-after", serving.watchdog_restart_seconds),
                        ("--drain-grace", serving.drain_grace_seconds), ("--keep-alive", serving.keep_alive_seconds)):
        if value is not None:
            cmd += [flag, str(value)]
    if model.spec.adapters:
        cmd += ["--adapters-file", f"{ADAPTERS_DIR}/{ADAPTERS_FILE}"]
    cmd += [
        "--cache-dir", CACHE_DIR,
        "--port", str(config.runtime.openai_port),
        "--health-port", str(config.runtime.health_port),
        "--",
    ]
    return cmd + engine_args(mdep, model)


def termination_budget(mdep: ModelDeployment) -> TerminationBudget:
    """The pod's stop timeline (llmos_runtime.termination): preStop, drain grace, drain, flush, engine stop; the
    rendered terminationGracePeriodSeconds is its total."""
    grace = mdep.spec.runtime.drain_grace_seconds
    return TerminationBudget() if grace is None else TerminationBudget(drain_grace=float(grace))


# ---------------------------------------------------------------------------------------------------------------------
# Children


def _meta(mdep: ModelDeployment, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": mdep.metadata.namespace, "labels": labels(mdep.metadata.name)}


def _text_or_binary(data: dict, binary: dict, key: str, value: bytes | str | None) -> None:
    if value is None:
        return
    if isinstance(value, str):
        data[key] = value
        return
    try:
        data[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        binary[key] = base64.b64encode(value).decode("ascii")


def _configmap(mdep: ModelDeployment, name: str, data: dict[str, str], binary: dict[str, str]) -> dict:
    cm: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(mdep, name), "data": data}
    if binary:
        cm["binaryData"] = binary
    return cm



def render_trust_configmap(
    model: Model, bundle: bytes | str | None, signer_pem: bytes | str | None,
    tenant_keys: Mapping[str, bytes | str] | None = None,
) -> dict | None:
    """The Model's ConfigMap ``<model>-trust-<content hash>``, shared by its deployments (the Model is its owner):
    ``model.sig`` and ``signer.pem`` (absent when the signature is Disabled), and ``key-<name>.pem`` for each key the
    tenant trusts when the Model declares adapters (any of them may sign one). None when there is nothing to carry
    (an unsigned Model without adapters)."""
    if _signature_enabled(model) and (bundle is None or signer_pem is None):
        raise RenderError(
            "SignatureUnavailable",
            f"Model {model.metadata.name} requires a signature but the bundle or the signer's key is not known yet",
        )
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    if _signature_enabled(model):
        _text_or_binary(data, binary, SIGNATURE_FILE, bundle)
        _text_or_binary(data, binary, SIGNER_KEY_FILE, signer_pem)
    if model.spec.adapters:
        for key_name, pem in sorted((tenant_keys or {}).items()):
            _text_or_binary(data, binary, tenant_key_file(key_name), pem)
    if not data and not binary:
        return None
    name = trust_configmap_name(model.metadata.name, stable_hash(data, binary))
    cm: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "data": data, "immutable": True, "metadata": {
        "name": name, "namespace": model.metadata.namespace,
        "labels": {LABEL_NAME: RUNTIME_APP, LABEL_MANAGED_BY: MANAGED_BY, LABEL_MODEL: model.metadata.name}}}
    if binary:
        cm["binaryData"] = binary
    if model.status.digest and _signature_enabled(model):
        cm["metadata"]["annotations"] = {ANNOTATION_MODEL_DIGEST: model.status.digest}
    return cm


def render_adapters_configmap(
    mdep: ModelDeployment, model: Model, adapter_bundles: Mapping[str, bytes | str] | None = None
) -> dict:
    """ConfigMap ``<name>-adapters``: ``adapters.json`` and a ``<adapter>.sig`` per bundle in ``adapter_bundles``
    (adapter name → its signature bundle). See the module docstring for the format."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    items = []
    declared = {a.name: a for a in model.spec.adapters}
    for item in wanted_adapters(mdep, model):
        spec = declared[item["name"]].signature
        policy = spec.policy if spec is not None else model.spec.signature.policy
        if policy == "Disabled":
            item["signature"] = None
        elif adapter_bundles and item["name"] in adapter_bundles:
            key = f"{item['name']}.sig"
            _text_or_binary(data, binary, key, adapter_bundles[item["name"]])
            item["signature"] = key
        else:
            item["signature"] = spec.to_dict() if spec is not None else {"policy": "Required"}
        items.append(item)
    data[ADAPTERS_FILE] = json.dumps({"adapters": items}, indent=2, sort_keys=True) + "\n"
    return _configmap(mdep, adapters_configmap_name(mdep.metadata.name), data, binary)


def pod_requests(mdep: ModelDeployment, gpu_class: GPUClass, config: OperatorConfig) -> dict[str, str]:
    """Resource requests of one pod (GPUs of the class's resource, CPU and memory per GPU)."""
    count = mdep.spec.gpu.count
    out = {gpu_class.resource_name: str(count)}
    if config.runtime.cpu_per_gpu:
        out["cpu"] = str(count * config.runtime.cpu_per_gpu)
    if config.runtime.memory_gib_per_gpu:
        out["memory"] = f"{count * config.runtime.memory_gib_per_gpu}Gi"
    return out


def _pvc_volumes(mdep: ModelDeployment, model: Model) -> tuple[list[dict], list[dict]]:
    """Read-only PVC volumes for pvc:// sources of the model and of the adapters served: /mnt/pvc/<claim>."""
    uris = [model.spec.source.uri] + [a["source"]["uri"] for a in wanted_adapters(mdep, model)]
    claims = sorted({c[0] for c in (pvc_claim(u) for u in uris) if c})
    volumes, mounts = [], []
    for claim in claims:
        name = f"pvc-{claim}" if len(claim) <= 59 else f"pvc-{stable_hash(claim, length=12)}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def _http_probe(path: str, period: int, failures: int, timeout: int) -> dict:
    return {
        "httpGet": {"path": path, "port": "health", "scheme": "HTTP"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
        "successThreshold": 1,
    }


def render_deployment(
    mdep: ModelDeployment,
    model: Model,
    gpu_class: GPUClass,
    config: OperatorConfig,
    *,
    replicas: int | None = None,
    bundle: bytes | str | None = None,
    signer_pem: bytes | str | None = None,
    tenant_keys: Iterable[str] = (),
    trust_configmap: str | None = None,
) -> dict:
    """The apps/v1 Deployment running the runtime. ``replicas``: what admission granted (default: the spec's).
    ``trust_configmap``: the name of the trust ConfigMap rendered with it. The strategy is the idle one
    (``idle_strategy``); the rollout planner sets another while it rolls."""
    if gpu_class.name and gpu_class.name != mdep.spec.gpu.class_:
        raise ValueError(f"GPU class {gpu_class.name} given for a deployment of class {mdep.spec.gpu.class_}")
    name = mdep.metadata.name
    runtime = config.runtime
    count = mdep.spec.gpu.count
    selector = selector_labels(name)
    requests = pod_requests(mdep, gpu_class, config)
    pvc_volumes, pvc_mounts = _pvc_volumes(mdep, model)
    budget = termination_budget(mdep)

    if trust_configmap is None:
        trust = render_trust_configmap(model, bundle, signer_pem)
        trust_configmap = trust["metadata"]["name"] if trust is not None else None
    volumes: list[dict[str, Any]] = [{"name": "cache", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "cache", "mountPath": CACHE_DIR}]
    if trust_configmap is not None:
        volumes.append({"name": "trust", "configMap": {"name": trust_configmap}})
        mounts.append({"name": "trust", "mountPath": TRUST_DIR, "readOnly": True})
    if model.spec.adapters:  # adapters are loaded live: the ConfigMap is there whether any is served yet or not
        volumes.append({"name": "adapters", "configMap": {"name": adapters_configmap_name(name)}})
        mounts.append({"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True})
    if mdep.tensor_parallel_size > 1 and runtime.shm_size_gib:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{runtime.shm_size_gib}Gi"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    volumes += pvc_volumes
    mounts += pvc_mounts

    container = {
        "name": RUNTIME_CONTAINER,
        "image": mdep.spec.engine.image or runtime.image,
        "imagePullPolicy": runtime.image_pull_policy,
        "command": runtime_command(mdep, model, config, tenant_keys),
        # The runtime sets the engine's environment itself (runtime LoRA updates only where adapters are served).
        "env": [
            # The runtime reports its loaded adapters in an annotation of its own pod.
            {"name": "LLMOS_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "LLMOS_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ],
        "ports": [
            {"name": "openai", "containerPort": runtime.openai_port, "protocol": "TCP"},
            {"name": "health", "containerPort": runtime.health_port, "protocol": "TCP"},
        ],
        "resources": {"requests": requests, "limits": {gpu_class.resource_name: str(count)}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "startupProbe": _http_probe(
            "/healthz", STARTUP_PERIOD_SECONDS, -(-runtime.startup_timeout_seconds // STARTUP_PERIOD_SECONDS), 5
        ),
        # The runtime judges its engine itself (its watchdog turns /readyz red for a hung or silent engine after
        # 30 s, /healthz after 120 s, never for a slow answer under load; startup phases have budgets): the kubelet
        # acts on its answer promptly.
        "readinessProbe": _http_probe("/readyz", 5, 2, 3),
        "livenessProbe": _http_probe("/healthz", 10, 3, 5),
        # endpoints start dropping the pod before it gets SIGTERM (then it serves on for the drain grace)
        "lifecycle": {"preStop": {"sleep": {"seconds": round(budget.pre_stop)}}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": RUNTIME_SERVICE_ACCOUNT,
        # A token only where the runtime reports adapters on its own pod (an admission policy of the chart limits
        # it to that annotation); a pod without adapters needs no API access at all.
        "automountServiceAccountToken": bool(mdep.spec.adapters),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": budget.grace_period_seconds(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNTIME_UID,
            "runAsGroup": RUNTIME_UID,
            "fsGroup": RUNTIME_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **pod_placement(gpu_class, selector),
        "containers": [container],
        "volumes": volumes,
    }
    # A new model revision (digest, signature, source) or any change of the rendered pod rolls the Deployment.
    config_hash = stable_hash(
        model.status.digest,
        model.spec.source.to_dict(),
        stable_hash(bundle.encode() if isinstance(bundle, str) else bundle or b""),
        stable_hash(signer_pem.encode() if isinstance(signer_pem, str) else signer_pem or b""),
        pod_spec,
    )
    annotations = {ANNOTATION_CONFIG_HASH: config_hash}
    if model.status.digest:
        annotations[ANNOTATION_MODEL_DIGEST] = model.status.digest
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(mdep, name),
        "spec": {
            "replicas": mdep.spec.replicas if replicas is None else replicas,
            "paused": False,  # a failed rollout without autoRollback is paused (render/rollout.py)
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": idle_strategy(mdep)},
            "progressDeadlineSeconds": mdep.spec.rollout.progress_deadline_seconds,
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "template": {
                "metadata": {"labels": labels(name), "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def render_service(mdep: ModelDeployment, config: OperatorConfig) -> dict:
    """ClusterIP Service on the OpenAI port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(mdep, mdep.metadata.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(mdep.metadata.name),
            "ports": [
                {
                    "name": "openai",
                    "port": config.runtime.openai_port,
                    "targetPort": "openai",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def render_pdb(mdep: ModelDeployment) -> dict:
    """At most one pod evicted at a time; pods that are not ready never block a node drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(mdep, mdep.metadata.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(mdep.metadata.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_children(
    mdep: ModelDeployment,
    model: Model,
    gpu_class: GPUClass,
    config: OperatorConfig,
    *,
    replicas: int | None = None,
    bundle: bytes | str | None = None,
    signer_pem: bytes | str | None = None,
    adapter_bundles: Mapping[str, bytes | str] | None = None,
    tenant_keys: Mapping[str, bytes | str] | None = None,
) -> list[dict]:
    """Every child of an admitted ModelDeployment, in apply order: ConfigMaps, Deployment, Service, and a PDB when
    more than one replica runs.

    ``adapter_bundles``: adapter name → its signature bundle, for the adapters whose signature is required.
    ``tenant_keys``: key name → PEM of every key the tenant trusts (adapters may be signed by any of them).

    Raises :class:`RenderError` (reason ``UnknownAdapter`` or ``SignatureUnavailable``) when the spec cannot be
    served; put it in a condition.
    """
    trust = render_trust_configmap(model, bundle, signer_pem, tenant_keys)
    children = [trust] if trust is not None else []
    if model.spec.adapters:
        children.append(render_adapters_configmap(mdep, model, adapter_bundles))
    children += [
        render_deployment(
            mdep, model, gpu_class, config,
            replicas=replicas, bundle=bundle, signer_pem=signer_pem, tenant_keys=list(tenant_keys or {}),
            trust_configmap=trust["metadata"]["name"] if trust is not None else None,
        ),
        render_service(mdep, config),
    ]
    if (mdep.spec.replicas if replicas is None else replicas) > 1:
        children.append(render_pdb(mdep))
    return children
