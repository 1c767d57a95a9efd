"""`make demo`: the local cluster, the CRDs, the operator, the example tenants, models and deployments (one of them
queued for quota), then a status table."""

from __future__ import annotations

import json
import sys
import time

from . import cluster, limits_store, operator_process, platform

EXAMPLES = cluster.REPO_ROOT / "examples"
SETTLE_SECONDS = 120  # every deployment decided, the admitted ones Ready (seconds on a quiet machine)


def run(name: str = cluster.DEFAULT_CLUSTER, *, ports: tuple[int, int, int] = (9090, 8080, limits_store.PORT)) -> int:
    """``ports``: the operator's metrics and liveness ports, the limit store's (the tests give free ones)."""
    start = time.monotonic()
    kubeconfig = cluster.up(name)
    platform.install(name)  # the chart's CRDs, RBAC, tenant roles and admission policies
    store = limits_store.start(name, port=ports[2])  # API keys' limits, shared by a deployment's replicas
    operator_process.start(name, metrics_port=ports[0], health_port=ports[1],
                           extra_env={"LLMOS_OPERATOR_CONFIG": str(limits_store.operator_config(name, store))})
    # (as the chart's operator ServiceAccount, not the admin)

    # The same manifests a platform team and a tenant apply (examples/*/kustomization.yaml; docs/gitops.md).
    cluster.kubectl(name, "apply", "-k", str(EXAMPLES / "platform"))
    for tenant_part in ("team-a", "team-b"):
        cluster.kubectl(name, "apply", "-k", str(EXAMPLES / tenant_part))

    unsettled = settle(name, timeout=SETTLE_SECONDS)

    print(cluster.kubectl(name, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count").stdout)
    print(cluster.kubectl(name, "get", "llmos", "-A").stdout)
    print(gpu_table(name))
    print(f"(set up in {time.monotonic() - start:.0f} s)\n")
    if unsettled:
        print(f"Not settled after {SETTLE_SECONDS} s: {', '.join(unsettled)}. The operator's log says why: "
              f"{operator_process.log_file(name)}", file=sys.stderr)
        return 1
    print(f"The cluster and the operator keep running. Use them with:\n  export KUBECONFIG={kubeconfig}\n"
          f"  {cluster.binaries(build=False).kubectl} get llmos -A\n"
          f"Operator log: {operator_process.log_file(name)}\nLimit store (API keys): {store}\n"
          f"A key for team-a: .venv/bin/llmos key create demo -n team-a --rpm 600 --kubeconfig {kubeconfig}\n"
          "Stop everything: .venv/bin/llmos dev down")
    return 0


def settle(name: str, timeout: float) -> list[str]:
    """Wait until every ModelDeployment has an admission decision and the admitted ones are Ready; returns those
    that are not (namespace/name: what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        items = json.loads(cluster.kubectl(name, "get", "modeldeployments", "-A", "-o", "json").stdout)["items"]
        missing = [f"{d['metadata']['namespace']}/{d['metadata']['name']}: {why}"
                   for d in items if (why := _unsettled(d))]
        if (items and not missing) or time.monotonic() > deadline:
            return missing or ([] if items else ["no ModelDeployment"])
        time.sleep(1)


def _unsettled(deployment: dict) -> str | None:
    conditions = {c["type"]: c for c in deployment.get("status", {}).get("conditions", [])}
    admitted = conditions.get("QuotaAdmitted", {})
    # NoTenant, ModelNotVerified: seen before its Tenant or Model was reconciled (all were just applied).
    if admitted.get("status", "Unknown") == "Unknown" or admitted.get("reason") in ("NoTenant", "ModelNotVerified"):
        return f"no admission decision ({admitted.get('reason', 'none yet')})"
    if admitted["status"] == "True" and conditions.get("Ready", {}).get("status") != "True":
        return f"admitted, not Ready ({conditions.get('Ready', {}).get('reason', 'no Ready condition')})"
    return None


def gpu_table(name: str) -> str:
    tenants = json.loads(cluster.kubectl(name, "get", "tenants", "-o", "json").stdout)["items"]
    rows = [("TENANT", "GPU CLASS", "USED", "ALLOWED", "ADMITTED", "QUEUED")]
    for t in tenants:
        quota = t["spec"].get("quota", {}).get("gpus", {})
        used = t.get("status", {}).get("usage", {}).get("gpus", {})
        for gpu_class in sorted({*quota, *used}):
            rows.append((t["metadata"]["name"], gpu_class, str(used.get(gpu_class, 0)), str(quota.get(gpu_class, 0)),
                         str(t.get("status", {}).get("admitted", 0)), str(t.get("status", {}).get("queued", 0))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
