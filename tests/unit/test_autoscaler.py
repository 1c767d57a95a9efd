"""The autoscaler on the in-memory API (tests/support/admission_world.py) with its reads going to local HTTP
stand-ins of the pods' health ports (tests/support/metrics_standins.py: vLLM's three gauges, values the test sets):
a round reads each ready replica of the deployment's own uid chain, records the count in status.autoscaling, and
admission grants what the quota allows (in part), which the reconciler applies."""

from __future__ import annotations

import random

import pytest

from llmos_operator.config import AutoscalerConfig, OperatorConfig, RuntimeConfig
from tests.support import builders
from tests.support.admission_world import World
from tests.support.metrics_standins import StandIns
from tests.support.runtime_proc import free_port

pytestmark = pytest.mark.unit

AUTOSCALING = {"minReplicas": 1, "maxReplicas": 6, "metric": "waitingRequests", "target": 2,
               "scaleDownStabilizationSeconds": 0}


@pytest.fixture
def setup():
    port = free_port()
    prefix = f"127.{random.randint(64, 250)}.{random.randint(0, 250)}"
    ips = [f"{prefix}.{i}" for i in range(1, 9)]
    standins = StandIns(port).start(ips)
    config = OperatorConfig(runtime=RuntimeConfig(health_port=port),
                            autoscaler=AutoscalerConfig(timeout_seconds=1))
    world = World(config)
    world.tenant("t", ["t-a"], {"h100": 3})
    world.deploy("t-a", "chat", 1, 1, "h100", autoscaling=AUTOSCALING)
    world.drain()
    yield world, standins, ips
    standins.close()


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def ready_pod(world: World, name: str, ip: str) -> None:
    world.pod("t-a", "chat", name, gpus=1)
    world.api.merge_patch("Pod", name, "t-a", {"status": {"podIP": ip, "conditions": [
        {"type": "Ready", "status": "True"}]}})


def one_round(world: World) -> None:
    world.manager.autoscaler.run_once()
    world.drain()


def test_load_up_is_granted_as_far_as_the_quota_goes_and_load_down_gives_gpus_back(setup):
    world, standins, ips = setup
    assert world.api.get("Deployment", "chat", "t-a")["spec"]["replicas"] == 1
    ready_pod(world, "chat-0", ips[0])
    standins.values[ips[0]] = {"waiting": 5.0}  # 5 waiting, target 2 per replica: 3 replicas
    one_round(world)
    mdep = world.api.get("ModelDeployment", "chat", "t-a")
    assert mdep["status"]["autoscaling"]["desiredReplicas"] == 3
    assert mdep["status"]["autoscaling"]["metricValue"] == 5.0
    assert world.api.get("Deployment", "chat", "t-a")["spec"]["replicas"] == 3
    assert conditions(mdep)["ScalingActive"]["status"] == "True"
    assert conditions(mdep)["ScalingLimited"]["status"] == "False"
    assert any(e["reason"] == "ScaledUp" for e in world.api.events)

    for i in (1, 2):
        ready_pod(world, f"chat-{i}", ips[i])
    for ip in ips[:3]:
        standins.values[ip] = {"waiting": 4.0}  # 12 waiting: 6 wanted, the quota holds 3
    one_round(world)
    mdep = world.api.get("ModelDeployment", "chat", "t-a")
    assert mdep["status"]["autoscaling"]["desiredReplicas"] == 6
    assert (mdep["status"]["desiredReplicas"], mdep["status"]["grantedReplicas"]) == (6, 3)
    limited = conditions(mdep)["ScalingLimited"]
    assert limited["status"] == "True" and limited["reason"] == "QuotaExceeded"
    assert limited["message"].startswith("h100 3/3: 3 of 6 replicas granted; 3 more wait")
    assert conditions(mdep)["QuotaAdmitted"]["status"] == "True"  # minReplicas (1) is what must be admitted
    assert world.api.get("Tenant", "t")["status"]["usage"]["gpus"]["h100"] == 3

    for ip in ips[:3]:
        standins.values[ip] = {"waiting": 0.0}
    one_round(world)
    mdep = world.api.get("ModelDeployment", "chat", "t-a")
    assert mdep["status"]["autoscaling"]["desiredReplicas"] == 1
    assert world.api.get("Deployment", "chat", "t-a")["spec"]["replicas"] == 1
    assert world.api.get("Tenant", "t")["status"]["reservations"]["t-a/chat"]["gpus"] == 1
    assert any(e["reason"] == "ScaledDown" for e in world.api.events)


def test_reads_only_ready_pods_of_its_own_chain_with_the_gauges_named(setup):
    world, standins, ips = setup
    ready_pod(world, "chat-0", ips[0])
    # a tenant's pod wearing the deployment's label, not made by its ReplicaSet: never read, never counted
    intruder = builders.pod("t-a", "fake", labels={"llmos.dev/model-deployment": "chat"})
    intruder["status"] = {"phase": "Running", "podIP": ips[5], "conditions": [{"type": "Ready", "status": "True"}]}
    world.api.put(intruder)
    # a pod still starting: not read
    world.pod("t-a", "chat", "chat-1", gpus=1)
    world.api.merge_patch("Pod", "chat-1", "t-a", {"status": {"podIP": ips[1]}})
    standins.values[ips[5]] = {"waiting": 1000.0}
    one_round(world)
    assert {address for address, _ in standins.requests} == {ips[0]}
    assert standins.requests[0][1] == ("name[]=vllm:num_requests_waiting&name[]=vllm:num_requests_running"
                                       "&name[]=vllm:kv_cache_usage_perc")
    assert "autoscaling" not in world.api.get("ModelDeployment", "chat", "t-a")["status"]  # load 0: stays at 1


def test_replicas_that_do_not_answer_hold_the_count_and_say_why(setup):
    world, standins, ips = setup
    ready_pod(world, "chat-0", ips[0])
    standins.status[ips[0]] = 500
    one_round(world)
    active = conditions(world.api.get("ModelDeployment", "chat", "t-a"))["ScalingActive"]
    assert active["status"] == "False" and active["reason"] == "MetricsUnavailable"
    assert "HTTP 500" in active["message"] and "holds at 1" in active["message"]
    del standins.status[ips[0]]
    one_round(world)
    assert conditions(world.api.get("ModelDeployment", "chat", "t-a"))["ScalingActive"]["status"] == "True"


def test_an_hpa_on_an_autoscaled_deployment_is_reported_and_the_count_holds(setup):
    world, standins, ips = setup
    ready_pod(world, "chat-0", ips[0])
    world.api.put({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "keda-hpa-chat", "namespace": "t-a"},
                   "spec": {"scaleTargetRef": {"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                                               "name": "chat"}, "maxReplicas": 5}})
    standins.values[ips[0]] = {"waiting": 5.0}
    one_round(world)
    mdep = world.api.get("ModelDeployment", "chat", "t-a")
    active = conditions(mdep)["ScalingActive"]
    assert active["status"] == "False" and active["reason"] == "ExternalAutoscaler"
    assert "t-a/keda-hpa-chat" in active["message"]
    assert "autoscaling" not in mdep["status"] and standins.requests == []
    world.api.delete("HorizontalPodAutoscaler", "keda-hpa-chat", "t-a")
    one_round(world)
    assert world.api.get("ModelDeployment", "chat", "t-a")["status"]["autoscaling"]["desiredReplicas"] == 3
