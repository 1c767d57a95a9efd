"""GPU time (core/usage.py): the ledger and the ready replicas integrated exactly between looks, a new period from
zero at its first instant, a restarted operator continuing from the status it wrote (the time it was away counted
with what held); and the bill (cli_usage.py) from Prometheus' answers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmos_operator.core.usage import TenantGPUTime, period_of, reserved_gpus

pytestmark = pytest.mark.unit


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_a_step_function_integrated_between_looks():
    s = TenantGPUTime.starting(ts(2026, 12, 3, 10))
    s = s.advance(ts(2026, 12, 3, 10), {"h100": 4}, {})
    s = s.advance(ts(2026, 12, 3, 10, 30), {"h100": 4}, {"h100": 4})  # ready after 30 min
    s = s.advance(ts(2026, 12, 3, 12), {"h100": 2}, {"h100": 2})
    s = s.advance(ts(2026, 12, 3, 13))
    assert s.reserved_seconds["h100"] / 3600 == pytest.approx(4 * 2 + 2 * 1)
    assert s.serving_seconds["h100"] / 3600 == pytest.approx(4 * 1.5 + 2 * 1)


def test_a_new_period_starts_from_zero_at_its_first_instant():
    s = TenantGPUTime.starting(ts(2026, 12, 31, 23)).advance(ts(2026, 12, 31, 23), {"l4": 1}, {"l4": 1})
    s = s.advance(ts(2027, 1, 1, 2))
    assert s.period == "2027-01" and s.reserved_seconds["l4"] == pytest.approx(2 * 3600)
    assert period_of(ts(2027, 2, 28, 23, 59)) == "2027-02"


def test_a_restarted_operator_continues_from_the_status_it_wrote():
    before = TenantGPUTime.starting(ts(2026, 12, 3)).advance(ts(2026, 12, 3), {"h100": 8}, {"h100": 6})
    before = before.advance(ts(2026, 12, 3, 1))
    status = before.to_status()
    assert status["gpuHours"] == {"h100": {"reserved": 8.0, "serving": 6.0}}
    again = TenantGPUTime.from_status(status)
    assert again is not None
    after = again.advance(ts(2026, 12, 3, 1, 30))  # away for 30 min: what held is counted
    assert after.reserved_seconds["h100"] / 3600 == pytest.approx(12.0)
    assert after.serving_seconds["h100"] / 3600 == pytest.approx(9.0)
    assert TenantGPUTime.from_status({"gpus": {"h100": 2}}) is None


def test_the_meter_writes_reserved_changes_soon_and_serving_changes_once_settled():
    from llmos_operator.controller.usage import (
        CHANGE_WRITE_SECONDS,
        PERSIST_SECONDS,
        SERVING_CHANGE_WRITE_SECONDS,
        SERVING_SETTLE_SECONDS,
        UsageMeter,
    )

    meter = UsageMeter(ctx=None)  # type: ignore[arg-type] — _due reads only what the meter wrote
    t0 = ts(2026, 12, 3)
    written = TenantGPUTime.starting(t0).advance(t0, {"h100": 4}, {"h100": 2})
    meter._persisted["t"] = (t0, ((("h100", 4),), (("h100", 2),)))
    assert not meter._due("t", written, t0 + PERSIST_SECONDS - 1)
    assert meter._due("t", written, t0 + PERSIST_SECONDS)
    reserved = written.advance(t0 + 1, {"h100": 6}, {"h100": 2})
    assert not meter._due("t", reserved, t0 + CHANGE_WRITE_SECONDS - 0.5)
    assert meter._due("t", reserved, t0 + CHANGE_WRITE_SECONDS)
    serving = written.advance(t0 + 1, {"h100": 4}, {"h100": 4})
    meter._serving_changed["t"] = t0 + 1  # replicas still turning ready: the write waits for them to settle
    assert not meter._due("t", serving, t0 + CHANGE_WRITE_SECONDS)
    assert meter._due("t", serving, t0 + 1 + SERVING_SETTLE_SECONDS)
    meter._serving_changed["t"] = t0 + SERVING_CHANGE_WRITE_SECONDS - 1  # never settling: written at the latest
    assert meter._due("t", serving, t0 + SERVING_CHANGE_WRITE_SECONDS)


def test_the_ledger_counts_every_entry():
    assert reserved_gpus({"a/x": {"class": "h100", "gpus": 4}, "a/x#surge": {"class": "h100", "gpus": 2, "kind": "surge"},
                          "a/p#pod": {"class": "l4", "gpus": 1, "kind": "pod"}}) == {"h100": 6, "l4": 1}


def test_increase_between_interpolates_at_the_ends_and_counts_resets():
    from llmos_operator.cli_usage import increase_between, value_at

    gpu = [(float(t), 4.0 * t) for t in range(0, 100, 10)]  # 4 GPUs, sampled every 10 s
    assert increase_between(gpu, 15, 85, extrapolate=True) == pytest.approx(4 * 70)
    assert value_at(gpu, 95, extrapolate=True) == pytest.approx(380)  # past the last sample: its slope, one interval
    assert value_at(gpu, 95) == 360  # tokens: no growth is made up
    tokens = [(0.0, 0.0), (10.0, 0.0), (20.0, 50.0), (30.0, 50.0), (40.0, 10.0), (50.0, 30.0)]  # a restart at 35
    assert increase_between(tokens, 5, 55) == 50 + 30  # 50, then 30 after the restart
    assert increase_between([(30.0, 7.0), (40.0, 9.0)], 0, 50) == 9  # a series born in the window counts in full


def test_the_bill_prints_as_tables_and_as_csv(capsys):
    from llmos_operator.cli_usage import print_bill

    b = {"gpu": [{"tenant": "acme", "gpu_class": "h100", "gpu_hours_reserved": 12.5, "gpu_hours_serving": 11.0}],
         "keys": [{"tenant": "acme", "key": "team-a/bot", "model": "chat", "requests": 10, "prompt_tokens": 100,
                   "completion_tokens": 50, "errors": 1}]}
    print_bill(b, ts(2026, 12, 1), ts(2026, 12, 2), as_csv=False)
    out = capsys.readouterr().out
    assert "usage from 2026-12-01T00:00:00Z to 2026-12-02T00:00:00Z" in out
    assert "12.500" in out and "team-a/bot" in out and "COMPLETION TOKENS" in out
    print_bill(b, ts(2026, 12, 1), ts(2026, 12, 2), as_csv=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("section,tenant,gpu_class") and lines[1].startswith("gpu,acme,h100")
    assert lines[2].startswith("tokens,acme,,team-a/bot,chat,,,10,100,50,1")


def test_the_ledger_and_the_gpu_time_up_to_its_change_are_one_tenant_write():
    """Admission writes the GPU time integrated up to a change of the ledger with the ledger itself, so the meter
    has nothing left to write for it (a change of the ledger was two Tenant writes)."""
    from tests.support.admission_world import World

    world = World()
    clock = [ts(2026, 12, 3, 10)]
    world.manager.usage.clock = lambda: clock[0]
    world.tenant("t", ["t-a"], {"h100": 8})
    world.drain()
    world.manager.usage.tick(clock[0])  # the meter knows the tenant: nothing reserved yet
    clock[0] += 1800
    world.deploy("t-a", "chat", 1, 4, "h100")
    world.drain()
    status = world.api.get("Tenant", "t")["status"]
    assert status["reservations"]["t-a/chat"]["gpus"] == 4
    assert status["usage"]["meteredGPUs"] == {"h100": {"reserved": 4, "serving": 0}}
    assert status["usage"]["updatedAt"] == "2026-12-03T10:30:00.000Z"
    clock[0] += 600  # 10 minutes on 4 GPUs: counted, and nothing for the meter to write (the change is written)
    before = len(world.api.writes)
    world.manager.usage.tick(clock[0])
    assert [w for w in world.api.writes[before:] if w[1] == "Tenant"] == []
    assert world.manager.usage._states["t"].advance(clock[0]).reserved_seconds["h100"] == pytest.approx(4 * 600)
