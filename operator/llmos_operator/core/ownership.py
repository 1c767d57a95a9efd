"""Which tenant owns which namespace. Pure: callers pass the Tenants and the namespaces' ``llmos.dev/tenant`` labels.

A namespace belongs to a tenant only once llmos labelled it for that tenant (after the namespace checks passed);
among tenants claiming the same namespace, the recorded label keeps it with its tenant, else the oldest claimant
wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..api.types import Tenant
from .quota import parse_time


@dataclass(frozen=True)
class Ownership:
    """Who owns which namespace, as the Tenants and the namespace labels say now."""

    tenants: list[Tenant]
    by_name: dict[str, Tenant]
    labelled: dict[str, str]  # namespace → the tenant its label names
    claimed: dict[str, str]  # namespace → the tenant namespace_owners gives it (labelled for it or not yet)
    owners: dict[str, str]  # namespace → its owner: claimed and labelled for it
    conflicts: dict[str, dict[str, str]]  # tenant → {namespace it claims: the owner}

    def tenant_of(self, namespace: str) -> Tenant | None:
        owner = self.owners.get(namespace)
        return self.by_name.get(owner) if owner is not None else None


def ownership(tenants: list[Tenant], labelled: Mapping[str, str]) -> Ownership:
    claimed, conflicts = namespace_owners(tenants, labelled)
    return Ownership(
        tenants=tenants, by_name={t.metadata.name: t for t in tenants}, labelled=dict(labelled), claimed=claimed,
        owners={ns: t for ns, t in claimed.items() if labelled.get(ns) == t}, conflicts=conflicts)


def namespace_owners(
    tenants: Iterable[Tenant], current: Mapping[str, str] | None = None
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Which tenant owns each claimed namespace, and the claims refused.

    ``current``: namespace → value of its ``llmos.dev/tenant`` label, the owner recorded so far; it keeps the
    namespace while it still claims it. Otherwise the oldest claimant (creation time, then name) wins.
    Returns (namespace → owner, tenant → {namespace: owner} of the namespaces it claims but does not own).
    """
    tenants = list(tenants)
    claims: dict[str, list[Tenant]] = {}
    for t in tenants:
        for ns in t.spec.namespaces:
            claims.setdefault(ns, []).append(t)
    owners: dict[str, str] = {}
    conflicts: dict[str, dict[str, str]] = {}
    for ns, claimants in sorted(claims.items()):
        names = {t.metadata.name for t in claimants}
        recorded = (current or {}).get(ns)
        if recorded in names:
            owner = recorded
        else:
            oldest = min(claimants, key=lambda t: (parse_time(t.metadata.creation_timestamp), t.metadata.name))
            owner = oldest.metadata.name
        owners[ns] = owner
        for t in claimants:
            if t.metadata.name != owner:
                conflicts.setdefault(t.metadata.name, {})[ns] = owner
    return owners, conflicts
