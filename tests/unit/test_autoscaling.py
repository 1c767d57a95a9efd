"""The autoscaler's pure parts: the HPA algorithm (tolerance, replicas without an answer, bounds, stabilisation
windows), what a ModelDeployment asks admission for, and reading vLLM's gauges out of its Prometheus text."""

import pytest

from llmos_operator.api import parse_as
from llmos_operator.api.types import AutoscalingSpec, ModelDeployment
from llmos_operator.core.autoscaling import (
    History,
    Load,
    Observation,
    decide,
    gang_replicas,
    metric_value,
    observe,
    recommend,
    stabilize,
    wanted_replicas,
)
from llmos_operator.core.engine_metrics import QUERY, MetricsScanner, scan

pytestmark = pytest.mark.unit


def spec(**kw) -> AutoscalingSpec:
    base = {"min_replicas": 1, "max_replicas": 10, "metric": "waitingRequests", "target": 2.0,
            "scale_up_stabilization_seconds": 0, "scale_down_stabilization_seconds": 0}
    return AutoscalingSpec(**{**base, **kw})


# The HPA algorithm -----------------------------------------------------------------------------------------------


def test_recommendation_is_ceil_of_the_sum_over_the_target():
    assert recommend(1, 2.0, Observation((10.0,))).replicas == 5
    assert recommend(2, 2.0, Observation((5.0, 6.0))).replicas == 6  # 11 / 2
    assert recommend(4, 2.0, Observation((0.5, 0.5, 0.0, 1.0))).replicas == 1
    assert recommend(3, 2.0, Observation((0.0, 0.0, 0.0))).replicas == 0  # bounds make it minReplicas


def test_inside_the_tolerance_nothing_changes():
    for values in [(2.1, 2.1), (1.9, 1.9), (2.2, 1.8), (2.19, 2.19)]:
        assert recommend(2, 2.0, Observation(values)).replicas == 2, values
    assert recommend(2, 2.0, Observation((2.3, 2.3))).replicas == 3  # 15 % over: ceil(4.6)


def test_no_answer_recommends_nothing():
    r = recommend(3, 2.0, Observation((), unanswered=2, starting=1))
    assert r.replicas is None and r.value is None


def test_replicas_still_starting_count_as_zero_on_the_way_up():
    # 1 ready replica with 6 waiting, 2 more starting, target 2: the starting ones will take the load.
    assert recommend(3, 2.0, Observation((6.0,), starting=2)).replicas == 3
    # with 12 waiting the three together are still short: ceil(12 / 2) = 6
    assert recommend(3, 2.0, Observation((12.0,), starting=2)).replicas == 6


def test_a_ready_replica_without_an_answer_never_causes_a_scale_down():
    # one replica idle, one unreadable: counted as exactly the target, 0 + 2 over 2 replicas: ratio 0.5
    assert recommend(2, 2.0, Observation((0.0,), unanswered=1)).replicas == 1
    # nearly at target with one unreadable: the direction does not turn, and inside the tolerance it stays
    assert recommend(2, 2.0, Observation((1.7,), unanswered=1)).replicas == 2


def test_stabilisation_windows():
    s = spec(scale_up_stabilization_seconds=30, scale_down_stabilization_seconds=60)
    history = History.starting_at(0, 2)
    desired, history = stabilize(history, 10, 5, 2, s)
    assert desired == 2  # the lowest of the last 30 s is 2
    desired, history = stabilize(history, 31, 5, 2, s)
    assert desired == 5  # the 2 recommended at 0 left the up window
    desired, history = stabilize(history, 40, 1, 5, s)
    assert desired == 5  # 5 was recommended within the last 60 s
    desired, history = stabilize(history, 92, 1, 5, s)
    assert desired == 1
    assert all(t > 92 - 60 for t, _ in history.entries)  # older entries are forgotten


def test_decide_bounds_and_reports_the_cap():
    d = decide(spec(max_replicas=4), 1, Observation((20.0,)), History(), 0)
    assert d.desired == 4 and d.capped_at_max and d.wanted_by_load == 4
    d = decide(spec(min_replicas=2), 3, Observation((0.0, 0.0, 0.0)), History(), 0)
    assert d.desired == 2 and not d.capped_at_max
    d = decide(spec(), 3, Observation((), unanswered=3), History(), 0)
    assert d.desired == 3 and d.recommendation.replicas is None


