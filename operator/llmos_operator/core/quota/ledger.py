"""The admission ledger: which ModelDeployment holds how many GPUs of which class.

A ledger is a plain JSON-able dict, persisted by the operator in each Tenant's ``status.reservations``::

    {"team-a/llama": {"class": "h100", "gpus": 4, "uid": "0b4c…"}}

Keys are ``<namespace>/<name>`` of the ModelDeployment; ``uid`` tells a deleted-and-recreated deployment of the same
name from the one that holds the reservation. A rollout's surge GPUs are a second entry of the same deployment, key
``<namespace>/<name>#surge`` and ``"kind": "surge"``: reserved before the Deployment may surge, freed when the
rollout ends. GPUs that pods still hold beyond what their deployment now reserves (a deleted deployment's pods that
are terminating, the replicas a scale-down removes) are a third entry, key ``<namespace>/<name>#releasing`` and
``"kind": "releasing"``, never more than was reserved before, freed as those pods go: a terminating pod still has
its GPUs. GPU pods of a tenant's namespaces that no live ModelDeployment accounts for (a deleted deployment's pods,
an intruder the operator is removing) are entries of their own, key ``<namespace>/<pod>#pod`` and ``"kind": "pod"``,
with the class of the node the pod runs on (or asks for) and the pod's uid: counted against the tenant until the pod
is gone. No entry ever changes class. The ledger is the only state admission needs: whatever process reads
the latest ledger and the current deployments decides exactly what the previous process would have, so a restarted
operator never admits twice. Write the ledger *before* creating children of a newly admitted deployment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# "<namespace>/<name>[#surge|#releasing|#pod]" → {"class": str, "gpus": int, "uid": str[, "kind": <the suffix>]}
Ledger = dict[str, dict[str, Any]]

SURGE = "surge"
SURGE_SUFFIX = "#surge"
RELEASING = "releasing"
RELEASING_SUFFIX = "#releasing"
POD = "pod"
POD_SUFFIX = "#pod"
KINDS = (None, SURGE, RELEASING, POD)


class LedgerError(ValueError):
    pass


def ledger_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def surge_key(key: str) -> str:
    """The ledger key of a deployment's surge reservation."""
    return key + SURGE_SUFFIX


def is_surge(key: str) -> bool:
    return key.endswith(SURGE_SUFFIX)


def releasing_key(key: str) -> str:
    """The ledger key of the GPUs a deployment's departing pods still hold."""
    return key + RELEASING_SUFFIX


def is_releasing(key: str) -> bool:
    return key.endswith(RELEASING_SUFFIX)


def pod_key(namespace: str, pod: str) -> str:
    """The ledger key of the GPUs a pod holds that no live ModelDeployment accounts for."""
    return f"{namespace}/{pod}{POD_SUFFIX}"


def is_pod(key: str) -> bool:
    return key.endswith(POD_SUFFIX)


def deployment_key(key: str) -> str:
    """``<namespace>/<name>`` of a ledger key: a deployment's reservation, its surge or what its pods still hold (for
    a pod entry: ``<namespace>/<pod>``)."""
    for suffix in (SURGE_SUFFIX, RELEASING_SUFFIX, POD_SUFFIX):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def entry(gpu_class: str, gpus: int, uid: str, kind: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"class": gpu_class, "gpus": int(gpus), "uid": uid}
    if kind is not None:
        out["kind"] = kind
    return out


def parse_ledger(raw: Mapping[str, Any] | None) -> Ledger:
    """A ledger read back from a Tenant's status. Malformed entries raise: dropping one could admit twice."""
    out: Ledger = {}
    for key, value in (raw or {}).items():
        if (
            not isinstance(key, str)
            or key.count("/") != 1
            or not isinstance(value, Mapping)
            or not isinstance(value.get("class"), str)
            or not isinstance(value.get("gpus"), int)
            or isinstance(value.get("gpus"), bool)
            or value["gpus"] < 0
            or not isinstance(value.get("uid"), str)
            or value.get("kind") not in KINDS
            or (value.get("kind") == SURGE) != is_surge(key)
            or (value.get("kind") == RELEASING) != is_releasing(key)
            or (value.get("kind") == POD) != is_pod(key)
        ):
            raise LedgerError(f"malformed ledger entry {key!r}: {value!r}")
        out[key] = entry(value["class"], value["gpus"], value["uid"], value.get("kind"))
    return out


def usage(ledger: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """GPU class → GPUs reserved."""
    used: dict[str, int] = {}
    for e in ledger.values():
        used[e["class"]] = used.get(e["class"], 0) + e["gpus"]
    return used


def reconcile_ledger(
    ledger: Mapping[str, Mapping[str, Any]], existing: Mapping[str, str]
) -> tuple[Ledger, list[str]]:
    """Drop entries whose deployment no longer exists (absent, or present with another uid).

    ``existing`` maps ``<namespace>/<name>`` → uid of every ModelDeployment that exists and is not being deleted,
    in the namespaces the ledger covers. It must be complete: an entry missing from it is freed.
    Returns the kept ledger and the keys dropped.
    """
    kept: Ledger = {}
    dropped: list[str] = []
    for key, e in ledger.items():
        if existing.get(deployment_key(key)) == e["uid"]:
            kept[key] = dict(e)
        else:
            dropped.append(key)
    return kept, sorted(dropped)


def merge_ledgers(ledgers: Iterable[Mapping[str, Mapping[str, Any]]]) -> Ledger:
    """One ledger from several (e.g. every Tenant's). Keys are namespaced and a namespace has one owner."""
    out: Ledger = {}
    for ledger in ledgers:
        for key, e in ledger.items():
            if key in out and out[key] != dict(e):
                raise LedgerError(f"ledger entry {key!r} appears twice with different values")
            out[key] = dict(e)
    return out
