"""A watch of the GPU pods of some namespaces, kept as a timeline, and the quota property checked over it (issue 18:
"GPUs per class of live pods ≤ quota, outside the intruder window"). Used by
tests/integration/test_isolation_property.py; the checker's own test is tests/unit/test_gpu_pod_timeline.py."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass

from kubernetes import client, watch

from tests.support.hostile import GPU

GPU_PRODUCTS = {"h100": "NVIDIA-H100-80GB-HBM3", "l4": "NVIDIA-L4"}  # the fake nodes' classes (llmos dev up)
INTRUDER_WINDOW = 10.0  # issue 18: an intruder GPU pod is gone within seconds of being scheduled (goal 5 s)
MD_LABEL = "llmos.dev/model-deployment"


def _pod_gpus(pod: client.V1Pod) -> int:
    def gpus(c) -> int:
        res = c.resources
        amount = (res.limits or {}).get(GPU) or (res.requests or {}).get(GPU) if res else None
        return int(amount or 0)

    return max(sum(gpus(c) for c in pod.spec.containers), max((gpus(c) for c in pod.spec.init_containers or []),
                                                                default=0))


@dataclass
class SeenPod:
    namespace: str
    name: str
    gpus: int
    llmos: bool  # carries llmos's ModelDeployment label (the children policy keeps it off other pods)
    gpu_class: str | None = None
    scheduled: float | None = None  # monotonic time the watch first saw it bound to a node
    ended: float | None = None  # deleted or terminated

    def counted_from(self) -> float | None:
        if self.scheduled is None:
            return None
        return self.scheduled + (0 if self.llmos else INTRUDER_WINDOW)


class GpuPodTimeline:
    """A watch of every pod (the checker's reads use the cluster admin): when each GPU pod of the watched namespaces
    was first seen scheduled, on which class of node, and when it ended (a DELETED event or a terminal phase; a
    terminating pod still holds its GPUs)."""

    def __init__(self, api: client.ApiClient, namespaces: list[str]):
        self.core = client.CoreV1Api(api)
        self.namespaces = set(namespaces)
        products = {v: k for k, v in GPU_PRODUCTS.items()}
        self.node_class = {n.metadata.name: products.get((n.metadata.labels or {}).get("nvidia.com/gpu.product"))
                           for n in self.core.list_node().items}
        self.pods: dict[str, SeenPod] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="gpu-pod-watch")
        self.synced = threading.Event()

    def start(self) -> None:
        self.thread.start()
        assert self.synced.wait(30), "the pod watch never listed"

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                listed = self.core.list_pod_for_all_namespaces()
                now = time.monotonic()
                present = {p.metadata.uid for p in listed.items}
                with self.lock:  # what went while no watch ran
                    for uid, seen in self.pods.items():
                        if uid not in present and seen.ended is None:
                            seen.ended = now
                for pod in listed.items:
                    self._see(pod, "ADDED", now)
                self.synced.set()
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, timeout_seconds=5,
                                              resource_version=listed.metadata.resource_version)
                for event in stream:
                    self._see(event["object"], event["type"], time.monotonic())
                    if self.stopped.is_set():
                        break
            except Exception:  # noqa: BLE001 — an expired watch or a hiccup: list again
                time.sleep(0.2)

    def _see(self, pod: client.V1Pod, kind: str, now: float) -> None:
        if pod.metadata.namespace not in self.namespaces:
            return
        gpus = _pod_gpus(pod)
        if not gpus:
            return
        with self.lock:
            seen = self.pods.setdefault(pod.metadata.uid, SeenPod(
                pod.metadata.namespace, pod.metadata.name, gpus, MD_LABEL in (pod.metadata.labels or {})))
            if pod.spec.node_name and seen.scheduled is None:
                seen.scheduled, seen.gpu_class = now, self.node_class.get(pod.spec.node_name)
            if seen.ended is None and (kind == "DELETED" or pod.status.phase in ("Succeeded", "Failed")):
                seen.ended = now

    def snapshot(self) -> list[SeenPod]:
        with self.lock:
            return [SeenPod(**vars(p)) for p in self.pods.values()]

    def live_gpu_pods(self) -> list[str]:
        with self.lock:
            return [f"{p.namespace}/{p.name}" for p in self.pods.values() if p.ended is None]


def held_over_time(pods: list[SeenPod], tenant_of: dict[str, str], now: float):
    """(moment, GPUs counted per (tenant, class), their pods) at every moment up to `now` when a pod starts being
    counted: the count only grows then, so a breach shows at one of those moments."""
    counted = [p for p in pods if p.counted_from() is not None]
    for moment in sorted({p.counted_from() for p in counted if p.counted_from() <= now}):
        held: Counter = Counter()
        holders: dict[tuple, list[str]] = {}
        for p in counted:
            if p.counted_from() <= moment < (p.ended or math.inf):
                key = (tenant_of[p.namespace], p.gpu_class)
                held[key] += p.gpus
                holders.setdefault(key, []).append(f"{p.namespace}/{p.name}×{p.gpus}")
        yield moment, held, holders


def quota_breaches(pods: list[SeenPod], quota: dict[str, dict[str, int]], tenant_of: dict[str, str],
                   now: float) -> list[str]:
    out = []
    for moment, held, holders in held_over_time(pods, tenant_of, now):
        for (tenant, gpu_class), gpus in held.items():
            allowed = quota[tenant].get(gpu_class, 0)
            if gpus > allowed:
                out.append(f"{tenant} held {gpus} {gpu_class} GPUs on a quota of {allowed} at t={moment:.1f}: "
                           f"{holders[(tenant, gpu_class)]}")
    return out


def peak_held(pods: list[SeenPod], tenant_of: dict[str, str], now: float) -> dict:
    peak: Counter = Counter()
    for _, held, _ in held_over_time(pods, tenant_of, now):
        for key, gpus in held.items():
            peak[key] = max(peak[key], gpus)
    return dict(peak)