def test_no_scale_down_while_a_rollout_replaces_pods():
    d = decide(spec(), 3, Observation((0.0, 0.0, 0.0)), History(), 0, scale_down_allowed=False)
    assert d.desired == 3
    d = decide(spec(), 3, Observation((10.0, 10.0, 10.0)), History(), 0, scale_down_allowed=False)
    assert d.desired == 10


def test_flapping_inside_the_tolerance_never_moves_the_count():
    s = spec(scale_down_stabilization_seconds=0)
    history, current = History.starting_at(0, 4), 4
    for i in range(1, 200):
        per_replica = 2.0 * (1.08 if i % 2 else 0.93)
        d = decide(s, current, Observation((per_replica,) * current), history, i * 5.0)
        history, current = d.history, d.desired
        assert current == 4


def test_metric_values_must_be_finite_and_not_negative():
    load = Load(waiting=float("nan"), running=-1.0, kv_cache=float("inf"))
    assert [metric_value(load, m) for m in ("waitingRequests", "runningRequests", "kvCacheUsage")] == [None] * 3
    assert metric_value(Load(waiting=1e300), "waitingRequests") == 1e9
    obs = observe([Load(running=3.0), None, Load(waiting=1.0)], "runningRequests", starting=2)
    assert obs == Observation((3.0,), unanswered=2, starting=2)


# What a ModelDeployment asks for -----------------------------------------------------------------------------------


def mdep(autoscaling=None, replicas=1, recorded=None):
    raw = {"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "m", "namespace": "n"},
           "spec": {"model": "m", "replicas": replicas, "gpu": {"class": "h100", "count": 1}}}
    if autoscaling is not None:
        raw["spec"]["autoscaling"] = autoscaling
    if recorded is not None:
        raw["status"] = {"autoscaling": {"desiredReplicas": recorded}}
    return parse_as(ModelDeployment, raw)


AS = {"minReplicas": 2, "maxReplicas": 6, "metric": "runningRequests", "target": 4}


def test_wanted_replicas_follow_the_recorded_decision_within_the_bounds():
    assert wanted_replicas(mdep(replicas=3)) == 3 and gang_replicas(mdep(replicas=3)) is None
    assert wanted_replicas(mdep(AS, replicas=1)) == 2  # spec.replicas is where it starts, raised to min
    assert wanted_replicas(mdep(AS, replicas=4)) == 4
    assert wanted_replicas(mdep(AS, replicas=4, recorded=5)) == 5  # the status wins once recorded
    assert wanted_replicas(mdep(AS, recorded=9)) == 6  # maxReplicas lowered since
    assert gang_replicas(mdep(AS, recorded=5)) == 2


# vLLM's Prometheus text ------------------------------------------------------------------------------------------

