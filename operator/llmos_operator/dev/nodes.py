"""Fake nodes of the local cluster: pools of GPU nodes as the NVIDIA GPU operator labels real ones, managed by KWOK."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodePool:
    name: str
    count: int
    gpus: int = 0
    product: str | None = None  # value of nvidia.com/gpu.product
    gpu_memory_mib: int = 0
    cpu: str = "64"
    memory: str = "512Gi"
    # The extended resource the node advertises its GPUs as. nvidia.com/gpu for every class is the device plugin's
    # default; a per-class name (the device plugin's resource renaming, e.g. nvidia.com/h100) lets each namespace's
    # ResourceQuota tell the classes apart (docs/security.md, "A per-class backstop").
    gpu_resource: str = GPU_RESOURCE
    # A kubelet reports its disk; tenant pods get an ephemeral-storage request from the tenant LimitRange.
    ephemeral_storage: str = "1Ti"


DEFAULT_POOLS = (
    NodePool("h100", 4, gpus=8, product="NVIDIA-H100-80GB-HBM3", gpu_memory_mib=81559, cpu="192", memory="2Ti"),
    NodePool("l4", 4, gpus=4, product="NVIDIA-L4", gpu_memory_mib=23034, cpu="48", memory="192Gi"),
    NodePool("cpu", 2),
)


def per_class_resources(pools: tuple[NodePool, ...]) -> tuple[NodePool, ...]:
    """The pools with each GPU pool's GPUs advertised as ``nvidia.com/<pool name>`` (``llmos dev up
    --per-class-gpu-resources``); the operator's GPU classes must name the same ``resourceName``."""
    return tuple(replace(p, gpu_resource=f"nvidia.com/{p.name}") if p.gpus else p for p in pools)


def load_pools(path: Path | None) -> tuple[NodePool, ...]:
    """Pools from a YAML file (a list of NodePool fields, camelCase or snake_case), or the defaults."""
    if path is None:
        return DEFAULT_POOLS
    raw = yaml.safe_load(Path(path).read_text()) or []
    pools = []
    for item in raw:
        item = {_snake(k): v for k, v in item.items()}
        pools.append(NodePool(**item))
    return tuple(pools)


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def pod_cidr(pool_index: int, node_index: int) -> str:
    """A fake node's pod range, inside the loopback network: KWOK gives its pods addresses from it, so whatever
    connects to a fake pod (the operator's autoscaler reading a replica's load) stays on this machine, where a
    refused connection is all it gets (KWOK's default range, 10.0.0.0/24, would send it to the network)."""
    block = 100 + 16 * pool_index + node_index // 256
    if block > 255:
        raise ValueError(f"too many fake nodes for loopback pod ranges (pool {pool_index}, node {node_index})")
    return f"127.{block}.{node_index % 256}.0/24"


def node_manifests(pools: tuple[NodePool, ...]) -> list[dict]:
    """Node objects KWOK takes over (the kwok.x-k8s.io/node annotation) and keeps Ready."""
    nodes = []
    for pool_index, pool in enumerate(pools):
        for i in range(pool.count):
            name = f"kwok-{pool.name}-{i}"
            labels = {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "llmos.dev/pool": pool.name,
            }
            capacity = {"cpu": pool.cpu, "memory": pool.memory, "ephemeral-storage": pool.ephemeral_storage,
                        "pods": "110"}
            taints = []
            if pool.gpus:
                labels.update({
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": pool.product or "NVIDIA-Unknown",
                    "nvidia.com/gpu.count": str(pool.gpus),
                    "nvidia.com/gpu.memory": str(pool.gpu_memory_mib),
                })
                capacity[pool.gpu_resource] = str(pool.gpus)
                taints.append(dict(GPU_TAINT))
            nodes.append({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                },
                "spec": {"taints": taints, "podCIDR": pod_cidr(pool_index, i), "podCIDRs": [pod_cidr(pool_index, i)]},
                "status": {"capacity": capacity, "allocatable": dict(capacity)},
            })
    return nodes
