"""A Tenant's status: its namespaces, its ledger and usage, what it may not have. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...api.names import ISOLATED, NAMESPACES_READY, OVER_QUOTA, READY
from ...api.types import Tenant
from ...config import OperatorConfig
from ..quota import AdmissionResult, gpu_summary
from .conditions import condition, map_patch, merge_conditions, now_rfc3339


def tenant_status(
    tenant: Tenant,
    config: OperatorConfig,
    *,
    result: AdmissionResult | None = None,
    conflicts: Mapping[str, str] | None = None,
    refused_namespaces: Mapping[str, str] | None = None,
    refused_keys: Sequence[str] | None = None,
    intruders: Sequence[str] = (),
    child_conflicts: Sequence[str] = (),
    now: str | None = None,
) -> dict[str, Any]:
    """Status of a Tenant. ``result``: the latest admission pass (None: leave usage and the ledger as they are).
    ``conflicts``: namespace → the other tenant that owns it (from ``quota.namespace_owners``).
    ``refused_namespaces``: namespace → why the tenant may not take it (``policy.namespace_refusal``).
    ``refused_keys``: trusted keys the operator refused to read, with why. ``intruders``: GPU pods of its namespaces
    that no admitted ModelDeployment accounts for ("<namespace>/<pod> (why)"), which the operator is removing.
    ``child_conflicts``: objects in the way of its children (network policies, quotas, runtime identity) that are
    not its own, into which llmos writes nothing."""
    now = now or now_rfc3339()
    gen = tenant.metadata.generation
    name = tenant.metadata.name
    quota = tenant.spec.quota.gpus
    out: dict[str, Any] = {"observedGeneration": gen}
    over: list[str] = []
    if result is not None:
        used = result.usage(name)
        out["usage"] = {"gpus": map_patch(tenant.status.usage.gpus, {c: used.get(c, 0) for c in {*quota, *used}})}
        out["admitted"] = result.admitted_count(name)
        out["queued"] = result.queued_count(name)
        out["gpuSummary"] = gpu_summary(used, quota)
        out["reservations"] = map_patch(
            {k: v.to_dict() for k, v in tenant.status.reservations.items()}, result.ledger_for(name)
        )
        over = [f"{c} {used[c]}/{quota.get(c, 0)}" for c in sorted(used) if used[c] > quota.get(c, 0)]
    unknown = sorted(c for c in quota if config.gpu_class(c) is None)
    problems: list[tuple[str, str]] = []
    if conflicts:
        taken = ", ".join(f"{ns} (owned by tenant {owner})" for ns, owner in sorted(conflicts.items()))
        problems.append(("NamespaceConflict", f"namespaces claimed by another tenant: {taken}"))
    if refused_namespaces:
        problems.append(("NamespaceRefused", "; ".join(why for _, why in sorted(refused_namespaces.items()))))
    if problems:
        namespaces = condition(NAMESPACES_READY, False, problems[0][0], "; ".join(m for _, m in problems), gen)
    else:
        namespaces = condition(NAMESPACES_READY, True, "NamespacesReady",
                               f"{len(tenant.spec.namespaces)} namespaces ready", gen)
    if over:
        over_quota = condition(OVER_QUOTA, True, "OverQuota",
                               f"reserved above quota: {', '.join(over)}; nothing new is admitted until usage falls "
                               "below the quota (running deployments keep their GPUs until they shrink)", gen)
    else:
        over_quota = condition(OVER_QUOTA, False, "WithinQuota", "reservations are within the quota", gen)
    if intruders:
        listed = ", ".join(intruders[:5]) + (f" and {len(intruders) - 5} more" if len(intruders) > 5 else "")
        isolated = condition(ISOLATED, False, "IntruderPods",
                             f"GPU pods no admitted ModelDeployment accounts for, counted against the quota and being "
                             f"removed: {listed}", gen)
    else:
        isolated = condition(ISOLATED, True, "NoIntruders", "every GPU pod belongs to an admitted ModelDeployment", gen)
    if problems:
        ready = condition(READY, False, problems[0][0], namespaces["message"], gen)
    elif unknown:
        known = ", ".join(sorted(config.gpu_classes)) or "none"
        ready = condition(
            READY, False, "UnknownGPUClass",
            f"quota names GPU classes that are not configured: {', '.join(unknown)} (known: {known})", gen,
        )
    elif child_conflicts:
        ready = condition(READY, False, "ChildConflict", "; ".join(child_conflicts), gen)
    elif refused_keys:
        ready = condition(READY, False, "TrustedKeyRefused", "; ".join(refused_keys), gen)
    elif over:
        ready = condition(READY, False, "OverQuota", over_quota["message"], gen)
    elif intruders:
        ready = condition(READY, False, "IntruderPods", isolated["message"], gen)
    else:
        ready = condition(READY, True, "Reconciled", f"{len(tenant.spec.namespaces)} namespaces ready", gen)
    out["conditions"] = merge_conditions(tenant.status.conditions, [ready, namespaces, over_quota, isolated], now)
    return out