VLLM_TEXT = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny chat"} 3.0
vllm:num_requests_running{engine="1",model_name="tiny chat"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny chat"} 7.0
vllm:num_requests_waiting{engine="1",model_name="tiny chat"} 1.0
# HELP vllm:num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny chat",reason="capacity"} 100.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny chat"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="tiny chat"} 0.25
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="tiny chat"} 0.0
"""


def test_scan_sums_request_counts_and_averages_kv_cache_over_engines():
    assert scan(VLLM_TEXT) == Load(waiting=8.0, running=5.0, kv_cache=0.375)
    assert scan(b"vllm:num_requests_running 4\n") == Load(running=4.0)  # no labels, no trailing newline needed
    assert scan(b"vllm:num_requests_running 4") == Load(running=4.0)
    assert scan(b"") == Load()


def test_scan_in_chunks_of_any_size_gives_the_same():
    for size in (1, 2, 7, 64, 1000):
        s = MetricsScanner()
        for i in range(0, len(VLLM_TEXT), size):
            s.feed(VLLM_TEXT[i:i + size])
        assert s.load() == scan(VLLM_TEXT), size


def test_hostile_text_is_bounded_and_ignored():
    s = MetricsScanner()
    s.feed(b"vllm:num_requests_running " + b"9" * (200 * 1024))  # a line longer than MAX_LINE: skipped
    s.feed(b"9\nvllm:num_requests_running 2\n")
    assert s.load() == Load(running=2.0)
    assert scan(b'vllm:num_requests_running{model_name="a } b"} 3\n') == Load(running=3.0)
    assert scan(b"vllm:num_requests_running NaN\nvllm:num_requests_waiting -4\nvllm:kv_cache_usage_perc x\n") == Load()
    many = b"".join(b'vllm:num_requests_running{engine="%d"} 1\n' % i for i in range(10_000))
    assert scan(many).running == 256.0  # at most MAX_SERIES series of one name


def test_the_query_names_the_three_gauges():
    assert QUERY == ("name[]=vllm:num_requests_waiting&name[]=vllm:num_requests_running"
                     "&name[]=vllm:kv_cache_usage_perc")


# Which pods are read -----------------------------------------------------------------------------------------------


def _obj(kind, name, uid, owner=None, **extra):
    meta = {"name": name, "uid": uid}
    if owner is not None:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "uid": owner[2], "controller": True}]
    meta.update(extra.pop("meta", {}))
    return {"kind": kind, "metadata": meta, **extra}


def test_replicas_of_counts_only_the_deployments_own_pods():
    from llmos_operator.core.autoscaling import replicas_of

    objects = {("Deployment", "chat"): _obj("Deployment", "chat", "d1", ("ModelDeployment", "chat", "m1")),
               ("ReplicaSet", "rs-a"): _obj("ReplicaSet", "rs-a", "r1", ("Deployment", "chat", "d1")),
               ("ReplicaSet", "rs-b"): _obj("ReplicaSet", "rs-b", "r2", ("Deployment", "chat", "d1")),
               ("ReplicaSet", "forged"): _obj("ReplicaSet", "forged", "r3", ("Deployment", "chat", "not-d1"))}
    ready = {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}

    def pod(name, rs, uid, status, template="h1", **meta):
        return _obj("Pod", name, f"p-{name}", ("ReplicaSet", rs, uid), status=status,
                    meta={"annotations": {"llmos.dev/config-hash": template}, **meta})

    pods = [pod("a", "rs-a", "r1", ready), pod("b", "rs-a", "r1", {"phase": "Running"}),
            pod("c", "rs-a", "r1", ready, deletionTimestamp="2026-01-01T00:00:00Z"),
            pod("d", "forged", "r3", ready), pod("e", "rs-a", "wrong-uid", ready),
            pod("f", "rs-a", "r1", {"phase": "Failed", "conditions": []})]
    found = replicas_of(pods, lambda kind, name: objects.get((kind, name)), "m1")
    assert found.ready == (("a", "10.0.0.1"),) and found.starting == 1 and not found.rolling
    assert replicas_of(pods, lambda kind, name: objects.get((kind, name)), "other-uid").ready == ()
    rolling = replicas_of(pods + [pod("g", "rs-b", "r2", ready, template="h2")],
                          lambda kind, name: objects.get((kind, name)), "m1")
    assert rolling.rolling and len(rolling.ready) == 2


def test_the_runtime_answers_only_the_families_named():
    """vLLM 0.32's /metrics ignores name[] (its instrumentator route answers before prometheus_client's filtering
    app): the runtime's health port filters what the engine answered."""
    from llmos_runtime.health import only_families

    text = VLLM_TEXT + b"# HELP vllm:prompt_tokens Prompt tokens.\n# TYPE vllm:prompt_tokens counter\n" \
        b'vllm:prompt_tokens_total{engine="0"} 12.0\nvllm:prompt_tokens_created{engine="0"} 1.7e9\n'
    named = only_families(text, ["vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:prompt_tokens"])
    lines = named.decode().splitlines()
    assert "vllm:num_requests_waiting_by_reason" not in named.decode()
    assert not any(line.startswith("vllm:num_requests_running") for line in lines)
    assert scan(named) == Load(waiting=8.0, kv_cache=0.375)
    assert 'vllm:prompt_tokens_total{engine="0"} 12.0' in lines and "# TYPE vllm:prompt_tokens counter" in lines
    assert only_families(text, []) == b""


def test_a_real_vllm_answer():
    """/metrics of vLLM 0.32 on CPU, as tests/engine/test_autoscaling.py read it (idle): the three gauges are found,
    and the runtime's filter leaves them alone, about 500 bytes of 48 KB."""
    from pathlib import Path

    from llmos_runtime.health import only_families

    text = (Path(__file__).parents[1] / "support" / "data" / "vllm-0.32-metrics.txt").read_bytes()
    assert scan(text) == Load(waiting=0.0, running=0.0, kv_cache=0.0)
    named = only_families(text, ["vllm:num_requests_waiting", "vllm:num_requests_running",
                                 "vllm:kv_cache_usage_perc"])
    assert scan(named) == scan(text) and len(named) < 600 < 40_000 < len(text)
