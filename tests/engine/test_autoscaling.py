"""Autoscaling on real vLLM (issue 21): a load step scales a ModelDeployment from 1 to 2 replicas and back, inside
the tenant's quota, without a failed request.

The parts are those of the rolling-update test (tests/engine/test_rolling_update.py): the local control plane and
the operator under test; a tenant namespace `llmos-kubelet-<suffix>` whose pods tests/support/process_kubelet.py
runs as local `llmos-runtime` processes with vLLM on CPU — here each on a loopback address of its own (its
status.podIP) with the container's ports, so the operator's autoscaler reads each replica's `/metrics` on the
health port exactly where it would in a cluster; a load balancer routing to Ready pods only, retrying a request a
draining replica refused (as a Service behind a retrying gateway); a load generator. Nothing is mocked.

One extra engine start (the second replica): the CI budget is tight.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from kubernetes import client

from tests.engine.conftest import record
from tests.engine.test_rolling_update import CPU_ENGINE, ENGINE_START_TIMEOUT, NO_KEYS, EndpointSync
from tests.support.cluster_fixtures import Objects
from tests.support.lb import RoundRobinLB
from tests.support.load import LoadGenerator
from tests.support.process_kubelet import ProcessKubelet, force_delete_pods
from tests.support.tiny_model import TestModels
from tests.support.waiting import wait_for

pytestmark = pytest.mark.engine

AUTOSCALING = {"minReplicas": 1, "maxReplicas": 2, "metric": "runningRequests", "target": 2,
               "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 20}


def _service_account(cluster, namespace: str) -> bool:
    try:
        client.CoreV1Api(cluster.api).read_namespaced_service_account("llmos-runtime", namespace)
        return True
    except client.ApiException:
        return False


def _ready(kubelet: ProcessKubelet) -> list[str]:
    return sorted(n for n, e in kubelet.endpoints().items() if e.ready and not e.deleting)


@pytest.mark.timeout(2 * ENGINE_START_TIMEOUT + 400)
def test_a_load_step_scales_one_to_two_and_back_without_a_failed_request(cluster, operator, tmp_path,
                                                                           test_models: TestModels):
    namespace = f"llmos-kubelet-{uuid.uuid4().hex[:6]}"
    kubelet = ProcessKubelet(cluster.api, namespace, tmp_path / "kubelet", pod_ips=True).start()
    objects = Objects(cluster.api, namespace)
    apps = client.AppsV1Api(cluster.api)
    lb = RoundRobinLB(check_interval=0.2).start()
    sync = EndpointSync(kubelet, lb).start()
    loads: list[LoadGenerator] = []

    def explain() -> str:
        return "\nkubelet:\n" + "\n".join(kubelet.events[-30:]) + "".join(
            f"\n--- {n}\n{kubelet.logs(n, 20)}" for n in kubelet.endpoints())

    try:
        objects.tenant(namespace, gpus={"h100": 2}, namespaces=[namespace])
        wait_for(lambda: _service_account(cluster, namespace), timeout=60,
                 message=f"namespace {namespace} made by the operator, with the runtime's ServiceAccount")
        objects.model("m", policy="Disabled", uri=f"file://{test_models.model_v1}")
        objects.wait_condition("models", "m", "Verified", "False", "SignatureDisabled", timeout=60)
        # the load generator carries no API key (keys are tests/engine/test_api_keys*'s subject)
        objects.deployment("d", model="m", replicas=1, engine=CPU_ENGINE, autoscaling=AUTOSCALING, access=NO_KEYS)
        started = time.monotonic()
        wait_for(lambda: len(_ready(kubelet)) == 1, timeout=ENGINE_START_TIMEOUT, interval=1,
                 message="the first replica ready" + explain())
        record("autoscaling: first replica ready after (s)", round(time.monotonic() - started, 1))
        objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
        (first,) = _ready(kubelet)
        health = kubelet.endpoints()[first].health
        whole = httpx.get(health + "/metrics", timeout=10).content
        (tmp_path / "vllm-metrics.txt").write_bytes(whole)  # a real answer, kept with the test's files
        record("autoscaling: vLLM /metrics bytes, whole", len(whole))
        named = httpx.get(health + "/metrics?name[]=vllm:num_requests_waiting&name[]=vllm:num_requests_running"
                          "&name[]=vllm:kv_cache_usage_perc", timeout=10).text
        record("autoscaling: vLLM /metrics bytes, the three gauges named", len(named.encode()))
        assert "vllm:num_requests_running{" in named and "vllm:kv_cache_usage_perc{" in named, named

        # A light load all along; a step of six workers sending back to back: about six requests running on one
        # replica, target 2 per replica: the second replica (the quota's last GPU, maxReplicas).
        loads.append(LoadGenerator(lb.url, "m", workers=1, pause=0.3, max_seconds=900, timeout=120).start())
        wait_for(lambda: loads[0].stats.ok >= 3, timeout=60, message="requests served before the step")
        step = time.monotonic()
        loads.append(LoadGenerator(lb.url, "m", workers=6, pause=0.0, max_seconds=600, timeout=120).start())
        wait_for(lambda: apps.read_namespaced_deployment("d", namespace).spec.replicas == 2, timeout=120,
                 message="the Deployment scaled to 2" + explain())
        record("autoscaling: load step to 2 replicas granted (s)", round(time.monotonic() - step, 1))
        wait_for(lambda: len(_ready(kubelet)) == 2, timeout=ENGINE_START_TIMEOUT, interval=1,
                 message="the second replica ready" + explain())
        record("autoscaling: load step to the second replica ready (s)", round(time.monotonic() - step, 1))
        both = loads[0].stats.ok + loads[1].stats.ok
        wait_for(lambda: loads[0].stats.ok + loads[1].stats.ok >= both + 10, timeout=120,
                 message="requests served by two replicas")

        # The step ends (the light load goes on): after the 20 s window one replica drains and goes.
        heavy = loads[1].stop()
        stepped_down = time.monotonic()
        wait_for(lambda: apps.read_namespaced_deployment("d", namespace).spec.replicas == 1, timeout=120,
                 message="the Deployment scaled back to 1" + explain())
        record("autoscaling: load gone to 1 replica (s, window 20 s)", round(time.monotonic() - stepped_down, 1))
        wait_for(lambda: len(kubelet.endpoints()) == 1 and len(_ready(kubelet)) == 1, timeout=180, interval=1,
                 message="one replica left, the other drained and gone" + explain())
        served = loads[0].stats.ok
        wait_for(lambda: loads[0].stats.ok >= served + 3, timeout=60, message="requests after the scale-down")
        light = loads[0].stop()
        loads.clear()

        st = objects.get("modeldeployments", "d")["status"]
        tenant = objects.get("tenants", namespace)["status"]
        events = {e.reason for e in client.CoreV1Api(cluster.api).list_namespaced_event(
            namespace, field_selector="involvedObject.name=d").items}
        record("autoscaling: requests (light, step)", (light.sent, heavy.sent))
        record("autoscaling: failed", light.failed + heavy.failed)
        record("autoscaling: LB retries (refused before any work)", lb.stats.retried)
        problems = []
        if light.failed or heavy.failed:
            problems.append(f"failed requests: {light.failures + heavy.failures}")
        if st["autoscaling"]["desiredReplicas"] != 1 or st["grantedReplicas"] != 1:
            problems.append(f"status: {st.get('autoscaling')}, granted {st.get('grantedReplicas')}")
        if tenant["usage"]["gpus"].get("h100") != 1:
            problems.append(f"tenant usage: {tenant['usage']}")
        if not {"ScaledUp", "ScaledDown"} <= events:
            problems.append(f"events: {events}")
        assert not problems, "\n".join(problems) + explain()
    finally:
        for load in loads:
            load.stop()
        sync.stop()
        lb.stop()
        kubelet.close()
        objects.cleanup()
        force_delete_pods(cluster.api, namespace)
