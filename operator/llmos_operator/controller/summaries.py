"""How the controller's store keeps what it watches: summaries a fifth of the size or less of the objects (at 1,000
deployments a whole Pod or ReplicaSet is ~35 KB of Python objects, most of it container specs nobody reads). A
summarised object carries ``SUMMARY``: it is not the whole object; read it live when that matters (a rollback)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cachetools import LRUCache

from ..api.names import LABEL_MODEL_DEPLOYMENT
from ..core.rollout import TEMPLATE_CHECKSUM, template_checksum
from ..core.workloads import gpus_requested


def node_summary(node: dict) -> dict:
    """What placement reads of a node; the rest (images, conditions, managed fields) is dropped."""
    return {
        "kind": "Node",
        "metadata": {"name": node["metadata"]["name"], "labels": node["metadata"].get("labels") or {},
                     "resourceVersion": node["metadata"].get("resourceVersion")},
        "spec": {"taints": (node.get("spec") or {}).get("taints") or [],
                 "unschedulable": (node.get("spec") or {}).get("unschedulable", False)},
        "status": {"allocatable": (node.get("status") or {}).get("allocatable") or {}},
    }


def metadata_summary(obj: dict) -> dict:
    """What a metadata-only informer keeps: enough to tell that an object exists and changed."""
    meta = obj.get("metadata") or {}
    return {"kind": obj.get("kind"), "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                                                  "resourceVersion": meta.get("resourceVersion")}}


def without_managed_fields(obj: dict) -> dict:
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


# (uid, generation) → the sha256 of a Deployment's or ReplicaSet's pod template: a template changes only with the
# generation, and every status write of a rollout sends the whole object again (hashing it each time was ~5 % of the
# operator's CPU in a burst).
_CHECKSUMS: LRUCache = LRUCache(maxsize=50_000)


def _checksum(obj: dict) -> str | None:
    meta = obj.get("metadata") or {}
    key = (meta.get("uid"), meta.get("generation"))
    if key[0] is None or key[1] is None:
        return template_checksum(obj)
    found = _CHECKSUMS.get(key)
    if found is None:
        found = _CHECKSUMS[key] = template_checksum(obj)
    return found


SUMMARY = "llmosSummary"  # set on a summarized object: it is not the whole object (read it live when that matters)
_KEPT_METADATA = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                  "deletionTimestamp", "labels", "annotations", "ownerReferences")


def _metadata(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in _KEPT_METADATA if k in meta}


def _configmap_volumes(pod_spec: dict) -> list[dict]:
    """The ConfigMaps a pod (template) mounts: trust ConfigMaps are collected only once nothing names them."""
    return [{"name": v.get("name"), "configMap": {"name": v["configMap"].get("name")}}
            for v in pod_spec.get("volumes") or [] if v.get("configMap")]


def pod_summary(pod: dict) -> dict:
    """What the controller reads of a pod: labels and annotations (template hash, adapter report), owners, deletion,
    node (or the node selector and required affinity, to tell the GPU class it asks for), mounted ConfigMaps, its
    containers' and init containers' resources (the GPUs it holds), phase, conditions, the containers' states
    (exit codes, messages, restarts) and its IP (where the autoscaler reads the engine's load)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    states = [{k: cs[k] for k in ("name", "ready", "started", "restartCount", "state", "lastState") if k in cs}
              for cs in status.get("containerStatuses") or []]
    placement = {k: spec[k] for k in ("nodeSelector", "affinity") if spec.get(k)}
    return {"kind": "Pod", SUMMARY: True, "metadata": _metadata(pod),
            "spec": {"nodeName": spec.get("nodeName"), "volumes": _configmap_volumes(spec), **placement,
                     "containers": [{"name": c.get("name"), "resources": c.get("resources") or {}}
                                    for c in spec.get("containers") or []],
                     "initContainers": [{"name": c.get("name"), "resources": c.get("resources") or {}}
                                        for c in spec.get("initContainers") or []]},
            "status": {"phase": status.get("phase"), "conditions": status.get("conditions") or [],
                       "containerStatuses": states, "podIP": status.get("podIP")}}


def pods_worth_keeping(gpu_resources: Iterable[str]) -> Callable[[dict], dict | None]:
    """The Pod store's filter and summary: llmos's pods, and every pod that requests a GPU resource (an intruder
    carries no llmos label); other pods are not kept."""
    resources = tuple(gpu_resources)

    def keep(pod: dict) -> dict | None:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if LABEL_MODEL_DEPLOYMENT in labels or gpus_requested(pod, resources):
            return pod_summary(pod)
        return None

    return keep


def namespace_summary(ns: dict) -> dict:
    """A namespace's name, labels (tenant, released), annotations (adopt) and phase."""
    meta = ns.get("metadata") or {}
    return {"kind": "Namespace", "metadata": {k: meta[k] for k in ("name", "uid", "resourceVersion", "labels",
                                                                   "annotations", "deletionTimestamp") if k in meta},
            "status": {"phase": (ns.get("status") or {}).get("phase")}}


def replica_set_summary(rs: dict) -> dict:
    """A ReplicaSet without its pod spec (the template's metadata, its checksum and ConfigMap volumes stay): a
    rollback, the one reader of a whole old template, reads that ReplicaSet live."""
    spec = rs.get("spec") or {}
    template = spec.get("template") or {}
    return {"kind": "ReplicaSet", SUMMARY: True, TEMPLATE_CHECKSUM: _checksum(rs), "metadata": _metadata(rs),
            "spec": {"replicas": spec.get("replicas"),
                     "template": {"metadata": template.get("metadata") or {},
                                  "spec": {"volumes": _configmap_volumes(template.get("spec") or {})}}},
            "status": rs.get("status") or {}}


def deployment_summary(deployment: dict) -> dict:
    """A child Deployment as the controller reads it: replicas, paused, strategy, progress deadline, the template's
    metadata (hashes, digest), the template's checksum, its ConfigMap volumes and each container's name and resources
    (GPUs per pod), status."""
    spec = deployment.get("spec") or {}
    template = spec.get("template") or {}
    pod_spec = template.get("spec") or {}
    return {"kind": "Deployment", SUMMARY: True, TEMPLATE_CHECKSUM: _checksum(deployment),
            "metadata": _metadata(deployment),
            "spec": {**{k: spec[k] for k in ("replicas", "paused", "strategy", "progressDeadlineSeconds") if k in spec},
                     "template": {"metadata": template.get("metadata") or {},
                                  "spec": {"volumes": _configmap_volumes(pod_spec),
                                           "containers": [{"name": c.get("name"), "resources": c.get("resources")}
                                                          for c in pod_spec.get("containers") or []]}}},
            "status": deployment.get("status") or {}}


def autoscaler_summary(hpa: dict) -> dict:
    """A HorizontalPodAutoscaler's name and what it scales (one on a ModelDeployment with spec.autoscaling is
    reported, not left to fight llmos's autoscaler)."""
    target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
    return {"kind": "HorizontalPodAutoscaler", "metadata": _metadata(hpa),
            "spec": {"scaleTargetRef": {k: target.get(k) for k in ("apiVersion", "kind", "name")}}}


def child_summary(obj: dict) -> dict:
    """The metadata of a child the operator writes and never reads back (ConfigMaps, Services, PDBs): enough to tell
    that it exists, whose it is and whether someone changed it since (generation or resourceVersion)."""
    return {"kind": obj.get("kind"), SUMMARY: True, "metadata": _metadata(obj)}


