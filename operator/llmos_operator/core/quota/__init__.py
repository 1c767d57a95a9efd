"""Quota admission: who may run, the queue, and the ledger that survives operator restarts. No kopf, no I/O.

How a handler uses it (one admission pass, under a lock, after any ModelDeployment or Tenant change):

1. Read the Tenant(s), their ledgers (``parse_ledger(tenant.status.reservations)``) and every ModelDeployment in
   their namespaces; skip those with a deletionTimestamp (their GPUs free at once).
2. ``result = admit([Request.from_model_deployment(m, owner_of(m)) ...], merge_ledgers(ledgers),
   {t.name: TenantInfo.from_tenant(t)}, config.gpu_classes)``.
3. Persist ``result.ledger_for(tenant)`` in each Tenant's ``status.reservations`` with optimistic concurrency
   (a patch carrying the Tenant's resourceVersion; on 409 Conflict start again from 1). Only then create or scale
   children: a deployment's Deployment runs ``result.decisions[key].replicas`` replicas, zero when not admitted.
4. Write each ModelDeployment's conditions from its Decision (see ``render.status``).
"""

from .admission import admit
from .decisions import (
    ADMITTED,
    INSUFFICIENT_CAPACITY,
    NO_TENANT,
    QUOTA_EXCEEDED,
    REASONS,
    RESERVATION_HELD,
    TENANT_CORDONED,
    TOO_MANY_DEPLOYMENTS,
    UNKNOWN_GPU_CLASS,
    AdmissionResult,
    Decision,
    Request,
    Stray,
    TenantInfo,
    gpu_summary,
    not_a_candidate,
    parse_time,
)
from .ledger import (
    POD,
    RELEASING,
    SURGE,
    Ledger,
    LedgerError,
    deployment_key,
    is_pod,
    is_releasing,
    is_surge,
    ledger_key,
    merge_ledgers,
    parse_ledger,
    pod_key,
    reconcile_ledger,
    releasing_key,
    surge_key,
    usage,
)

__all__ = [
    "ADMITTED", "INSUFFICIENT_CAPACITY", "NO_TENANT", "POD", "QUOTA_EXCEEDED", "REASONS", "RELEASING",
    "RESERVATION_HELD", "SURGE", "TENANT_CORDONED", "Stray", "deployment_key", "is_pod", "is_releasing", "is_surge",
    "pod_key", "releasing_key", "surge_key",
    "TOO_MANY_DEPLOYMENTS", "UNKNOWN_GPU_CLASS", "AdmissionResult", "Decision", "Ledger", "LedgerError", "Request",
    "TenantInfo", "admit", "gpu_summary", "ledger_key", "merge_ledgers", "not_a_candidate", "parse_ledger",
    "parse_time", "reconcile_ledger", "usage",
]
