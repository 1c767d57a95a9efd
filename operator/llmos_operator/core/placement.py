"""GPU placement: where a ModelDeployment's pods may run, and whether they ever can. No kopf, no I/O.

- :func:`pod_placement` — the ``affinity``, ``tolerations`` and ``topologySpreadConstraints`` of a pod spec for a
  GPU class (required node affinity on the class's node labels, its tolerations, spread across nodes).
- :func:`can_ever_fit` — given the cluster's nodes, could any node of the class *ever* hold one pod (its allocatable
  GPUs, CPU and memory, not what is free now)? A ``False`` becomes ``Ready=False, reason=Unschedulable``.
- :func:`summarize_scheduling_failures` — the scheduler's FailedScheduling events of Pending pods, in one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from ..config import GPUClass

HOSTNAME_KEY = "kubernetes.io/hostname"
# Taints that come and go with a node's health; they do not make a node unfit forever.
TRANSIENT_TAINT_PREFIXES = (
    "node.kubernetes.io/", "node.cloudprovider.kubernetes.io/", "ToBeDeletedByClusterAutoscaler",
)

FITS = "Fits"
NO_NODES_OF_CLASS = "NoNodesOfClass"
INSUFFICIENT_GPUS_PER_NODE = "InsufficientGPUsPerNode"
INSUFFICIENT_RESOURCES = "InsufficientResources"
TAINTS_NOT_TOLERATED = "TaintsNotTolerated"


# ---------------------------------------------------------------------------------------------------------------------
# Pod placement


def node_affinity(gpu_class: GPUClass) -> dict[str, Any]:
    """``affinity`` requiring every node label of the class ({} when the class names no labels)."""
    if not gpu_class.node_labels:
        return {}
    expressions = [
        {"key": key, "operator": "In", "values": [value]} for key, value in sorted(gpu_class.node_labels.items())
    ]
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
        }
    }


def tolerations(gpu_class: GPUClass) -> list[dict[str, Any]]:
    return [dict(t) for t in gpu_class.tolerations]


def topology_spread(selector: Mapping[str, str]) -> list[dict[str, Any]]:
    """Spread replicas across nodes when possible (never refuses to schedule). Counted per revision
    (``pod-template-hash``), so a rollout's new pods spread among themselves."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": HOSTNAME_KEY,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
            "matchLabelKeys": ["pod-template-hash"],
        }
    ]


def pod_placement(gpu_class: GPUClass, selector: Mapping[str, str]) -> dict[str, Any]:
    """The placement fields of a pod spec: ``affinity`` (if any), ``tolerations``, ``topologySpreadConstraints``."""
    out: dict[str, Any] = {}
    affinity = node_affinity(gpu_class)
    if affinity:
        out["affinity"] = affinity
    out["tolerations"] = tolerations(gpu_class)
    out["topologySpreadConstraints"] = topology_spread(selector)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Could it ever fit?


@dataclass(frozen=True)
class Fit:
    fits: bool
    reason: str  # Fits, NoNodesOfClass, InsufficientGPUsPerNode, InsufficientResources, TaintsNotTolerated
    message: str
    nodes_of_class: int = 0  # nodes carrying the class's labels
    max_gpus_per_node: int = 0  # largest allocatable GPU count among them


def _quantity(value: Any) -> Decimal:
    try:
        return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, TypeError):
        return Decimal(0)


