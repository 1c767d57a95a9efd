"""Prometheus metrics of the operator (served by `llmos operator run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .kube import client

RECONCILES = Counter("llmos_reconcile_total", "Reconciles by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram(
    "llmos_reconcile_duration_seconds", "Time of one reconcile", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ADMITTED = Gauge("llmos_tenant_admitted_deployments", "Admitted ModelDeployments", ["tenant"])
QUEUED = Gauge("llmos_tenant_queued_deployments", "ModelDeployments waiting for quota", ["tenant"])
GPUS_USED = Gauge("llmos_tenant_gpus_used", "GPUs reserved by admitted deployments", ["tenant", "gpu_class"])
API_REQUESTS = client.API_REQUESTS  # what the operator asks the API server (kube/client.py)
GPUS_ALLOWED = Gauge("llmos_tenant_gpus_allowed", "GPU quota", ["tenant", "gpu_class"])

# The autoscaler (controller/autoscaler.py): its reads, rounds and decisions; per deployment what it asks for, what
# admission granted and the load it read.
AUTOSCALER_READS = Counter("llmos_autoscaler_reads_total",
                           "Reads of a replica's /metrics by the autoscaler, by result", ["result"])
AUTOSCALER_ROUND_SECONDS = Histogram(
    "llmos_autoscaler_round_seconds", "One round: every autoscaled deployment's replicas read and decided",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUTOSCALER_DECISIONS = Counter("llmos_autoscaler_decisions_total",
                               "Changes of a desired replica count, by direction", ["direction"])
AUTOSCALER_DEPLOYMENTS = Gauge("llmos_autoscaler_deployments", "ModelDeployments whose load the autoscaler follows")
AUTOSCALER_DESIRED = Gauge("llmos_autoscaler_desired_replicas", "Replicas the autoscaler asks for",
                           ["namespace", "modeldeployment"])
AUTOSCALER_GRANTED = Gauge("llmos_autoscaler_granted_replicas", "Replicas admission granted (the quota allows)",
                           ["namespace", "modeldeployment"])
AUTOSCALER_VALUE = Gauge("llmos_autoscaler_metric_value", "The metric averaged per ready replica, as last read",
                         ["namespace", "modeldeployment", "metric"])


class TenantSeries:
    """Which tenant and (tenant, GPU class) series are set, so that those of a Tenant or class that is gone are
    removed rather than left reporting their last value forever."""

    def __init__(self) -> None:
        self._tenants: set[str] = set()
        self._classes: set[tuple[str, str]] = set()

    def publish(self, admitted: dict[str, int], queued: dict[str, int],
                used: dict[tuple[str, str], int], allowed: dict[tuple[str, str], int],
                changed: set[str] | None = None) -> None:
        """Every tenant's values; only those of ``changed`` tenants (all when None) are set again, and the series of
        tenants and classes no longer given are removed."""
        tenants, classes = set(admitted), set(used) | set(allowed)
        for tenant in tenants if changed is None else tenants & changed:
            ADMITTED.labels(tenant).set(admitted[tenant])
            QUEUED.labels(tenant).set(queued.get(tenant, 0))
        for key in classes if changed is None else (k for k in classes if k[0] in changed):
            GPUS_USED.labels(*key).set(used.get(key, 0))
            GPUS_ALLOWED.labels(*key).set(allowed.get(key, 0))
        for tenant in self._tenants - tenants:
            for gauge in (ADMITTED, QUEUED):
                try:
                    gauge.remove(tenant)
                except KeyError:
                    pass
        for key in self._classes - classes:
            for gauge in (GPUS_USED, GPUS_ALLOWED):
                try:
                    gauge.remove(*key)
                except KeyError:
                    pass
        self._tenants, self._classes = tenants, classes
