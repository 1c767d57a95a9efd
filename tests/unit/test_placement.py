"""Placement: affinity/tolerations/spread from a GPU class, can-ever-fit, scheduler event summaries."""

import pytest

from llmos_operator.config import GPUClass, default_config
from llmos_operator.core.placement import (
    FITS,
    INSUFFICIENT_GPUS_PER_NODE,
    INSUFFICIENT_RESOURCES,
    NO_NODES_OF_CLASS,
    TAINTS_NOT_TOLERATED,
    can_ever_fit,
    parse_failed_scheduling,
    pod_placement,
    summarize_scheduling_failures,
    tolerates,
)

pytestmark = pytest.mark.unit

CFG = default_config()
H100, L4 = CFG.gpu_class("h100"), CFG.gpu_class("l4")
TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(name, product=None, gpus=0, cpu="64", memory="512Gi", taints=None):
    labels = {"kubernetes.io/hostname": name}
    alloc = {"cpu": cpu, "memory": memory, "pods": "110"}
    if product:
        labels["nvidia.com/gpu.product"] = product
        alloc["nvidia.com/gpu"] = str(gpus)
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"taints": [TAINT] if taints is None and product else (taints or [])},
            "status": {"allocatable": alloc, "capacity": dict(alloc)}}


# The local cluster's default pools (operator/llmos_operator/dev/nodes.py).
CLUSTER = ([node(f"h{i}", "NVIDIA-H100-80GB-HBM3", 8, cpu="192", memory="2Ti") for i in range(4)]
           + [node(f"l{i}", "NVIDIA-L4", 4, cpu="48", memory="192Gi") for i in range(4)]
           + [node(f"c{i}") for i in range(2)])


def test_pod_placement_for_h100():
    p = pod_placement(H100, {"app": "x"})
    term = p["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term == [{"matchExpressions": [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]}]}]
    assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                                 "effect": "NoSchedule"}]
    (spread,) = p["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"] == {"matchLabels": {"app": "x"}} and spread["maxSkew"] == 1


def test_class_without_labels_has_no_affinity():
    assert "affinity" not in pod_placement(GPUClass(name="any"), {"app": "x"})


@pytest.mark.parametrize(("cls", "gpus", "fits", "reason"), [
    (H100, 8, True, FITS), (H100, 9, False, INSUFFICIENT_GPUS_PER_NODE),
    (L4, 4, True, FITS), (L4, 5, False, INSUFFICIENT_GPUS_PER_NODE),
])
def test_can_ever_fit_on_the_local_cluster(cls, gpus, fits, reason):
    fit = can_ever_fit(CLUSTER, cls, gpus)
    assert (fit.fits, fit.reason) == (fits, reason)
    assert fit.nodes_of_class == 4


def test_insufficient_gpus_message_is_actionable():
    fit = can_ever_fit(CLUSTER, L4, 8)
    assert "needs 8 nvidia.com/gpu" in fit.message and "largest of its 4 nodes has 4" in fit.message
    assert "nvidia.com/gpu.product=NVIDIA-L4" in fit.message and fit.max_gpus_per_node == 4


def test_no_nodes_of_class():
    a100 = GPUClass(name="a100", node_labels={"nvidia.com/gpu.product": "NVIDIA-A100"})
    fit = can_ever_fit(CLUSTER, a100, 1)
    assert not fit.fits and fit.reason == NO_NODES_OF_CLASS and "a100" in fit.message
    assert can_ever_fit([], H100, 1).reason == NO_NODES_OF_CLASS


def test_untolerated_taint_and_transient_taints():
    no_toleration = GPUClass(name="h100", node_labels=H100.node_labels)
    fit = can_ever_fit(CLUSTER, no_toleration, 1)
    assert fit.reason == TAINTS_NOT_TOLERATED and "nvidia.com/gpu=present:NoSchedule" in fit.message
    flaky = [node("h", "NVIDIA-H100-80GB-HBM3", 8, taints=[TAINT, {"key": "node.kubernetes.io/not-ready",
                                                                    "effect": "NoExecute"}])]
    assert can_ever_fit(flaky, H100, 8).fits


def test_cpu_and_memory_requests_count():
    assert can_ever_fit(CLUSTER, L4, 4, {"cpu": "8", "memory": "64Gi"}).fits
    fit = can_ever_fit(CLUSTER, L4, 4, {"cpu": "8", "memory": "256Gi"})
    assert fit.reason == INSUFFICIENT_RESOURCES and "memory=256Gi" in fit.message


def test_tolerates():
    assert tolerates([{"operator": "Exists"}], TAINT)
    assert tolerates([{"key": "nvidia.com/gpu", "operator": "Exists"}], TAINT)
    assert not tolerates([{"key": "nvidia.com/gpu", "value": "absent"}], TAINT)
    assert not tolerates([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}], TAINT)


MSG = ("0/10 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 4 Insufficient nvidia.com/gpu, "
       "4 node(s) had untolerated taint {nvidia.com/gpu: present}. preemption: 0/10 nodes are available: "
       "4 No preemption victims found for incoming pod, 6 Preemption is not helpful for scheduling.")


def test_parse_failed_scheduling():
    total, reasons = parse_failed_scheduling(MSG)
    assert total == 10
    assert reasons == {"node(s) didn't match Pod's node affinity/selector": 2, "Insufficient nvidia.com/gpu": 4,
                       "node(s) had untolerated taint {nvidia.com/gpu: present}": 4}
    assert parse_failed_scheduling("something else") == (None, {})


def test_summarize_scheduling_failures():
    events = [
        {"reason": "FailedScheduling", "message": "0/10 nodes are available: 10 Insufficient cpu.",
         "lastTimestamp": "2026-01-01T00:00:00Z", "involvedObject": {"name": "p1"}},
        {"reason": "FailedScheduling", "message": MSG, "lastTimestamp": "2026-01-01T00:01:00Z",
         "involvedObject": {"name": "p2"}},
        {"reason": "Scheduled", "message": "ok", "involvedObject": {"name": "p3"}},
        {"reason": "FailedScheduling", "note": MSG, "eventTime": "2026-01-01T00:00:30Z", "regarding": {"name": "p2"}},
    ]
    text = summarize_scheduling_failures(events)
    assert text.startswith("2 pods cannot be scheduled: 0/10 nodes are available: 2 node(s)")
    assert "4 Insufficient nvidia.com/gpu" in text and "preemption" not in text
    assert summarize_scheduling_failures([{"reason": "Scheduled"}]) is None
    assert summarize_scheduling_failures([MSG]).startswith("1 pod cannot be scheduled")