def tolerates(tolerations_: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Does any toleration match the taint (the scheduler's rule)?"""
    for t in tolerations_:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator", "Equal")
        if not t.get("key"):
            if op == "Exists":
                return True
            continue
        if t.get("key") != taint.get("key"):
            continue
        if op == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def _blocking_taints(node: Mapping[str, Any], tolerations_: list[dict[str, Any]]) -> list[Mapping[str, Any]]:
    out = []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if str(taint.get("key", "")).startswith(TRANSIENT_TAINT_PREFIXES):
            continue
        if not tolerates(tolerations_, taint):
            out.append(taint)
    return out


def _describe_class(gpu_class: GPUClass) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(gpu_class.node_labels.items()))
    return f"GPU class {gpu_class.name}" + (f" ({labels})" if labels else "")


def can_ever_fit(
    nodes: Iterable[Mapping[str, Any]],
    gpu_class: GPUClass,
    gpus_per_pod: int,
    requests: Mapping[str, Any] | None = None,
) -> Fit:
    """Could one pod with ``gpus_per_pod`` GPUs (plus ``requests``, e.g. ``{"cpu": "4", "memory": "32Gi"}``) ever be
    placed on a node of the class? Looks at allocatable resources, not at what other pods use now."""
    wanted = {gpu_class.resource_name: Decimal(gpus_per_pod)}
    for name, value in (requests or {}).items():
        if name != gpu_class.resource_name:
            wanted[name] = _quantity(value)
    what = _describe_class(gpu_class)
    of_class = []
    for node in nodes:
        labels = (node.get("metadata") or {}).get("labels") or {}
        if all(labels.get(k) == v for k, v in gpu_class.node_labels.items()):
            of_class.append(node)
    if not of_class:
        return Fit(False, NO_NODES_OF_CLASS, f"no node has the labels of {what}")

    def allocatable(node: Mapping[str, Any], resource: str) -> Decimal:
        return _quantity(((node.get("status") or {}).get("allocatable") or {}).get(resource, 0))

    max_gpus = max(int(allocatable(n, gpu_class.resource_name)) for n in of_class)
    untainted = [n for n in of_class if not _blocking_taints(n, tolerations(gpu_class))]
    if not untainted:
        taints = sorted(
            {f"{t.get('key')}={t.get('value', '')}:{t.get('effect')}" for n in of_class
             for t in _blocking_taints(n, tolerations(gpu_class))}
        )
        return Fit(
            False, TAINTS_NOT_TOLERATED,
            f"all {len(of_class)} nodes of {what} carry taints the class does not tolerate: {', '.join(taints)}",
            len(of_class), max_gpus,
        )
    big_enough = [n for n in untainted if allocatable(n, gpu_class.resource_name) >= gpus_per_pod]
    if not big_enough:
        best = max(int(allocatable(n, gpu_class.resource_name)) for n in untainted)
        return Fit(
            False, INSUFFICIENT_GPUS_PER_NODE,
            f"a pod needs {gpus_per_pod} {gpu_class.resource_name} but no node of {what} has that many "
            f"allocatable; the largest of its {len(untainted)} nodes has {best}",
            len(of_class), max_gpus,
        )
    for node in big_enough:
        if all(allocatable(node, r) >= q for r, q in wanted.items()):
            return Fit(True, FITS, f"{len(big_enough)} nodes of {what} can hold a pod", len(of_class), max_gpus)
    short = sorted(r for r, q in wanted.items() if all(allocatable(n, r) < q for n in big_enough))
    asked = ", ".join(f"{r}={(requests or {}).get(r, wanted[r])}" for r in short) or "the requested resources"
    return Fit(
        False, INSUFFICIENT_RESOURCES,
        f"no node of {what} with {gpus_per_pod} {gpu_class.resource_name} also has {asked} allocatable",
        len(of_class), max_gpus,
    )


# ---------------------------------------------------------------------------------------------------------------------
# The scheduler's FailedScheduling events

_PREEMPTION = re.compile(r"\s*preemption:.*$", re.DOTALL)
_PART = re.compile(r"^\s*(\d+)\s+(.*?)\s*$")


def parse_failed_scheduling(message: str) -> tuple[int | None, dict[str, int]]:
    """``"0/10 nodes are available: 4 Insufficient nvidia.com/gpu, 6 node(s) had untolerated taint …"`` →
    ``(10, {"Insufficient nvidia.com/gpu": 4, "node(s) had untolerated taint …": 6})``."""
    message = _PREEMPTION.sub("", message).strip()
    m = re.match(r"^\s*\d+/(\d+) nodes are available:\s*(.*?)\.?$", message, re.DOTALL)
    if not m:
        return None, {}
    total, rest = int(m.group(1)), m.group(2)
    reasons: dict[str, int] = {}
    # Reasons are separated by ", " but some contain commas inside braces (taints): split outside braces only.
    depth, start, parts = 0, 0, []
    for i, ch in enumerate(rest):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(rest[start:i])
            start = i + 1
    parts.append(rest[start:])
    for part in parts:
        pm = _PART.match(part)
        if pm:
            reasons[pm.group(2)] = reasons.get(pm.group(2), 0) + int(pm.group(1))
    return total, reasons


def _event_time(event: Mapping[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or (event.get("series") or {}).get("lastObservedTime")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def summarize_scheduling_failures(events: Iterable[Mapping[str, Any] | str]) -> str | None:
    """One line for a condition message from FailedScheduling events (core/v1 or events.k8s.io/v1 dicts, or bare
    messages): how many pods cannot be scheduled and the scheduler's latest reason. None when there are none."""
    latest: tuple[str, str] | None = None
    pods: set[str] = set()
    count = 0
    for ev in events:
        if isinstance(ev, str):
            msg, when, pod = ev, "", ""
        else:
            if ev.get("reason") != "FailedScheduling":
                continue
            msg = ev.get("message") or ev.get("note") or ""
            when = _event_time(ev)
            pod = str((ev.get("involvedObject") or ev.get("regarding") or {}).get("name", ""))
        count += 1
        if pod:
            pods.add(pod)
        if latest is None or when >= latest[0]:
            latest = (when, msg)
    if latest is None:
        return None
    text = _PREEMPTION.sub("", latest[1]).strip()
    n = len(pods) or count
    return f"{n} pod{'s' if n != 1 else ''} cannot be scheduled: {text}"
