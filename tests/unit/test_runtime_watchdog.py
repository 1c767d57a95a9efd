"""The engine watchdog's judgement (llmos_runtime.watchdog), pure: hung (work pending, no token), silent (no /health
answer), unhealthy (/health said so), never an idle engine, never a slow answer; and reading vLLM's metrics."""

from __future__ import annotations

import pytest

from llmos_runtime.watchdog import DEAD, OK, UNREADY, Watchdog, read_engine_metrics

pytestmark = pytest.mark.unit

N, M = 30.0, 120.0


def _fed(wd: Watchdog, start: float, end: float, *, pending: int, tokens, step: float = 3.0, health: bool = True):
    """Feed polls every ``step`` s from ``start`` to ``end``: /health answers (or not), and the progress sample
    (``tokens(t)`` gives the generation counter at t; None: the engine exports no counters)."""
    t = start
    while t <= end:
        if health:
            wd.health(t, True)
        value = tokens(t)
        wd.progress(t, pending, None if value is None else (value, 0.0, 0.0, 0.0, 0.0))
        t += step
    return wd


def test_work_in_flight_without_a_token_is_unready_after_n_then_dead_after_m():
    wd = Watchdog(N, M, now=0.0)
    _fed(wd, 0, 60, pending=2, tokens=lambda t: min(t, 10.0))  # tokens until t=10, then nothing
    assert wd.verdict(39.0).level == OK  # stalled since the poll at t=12 (the first unchanged sample after 10)
    v = wd.verdict(43.0)
    assert v.level == UNREADY and v.state == "hung"
    assert v.reason == "engine hung: 2 request(s) in flight and no token generated for 31s"
    _fed(wd, 63, 135, pending=2, tokens=lambda t: 10.0)
    assert wd.verdict(131.0).level == UNREADY
    assert wd.verdict(132.0).level == DEAD


def test_progress_again_is_ready_again():
    wd = Watchdog(N, M, now=0.0)
    _fed(wd, 0, 45, pending=1, tokens=lambda t: 5.0)
    assert wd.verdict(45.0).level == UNREADY
    wd.progress(48.0, 1, (6.0, 0.0, 0.0, 0.0, 0.0))  # SIGCONT: a token
    assert wd.verdict(48.5).level == OK and wd.stalled_for(48.5) == 0.5


def test_an_idle_engine_is_never_judged_hung():
    wd = Watchdog(N, M, now=0.0)
    _fed(wd, 0, 1000, pending=0, tokens=lambda t: 7.0)  # no work, no tokens, for 1000 s
    assert wd.verdict(1000.0).level == OK and wd.stalled_for(1000.0) == 0.0
    # work arrives: the clock starts then, not at the last token long ago
    wd.progress(1003.0, 1, (7.0, 0.0, 0.0, 0.0, 0.0))
    assert wd.verdict(1004.0).level == OK
    assert wd.verdict(1003.0 + N).level == UNREADY


def test_a_slow_health_answer_under_load_is_not_a_fault():
    """/health shares vLLM's saturated event loop: answers that take 10 s each are answers; tokens flow."""
    wd = Watchdog(N, M, now=0.0)
    t = 0.0
    while t < 600:
        wd.health(t, True)  # each poll answers 10 s after it was sent
        wd.progress(t, 400, (t * 100, 0.0, 0.0, 0.0, 0.0))
        assert wd.verdict(t + 9.9).level == OK
        t += 10.0


def test_no_health_answer_at_all_is_unready_then_dead():
    wd = Watchdog(N, M, now=0.0)
    wd.health(5.0, True)
    assert wd.verdict(34.0).level == OK
    v = wd.verdict(35.0)
    assert (v.level, v.state, v.reason) == (UNREADY, "silent", "engine did not answer /health for 30s")
    assert wd.verdict(125.0).level == DEAD


def test_a_silent_engine_is_judged_silent_even_with_work_pending():
    """vLLM's API server stopped right after a request came in: no answers, no samples any more. Its stall clock
    started a moment before the last answer; what is known after that is the silence, which decides — the stale
    stall clock never restarts the pod before the silence has lasted the restart threshold."""
    wd = Watchdog(N, M, now=0.0)
    wd.progress(9.0, 1, (5.0, 0.0, 0.0, 0.0, 0.0))  # a request appears
    wd.health(9.5, True)  # the last answer; then nothing answers any more
    assert wd.verdict(9.0 + N).state == "hung"  # stalled 30 s, silent 29.5 s
    assert wd.verdict(9.5 + N).state == "silent"
    v = wd.verdict(9.0 + M)  # stalled 120 s, but silent 119.5 s
    assert (v.level, v.state) == (UNREADY, "silent")
    v = wd.verdict(9.5 + M)
    assert (v.level, v.state, v.reason) == (DEAD, "silent", "engine did not answer /health for 120s")


def test_an_unhealthy_answer_is_unready_at_once_and_dead_if_it_lasts():
    wd = Watchdog(N, M, now=0.0)
    wd.health(10.0, True)
    wd.health(13.0, False, "/health answered HTTP 503")
    v = wd.verdict(13.0)
    assert (v.level, v.state) == (UNREADY, "unhealthy") and "/health answered HTTP 503" in v.reason
    wd.health(16.0, True)
    assert wd.verdict(16.0).level == OK
    for t in range(19, 140, 3):
        wd.health(float(t), False, "/health answered HTTP 503")
    assert wd.verdict(135.9).level == UNREADY and wd.verdict(136.0).level == DEAD  # 120 s after the last 200


def test_without_token_counters_only_health_is_judged():
    wd = Watchdog(N, M, now=0.0)
    _fed(wd, 0, 300, pending=3, tokens=lambda t: None)  # --disable-log-stats
    assert wd.blind and wd.verdict(300.0).level == OK


def test_thresholds_are_checked():
    with pytest.raises(ValueError):
        Watchdog(0, 10, now=0.0)
    with pytest.raises(ValueError):
        Watchdog(20, 10, now=0.0)


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 9.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 120.0
vllm:prompt_tokens_created{engine="0",model_name="tiny"} 1.79e+09
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="tiny"} 480.0
# TYPE vllm:request_success counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 4.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 6.0
# TYPE vllm:generation_tokens_per_step histogram
vllm:generation_tokens_per_step_bucket{le="1.0"} 3.0
"""


def test_reading_vllms_metrics():
    pending, counters = read_engine_metrics(VLLM_METRICS)
    assert pending == 5  # running + waiting (not the per-reason breakdown)
    assert counters == (480.0, 120.0, 10.0, 0.0, 0.25)
    assert read_engine_metrics("") == (None, None)
    assert read_engine_metrics("vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n") == (1, None)
