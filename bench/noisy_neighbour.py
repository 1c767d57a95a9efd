"""Noisy neighbour: does one tenant's churn slow another tenant's admission?

Tenant A owns 50 ModelDeployments and, in the noisy phase, loops `annotate` over them (metadata-only changes, as
fast as the API server answers; --noise-threads for more loops) while tenant B creates 20 ModelDeployments one
after another. B's latency from
create to child apps/v1 Deployment is measured with A quiet and with A noisy, in the same run, and printed side by
side (goal: noisy p99 within 1.5× of quiet).

    .venv/bin/python bench/noisy_neighbour.py [--samples 20] [--noise-threads 1]

Reuses a cluster started by `llmos dev up` (else starts one and stops it at the end); runs its own operator.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GROUP, VERSION = "llmos.dev", "v1alpha1"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--noisy-deployments", type=int, default=50)
    parser.add_argument("--noise-threads", type=int, default=1,
                        help="parallel annotate loops of tenant A (1: one `kubectl annotate` loop, as fast as the "
                        "API server answers)")
    parser.add_argument("--cluster", default=os.environ.get("LLMOS_TEST_CLUSTER", "llmos"))
    args = parser.parse_args()

    from kubernetes import client
    from kubernetes import config as k8s_config

    from llmos_operator.dev import cluster, operator_process
    from tests.integration.conftest import OperatorProcess

    name = args.cluster
    started_here = not cluster.is_running(name, cluster.binaries())
    kubeconfig = cluster.up(name)
    cluster.kubectl(name, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl(name, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    operator_process.stop(name)
    from llmos_operator.dev import platform

    platform.install(name)  # the chart's CRDs, RBAC and admission policies; the operator runs as its ServiceAccount
    op = OperatorProcess(platform.operator_kubeconfig(name), cluster.logs_dir(name), name)
    op.start()
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    custom, apps, core = client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api)
    suffix = f"{int(time.time()) % 100000}"
    a_ns, b_ns = f"noisy-a-{suffix}", f"noisy-b-{suffix}"

    def tenant(ns: str, gpus: int) -> None:
        custom.create_cluster_custom_object(GROUP, VERSION, "tenants", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": ns},
            "spec": {"namespaces": [ns], "quota": {"gpus": {"h100": gpus}}, "policy": {"allowUnsignedModels": True}}})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if (core.read_namespace(ns).metadata.labels or {}).get("llmos.dev/tenant") == ns:
                    break
            except client.ApiException:
                pass
            time.sleep(0.1)
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "models", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "m"},
            "spec": {"source": {"uri": "hf://org/m"}, "signature": {"policy": "Disabled"}}})

    def mdep(ns: str, mdep_name: str, replicas: int) -> dict:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": mdep_name},
                "spec": {"model": "m", "replicas": replicas, "gpu": {"class": "h100", "count": 1}}}

    round_trips: dict[str, list[float]] = {}

    def b_latencies(phase: str) -> list[float]:
        out = []
        for i in range(args.samples):
            mdep_name = f"{phase}-{i}"
            # Control: one plain API round trip, to tell the control plane's own slowdown from the operator's.
            start = time.monotonic()
            core.read_namespace(b_ns)
            round_trips.setdefault(phase, []).append(time.monotonic() - start)
            start = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, b_ns, "modeldeployments", mdep(b_ns, mdep_name, 1))
            while True:
                try:
                    apps.read_namespaced_deployment(mdep_name, b_ns)
                    break
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
                    if time.monotonic() - start > 60:
                        raise SystemExit(f"{phase} sample {i}: no Deployment after 60 s") from None
                    time.sleep(0.005)
            out.append(time.monotonic() - start)
            custom.delete_namespaced_custom_object(GROUP, VERSION, b_ns, "modeldeployments", mdep_name)
            # The freed GPU is back in the ledger before the next sample (else B would queue behind itself).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                used = (custom.get_cluster_custom_object(GROUP, VERSION, "tenants", b_ns).get("status", {})
                        .get("usage", {}).get("gpus", {}).get("h100", 0))
                if used == 0:
                    break
                time.sleep(0.05)
        return out

    stop = threading.Event()
    annotations = [0]

    def annotate_loop(offset: int) -> None:
        own = client.CustomObjectsApi(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
        n = 0
        while not stop.is_set():
            i = (offset + n) % args.noisy_deployments
            own.patch_namespaced_custom_object(GROUP, VERSION, a_ns, "modeldeployments", f"a-{i}",
                                               {"metadata": {"annotations": {"noise": str(n)}}})
            n += 1
            annotations[0] += 1

    try:
        tenant(a_ns, args.noisy_deployments)
        tenant(b_ns, 1)
        for i in range(args.noisy_deployments):
            custom.create_namespaced_custom_object(GROUP, VERSION, a_ns, "modeldeployments", mdep(a_ns, f"a-{i}", 0))
        time.sleep(5)  # A's deployments admitted and settled
        quiet = b_latencies("quiet")
        threads = [threading.Thread(target=annotate_loop, args=(k * 7,), daemon=True)
                   for k in range(args.noise_threads)]
        started = time.monotonic()
        for t in threads:
            t.start()
        noisy = b_latencies("noisy")
        stop.set()
        for t in threads:
            t.join(timeout=10)
        rate = annotations[0] / (time.monotonic() - started)
    finally:
        stop.set()
        for ns in (a_ns, b_ns):
            try:
                custom.delete_cluster_custom_object(GROUP, VERSION, "tenants", ns)
                core.delete_namespace(ns)
            except client.ApiException:
                pass
        op.stop()
        if started_here:
            cluster.down(name)

    print(f"\ntenant B: create → child Deployment, {args.samples} samples each; tenant A annotating "
          f"{args.noisy_deployments} deployments at {rate:.0f} changes/s in the noisy phase")
    print(f"{'':10s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}   {'API round trip p50 ms (control)':>32s}")
    for label, phase, samples in (("A quiet", "quiet", quiet), ("A noisy", "noisy", noisy)):
        print(f"{label:10s} {statistics.median(samples) * 1000:8.0f} {percentile(samples, 0.99) * 1000:8.0f} "
              f"{max(samples) * 1000:8.0f}   {statistics.median(round_trips[phase]) * 1000:32.1f}")
    ratio50 = statistics.median(noisy) / statistics.median(quiet)
    ratio99 = percentile(noisy, 0.99) / percentile(quiet, 0.99)
    print(f"noisy/quiet: p50 {ratio50:.2f}×, p99 {ratio99:.2f}× (goal ≤ 1.5×)")
    return 0 if ratio99 <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
