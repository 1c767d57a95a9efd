"""What llmos reads of pods and Deployments (stored summaries or whole objects): the GPUs they hold. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..api.names import RUNTIME_CONTAINER


def holds_gpus(pod: Mapping[str, Any]) -> bool:
    """A pod that has not finished holds its GPUs, terminating or not."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def gpus_requested(pod: Mapping[str, Any], resources: Iterable[str]) -> int:
    """GPUs (of any of the ``resources`` names) the pod holds while it runs, as the scheduler counts them: the sum
    over its containers, or the largest init container's if that is more (requests, else limits)."""
    resources = tuple(resources)
    spec = pod.get("spec") or {}
    running = sum(_container_gpus(c, resources) for c in spec.get("containers") or [])
    starting = max((_container_gpus(c, resources) for c in spec.get("initContainers") or []), default=0)
    return max(running, starting)


def _container_gpus(container: Mapping[str, Any], resources: tuple[str, ...]) -> int:
    res = container.get("resources") or {}
    total = 0
    for name in resources:
        value = (res.get("requests") or {}).get(name, (res.get("limits") or {}).get(name, 0))
        try:
            total += int(value)
        except (TypeError, ValueError):
            pass
    return total


def pod_gpus(deployment: Mapping[str, Any]) -> int | None:
    """GPUs per pod of a stored Deployment (the limit of its runtime container)."""
    for c in deployment["spec"]["template"]["spec"].get("containers") or []:
        if c.get("name") == RUNTIME_CONTAINER:
            for value in ((c.get("resources") or {}).get("limits") or {}).values():
                try:
                    return int(value)
                except (TypeError, ValueError):
                    continue
    return None
