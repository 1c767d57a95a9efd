"""How much CPU this container may use: its cgroup's CPU limit, not the node's core count.

A 224-core node runs many pods; a runtime hashing with 224 threads next to serving pods only steals their CPU. The
limit comes from cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``) or cgroup v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``; without a limit, the CPU affinity set; ``LLMOS_HASH_THREADS`` overrides.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit in cores, or None when there is none (or no cgroup information)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_threads(root: Path = CGROUP_ROOT, env: dict[str, str] | None = None) -> int:
    """Threads worth running for CPU-bound work (hashing): the cgroup limit rounded up, at most the affinity set."""
    env = os.environ if env is None else env
    override = env.get("LLMOS_HASH_THREADS", "").strip()
    if override.isdigit() and int(override) > 0:
        return int(override)
    limit = cgroup_cpu_limit(root)
    cores = _affinity()
    return cores if limit is None else max(1, min(cores, math.ceil(limit)))


def apply_hash_threads(threads: int) -> None:
    """Make llmos_signing hash with ``threads`` threads (it sizes its pool with ``hashing.cores()``)."""
    from llmos_signing import hashing

    hashing.cores = lambda: threads  # type: ignore[assignment]
    log.info("hashing with %d thread(s) (container CPU limit)", threads)


def fetch_parallelism(env: dict[str, str] | None = None) -> int:
    """Objects downloaded at once: downloads wait on the network, so twice the CPU limit, between 2 and 8 (more
    only thrashes a small container; ``LLMOS_FETCH_PARALLEL`` overrides)."""
    env = os.environ if env is None else env
    override = env.get("LLMOS_FETCH_PARALLEL", "").strip()
    if override.isdigit() and int(override) > 0:
        return int(override)
    return max(2, min(8, 2 * cpu_threads(env=env)))
