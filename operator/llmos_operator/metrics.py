"""Prometheus metrics of the operator (served by `llmos operator run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("llmos_reconcile_total", "Reconciles by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "llmos_reconcile_duration_seconds", "Time of one reconcile", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ADMITTED = Gauge("llmos_tenant_admitted_deployments", "Admitted ModelDeployments", ["tenant"])
QUEUED = Gauge("llmos_tenant_queued_deployments", "ModelDeployments waiting for quota", ["tenant"])
GPUS_USED = Gauge("llmos_tenant_gpus_used", "GPUs reserved by admitted deployments", ["tenant", "gpu_class"])
GPUS_ALLOWED = Gauge("llmos_tenant_gpus_allowed", "GPU quota", ["tenant", "gpu_class"])
