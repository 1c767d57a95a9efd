"""Autoscaling (issue 21): decision latency from a load step to the new replica count, and the operator's CPU for
polling 1,000 autoscaled deployments.

    .venv/bin/python bench/autoscale.py latency [--cycles 5] [--cluster NAME]
    .venv/bin/python bench/autoscale.py cpu [--deployments 1000] [--seconds 20] [--rounds 3] [--padding 0] [--poll 10]

``latency``: the local control plane and the operator as its own process (as the integration tests run them), one
ModelDeployment (waitingRequests, target 2, windows 0, maxReplicas 4) whose pods the process kubelet runs as
stand-ins serving vLLM's gauges on loopback addresses of their own (tests/support/load_pod.py; engine start
excluded by construction: a stand-in is ready within a second). Each cycle steps the load from 0 to 8 waiting
requests and back; it prints, per step, the seconds to (a) the count recorded in status.autoscaling, (b) the child
Deployment's replicas, (c) for a scale-up, the new replicas ready. Goal: (b) within 15 s.

``cpu``: the autoscaler of the real controller (controller/autoscaler.py, its own thread and event loop) over an
in-memory API holding N autoscaled deployments of one ready replica each (tests/support/admission_world.py), whose
health ports are N loopback addresses served by stand-ins in another process (tests/support/metrics_standins.py;
their CPU is not counted). Windows of ``--seconds`` with polling off and on alternate ``--rounds`` times in one run;
this process's CPU per window, as a percentage of one core, side by side, and the reads, rounds and their duration.
The load is steady (no decision, so no API write: what polling itself costs). ``--padding`` bytes make each answer
as large as a whole vLLM /metrics (a runtime that does not pass ``name[]`` on). Goal: ≤ 5 % of a core at 1,000.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------------------------------
# CPU of polling N deployments


def _world(count: int, port: int, prefix: str, poll: float):
    from llmos_operator.config import AutoscalerConfig, OperatorConfig, RuntimeConfig
    from tests.support.admission_world import World
    from tests.support.metrics_standins import addresses

    config = OperatorConfig(runtime=RuntimeConfig(health_port=port), autoscaler=AutoscalerConfig(poll_seconds=poll))
    world = World(config)
    per_tenant = 100
    ips = addresses(count, prefix)
    autoscaling = {"minReplicas": 1, "maxReplicas": 4, "metric": "waitingRequests", "target": 2}
    for t in range((count + per_tenant - 1) // per_tenant):
        world.tenant(f"t{t}", [f"t{t}-a"], {"h100": 4 * per_tenant})
    for i in range(count):
        ns = f"t{i // per_tenant}-a"
        world.deploy(ns, f"d{i}", 1, 1, "h100", autoscaling=autoscaling)
    world.drain()
    for i in range(count):
        ns, name = f"t{i // per_tenant}-a", f"d{i}"
        world.pod(ns, name, f"{name}-0", gpus=1)
        world.api.merge_patch("Pod", f"{name}-0", ns, {"status": {"podIP": ips[i], "conditions": [
            {"type": "Ready", "status": "True"}]}})
    world.drain()
    return world, ips


def cpu(args: argparse.Namespace) -> int:
    import json
    import resource

    from llmos_operator import metrics
    from tests.support.runtime_proc import free_port

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # keep-alive: one socket per replica read
    port, prefix = free_port(), f"127.{61 + os.getpid() % 40}"
    values = Path(tempfile.mkdtemp()) / "values.json"
    from tests.support.metrics_standins import addresses

    values.write_text(json.dumps({ip: {"waiting": 2.0} for ip in addresses(args.deployments, prefix)}))  # at target
    standins = subprocess.Popen(
        [sys.executable, "-m", "tests.support.metrics_standins", "--port", str(port), "--count",
         str(args.deployments), "--prefix", prefix, "--values", str(values), "--padding", str(args.padding)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert standins.stdout is not None and standins.stdout.readline().strip() == "ready"
        started = time.monotonic()
        world, _ = _world(args.deployments, port, prefix, args.poll)
        print(f"{args.deployments} autoscaled deployments in memory in {time.monotonic() - started:.0f} s; "
              f"stand-ins on {args.deployments} loopback addresses, answers of "
              f"{'the three gauges' if not args.padding else f'~{args.padding} bytes'}")
        scaler = world.manager.autoscaler
        writes_before = len(world.api.writes)
        off, on, reads, rounds = [], [], [], []
        for _ in range(args.rounds):
            off.append(_cpu_percent(args.seconds))
            scaler._stop.clear()
            scaler.start()
            time.sleep(1.0)  # the first round opens the connections (kept alive after)
            ok_before = metrics.AUTOSCALER_READS.labels("ok")._value.get()
            rounds_before = scaler.rounds
            on.append(_cpu_percent(args.seconds))
            reads.append(metrics.AUTOSCALER_READS.labels("ok")._value.get() - ok_before)
            rounds.append(scaler.rounds - rounds_before)
            scaler.stop()
        errors = {r: metrics.AUTOSCALER_READS.labels(r)._value.get() for r in ("error", "timeout", "http_error")}
        writes = world.api.writes[writes_before:]
        print(f"polling off: {', '.join(f'{x:.2f}' for x in off)} % of a core (median {statistics.median(off):.2f})")
        print(f"polling on:  {', '.join(f'{x:.2f}' for x in on)} % of a core (median {statistics.median(on):.2f})")
        read_rate = statistics.median(r / args.seconds for r in reads)
        delta = statistics.median(on) - statistics.median(off)
        print(f"reads: {read_rate:.0f}/s ({sum(reads)} in all, failed {errors}); rounds: {sum(rounds)}; "
              f"CPU per read: {delta / 100 / read_rate * 1e6:.0f} µs")
        hist = metrics.AUTOSCALER_ROUND_SECONDS
        total, count = hist._sum.get(), sum(b.get() for b in hist._buckets)
        print(f"round duration: mean {total / max(count, 1) * 1000:.0f} ms (poll every "
              f"{world.config.autoscaler.poll_seconds:g} s); API writes while polling: {len(writes)}")
        return 0 if statistics.median(on) <= 5.0 else 1  # the goal at 1,000 deployments
    finally:
        standins.terminate()
        standins.wait(10)


def _cpu_percent(seconds: float) -> float:
    t0, c0 = time.monotonic(), time.process_time()
    time.sleep(seconds)
    return (time.process_time() - c0) / (time.monotonic() - t0) * 100


# ---------------------------------------------------------------------------------------------------------------------
# Decision latency on the local control plane


def latency(args: argparse.Namespace) -> int:
    import uuid

    from kubernetes import client
    from kubernetes import config as k8s_config

    from llmos_operator.dev import cluster, operator_process, platform
    from tests.support.cluster_fixtures import GROUP, VERSION, Objects, OperatorProcess
    from tests.support.load_pod import LoadSplitter, load_pod_runner
    from tests.support.process_kubelet import ProcessKubelet, force_delete_pods

    name = args.cluster
    started_here = not cluster.is_running(name, cluster.binaries())
    kubeconfig = cluster.up(name)
    operator_process.stop(name)
    platform.install(name)
    op = OperatorProcess(platform.operator_kubeconfig(name), cluster.logs_dir(name), name, name="bench")
    op.start()
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    ns = f"llmos-kubelet-bench-{uuid.uuid4().hex[:4]}"
    root = Path(tempfile.mkdtemp())
    (root / "load").mkdir()
    kubelet = ProcessKubelet(api, ns, root / "kubelet", probe_period=0.2,
                             runner=load_pod_runner(root / "load", drain_seconds=0.2)).start()
    load = LoadSplitter(kubelet, root / "load")
    load.start()
    objects = Objects(api, ns)
    rows: list[tuple[str, float, float, float | None]] = []
    try:
        objects.tenant(ns, gpus={"h100": 8}, namespaces=[ns])
        _until(lambda: _exists(client.CoreV1Api(api), ns), 60)
        objects.model()
        objects.deployment("d", replicas=1, autoscaling={
            "minReplicas": 1, "maxReplicas": 4, "metric": "waitingRequests", "target": 2,
            "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 0})
        load.set("d", waiting=0.0)

        def desired() -> int | None:
            st = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", "d").get("status") or {}
            return (st.get("autoscaling") or {}).get("desiredReplicas")

        def replicas() -> int | None:
            try:
                return apps.read_namespaced_deployment("d", ns).spec.replicas
            except client.ApiException:
                return None

        def ready() -> int:
            return sum(1 for e in kubelet.endpoints().values() if e.ready and not e.deleting)

        _until(lambda: replicas() == 1 and ready() == 1, 60)
        time.sleep(11)  # one round with the replica ready
        for _ in range(args.cycles):
            for total, want in ((8.0, 4), (0.0, 1)):
                step = time.monotonic()
                load.set("d", waiting=total)
                t_desired = _until(lambda: desired() == want, 60) - step
                t_replicas = _until(lambda: replicas() == want, 60) - step
                t_ready = (_until(lambda: ready() == want, 60) - step) if want > 1 else None
                rows.append(("up" if want > 1 else "down", t_desired, t_replicas, t_ready))
                print(f"{rows[-1][0]:>4}: recorded {t_desired:5.2f} s, Deployment {t_replicas:5.2f} s"
                      + (f", replicas ready {t_ready:5.2f} s" if t_ready is not None else ""), flush=True)
                _until(lambda: len(kubelet.endpoints()) == want, 60)
                time.sleep(random.uniform(1, 11))  # steps fall anywhere in the poll period
        worst = max(r[2] for r in rows)
        print(f"load step → Deployment replicas: median {statistics.median(r[2] for r in rows):.2f} s, "
              f"max {worst:.2f} s over {len(rows)} steps (the chart's autoscaler.pollSeconds)")
        return 0 if worst <= 15 else 1
    finally:
        load.stop()
        kubelet.close()
        objects.cleanup()
        force_delete_pods(api, ns)
        op.stop()
        if started_here and not os.environ.get("LLMOS_KEEP_CLUSTER"):
            cluster.down(name)


def _exists(core, ns: str) -> bool:
    from kubernetes import client

    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except client.ApiException:
        return False


def _until(predicate, timeout: float) -> float:
    """Poll every 50 ms; the time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit("timed out")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--cycles", type=int, default=5)
    lat.add_argument("--cluster", default=os.environ.get("LLMOS_TEST_CLUSTER", "llmos"))
    c = sub.add_parser("cpu")
    c.add_argument("--deployments", type=int, default=1000)
    c.add_argument("--seconds", type=float, default=20)
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--padding", type=int, default=0)
    c.add_argument("--poll", type=float, default=10.0, help="autoscaler.pollSeconds")
    args = parser.parse_args()
    return latency(args) if args.what == "latency" else cpu(args)


if __name__ == "__main__":
    sys.exit(main())
