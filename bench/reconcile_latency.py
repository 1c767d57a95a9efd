"""Time from `kubectl apply` of a ModelDeployment to its child apps/v1 Deployment existing, on the local control
plane with the operator running as its own process. Prints each sample, the median and the 90th percentile.

    .venv/bin/python bench/reconcile_latency.py [--samples 20]

Reuses a cluster started by `llmos dev up` (else starts one and stops it at the end).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()

    from kubernetes import client
    from kubernetes import config as k8s_config

    from llmos_operator.dev import cluster
    from tests.integration.conftest import OperatorProcess

    name = "llmos"
    started_here = not cluster.is_running(name, cluster.binaries())
    kubeconfig = cluster.up(name)
    kubectl = [str(cluster.binaries(build=False).kubectl), "--kubeconfig", str(kubeconfig)]
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds")],
                   check=True, capture_output=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
                   check=True, capture_output=True)
    from llmos_operator.dev import operator_process

    operator_process.stop(name)
    from llmos_operator.dev import platform

    platform.install(name)  # the chart's CRDs, RBAC and admission policies; the operator runs as its ServiceAccount
    op = OperatorProcess(platform.operator_kubeconfig(name), cluster.logs_dir(name), name)
    op.start()
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    apps = client.AppsV1Api(api)
    ns = "bench-latency"
    base = [
        # llmos makes the tenant's namespace (an existing one would need the platform's adoption annotation).
        {"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": ns},
         "spec": {"namespaces": [ns], "quota": {"gpus": {"h100": 8}}, "policy": {"allowUnsignedModels": True}}},
        {"apiVersion": "llmos.dev/v1alpha1", "kind": "Model", "metadata": {"name": "m", "namespace": ns},
         "spec": {"source": {"uri": "hf://org/m"}, "signature": {"policy": "Disabled"}}},
    ]
    samples = []
    try:
        for obj in base:  # the Tenant first: the Model's namespace exists once llmos has made it
            deadline = time.monotonic() + 30
            while subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(obj), text=True,
                                 capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise SystemExit(f"could not apply {obj['kind']}")
                time.sleep(0.2)
        time.sleep(2)  # the Model is checked (policy Disabled) before the first sample
        for i in range(args.samples):
            mdep = {"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": f"lat-{i}", "namespace": ns},
                    "spec": {"model": "m", "replicas": 1, "gpu": {"class": "h100", "count": 1}}}
            start = time.monotonic()
            subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(mdep), text=True, check=True,
                           capture_output=True)
            while True:
                try:
                    apps.read_namespaced_deployment(f"lat-{i}", ns)
                    break
                except client.ApiException as exc:
                    if exc.status != 404:
                        raise
                    if time.monotonic() - start > 30:
                        raise SystemExit(f"sample {i}: no Deployment after 30 s") from None
                    time.sleep(0.005)
            samples.append(time.monotonic() - start)
            print(f"sample {i + 1:2d}: {samples[-1] * 1000:7.1f} ms")
            subprocess.run([*kubectl, "delete", "modeldeployment", f"lat-{i}", "-n", ns, "--wait=true"],
                           check=True, capture_output=True)
    finally:
        subprocess.run([*kubectl, "delete", "tenant", ns, "--wait=false"], capture_output=True)
        subprocess.run([*kubectl, "delete", "namespace", ns, "--wait=false"], capture_output=True)
        op.stop()
        if started_here:
            cluster.down(name)
    ordered = sorted(samples)
    p90 = ordered[max(0, int(round(0.9 * len(ordered))) - 1)]
    print(f"\nkubectl apply → child Deployment exists: median {statistics.median(samples) * 1000:.0f} ms, "
          f"p90 {p90 * 1000:.0f} ms, min {ordered[0] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms "
          f"({len(samples)} samples; includes kubectl's own start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
