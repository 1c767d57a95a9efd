"""Issue 19 against the fake engine (tests/support/fake_engine.py: Starlette on uvicorn like vLLM, the guard loaded
with vLLM's --middleware): what the runtime does under real traffic, in seconds. The real engine runs the same
scenarios in tests/engine/test_runtime_guarantees.py and test_runtime_serve.py.

- a hung engine (requests in flight, no token) leaves readiness, with the reason, and comes back when it moves;
  hung for long, it is not live and the termination message says why; an idle engine and a slow /health are
  never judged;
- the guard's self-test refuses an engine whose guard is not in force;
- an engine that dies during the drain is a failure (exit 5), not a clean stop;
- pooled connections survive an idle time longer than uvicorn's default keep-alive, on both ports;
- an adapter file swapped after verification is never what the engine loads;
- the health port's details answer only inside the pod.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from llmos_runtime.server import Runtime
from tests.support.runtime_harness import SMALL_MODEL, is_status, make_cfg, signed_dir, status, urls, wait_for

pytestmark = pytest.mark.unit

async def _json(s: aiohttp.ClientSession, url: str) -> dict:
    async with s.get(url) as r:
        return await r.json()


async def _text(s: aiohttp.ClientSession, url: str) -> str:
    async with s.get(url) as r:
        return await r.text()


def test_a_hung_engine_leaves_readiness_with_the_reason_and_comes_back(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    # the prompt "stall": 4 s in flight without a token (the engine core stuck), then it generates again
    cfg = make_cfg(tmp_path, model, pub, engine_args=["--stall-seconds", "4", "--chunk-delay", "0.05"],
                   engine_health_interval=0.2, watchdog_unready_after=1.0, watchdog_restart_after=30.0)
    rt = Runtime(cfg)
    api, health = urls(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            request = asyncio.create_task(s.post(api + "/v1/completions",
                                                 json={"model": "tiny", "prompt": "stall", "max_tokens": 3}))
            t = time.monotonic()
            await wait_for(lambda: is_status(s, health + "/readyz", 503), timeout=4)
            unready_after = time.monotonic() - t
            ready = await _json(s, health + "/readyz")
            metrics = await _text(s, health + "/metrics")
            assert await status(s, health + "/healthz") == 200  # not ready, still live
            await wait_for(lambda: is_status(s, health + "/readyz", 200), timeout=10)  # tokens again: ready again
            async with await request as r:
                assert r.status == 200
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(main, 30)
        return unready_after, ready, metrics

    unready_after, ready, metrics = asyncio.run(scenario())
    assert unready_after < 1.0 + 1.5  # N, a poll, a judgement
    assert ready["reason"].startswith("engine hung: 1 request(s) in flight and no token generated for ")
    assert 'llmos_runtime_engine_state{llmos_runtime_engine_state="hung"} 1.0' in metrics


def test_a_long_hung_engine_is_not_live_and_says_why(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_health_interval=0.2, watchdog_unready_after=0.5,
                   watchdog_restart_after=2.0, engine_stop_timeout=1.0)  # the hung request holds uvicorn's exit
    rt = Runtime(cfg)
    api, health = urls(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            request = asyncio.create_task(s.post(api + "/v1/completions", json={"model": "tiny", "prompt": "stall"}))
            await wait_for(lambda: is_status(s, health + "/healthz", 503), timeout=5)
            reason = (await _json(s, health + "/healthz"))["reason"]
            request.cancel()
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(main, 30), reason

    code, reason = asyncio.run(scenario())
    assert code == 5  # SIGTERM after the verdict: stopped without a drain, not a clean stop
    assert reason.startswith("engine hung: 1 request(s) in flight and no token generated for 2s")
    assert (tmp_path / "termination-log").read_text() == reason + "\n"
    assert reason.endswith("(--watchdog-restart-after 2); restarting")


def test_an_idle_engine_and_a_slow_health_answer_are_never_judged(tmp_path, keys, fake_engine):
    """/health answering in 1 s every time (a saturated event loop), nothing in flight: ready and live throughout.
    (Before issue 19, a poll timed out after 0.8 × the interval and 15 of those killed the pod.)"""
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_args=["--health-delay", "1.0"], engine_health_interval=0.2,
                   watchdog_unready_after=2.0, watchdog_restart_after=3.0)
    rt = Runtime(cfg)
    _, health = urls(cfg)
    seen: list[tuple[int | None, int | None]] = []

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200), timeout=30)
            deadline = time.monotonic() + 4.5  # 1.5 times the restart threshold
            while time.monotonic() < deadline:
                seen.append((await status(s, health + "/healthz"), await status(s, health + "/readyz")))
                await asyncio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 0
    assert len(seen) > 15 and set(seen) == {(200, 200)}, seen


def test_an_engine_without_its_guard_is_refused_before_ready(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_args=["--ignore-middleware"])
    rt = Runtime(cfg)
    _, health = urls(cfg)
    seen = []

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            while not main.done():
                seen.append(await status(s, health + "/readyz"))
                await asyncio.sleep(0.05)
        return await main

    assert asyncio.run(scenario()) == 5
    assert 200 not in seen
    assert (tmp_path / "termination-log").read_text() == (
        "the engine's guard is not in force: POST /v1/load_lora_adapter without the runtime's token answered "
        "HTTP 200 from the engine, not the guard's refusal; refusing to serve\n")
    assert rt.engine is not None and rt.engine.returncode is not None  # the engine was stopped


def test_an_engine_crash_during_the_drain_exits_5(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_args=["--chunk-delay", "0.05"], drain_grace=5.0)
    rt = Runtime(cfg)
    api, health = urls(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            stream = await s.post(api + "/v1/completions",
                                  json={"model": "tiny", "prompt": "x", "max_tokens": 400, "stream": True})
            await stream.content.readline()
            os.kill(os.getpid(), signal.SIGTERM)
            await wait_for(lambda: is_status(s, health + "/readyz", 503), timeout=2)
            os.kill(rt.engine.proc.pid, signal.SIGKILL)  # the engine dies while the drain waits
            code = await asyncio.wait_for(main, 30)
            stream.close()
        return code

    assert asyncio.run(scenario()) == 5
    assert (tmp_path / "termination-log").read_text() == "engine exited with code -9 while draining\n"


def test_pooled_connections_survive_an_idle_time_longer_than_uvicorns_default(tmp_path, keys, fake_engine):
    """A client's pooled connection idles 6 s (uvicorn's and vLLM's default keep-alive is 5 s) on each port: the
    next request goes over the same connection."""
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub)
    rt = Runtime(cfg)
    api, health = urls(cfg)
    created: dict[str, int] = {"api": 0, "health": 0}

    async def pooled(name: str, url: str, method: str, body) -> None:
        async def on_create(_session, _ctx, _params):
            created[name] += 1

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_create)
        async with aiohttp.ClientSession(trace_configs=[trace]) as s:
            for i in range(2):
                async with s.request(method, url, json=body) as r:
                    assert r.status == 200
                    await r.read()
                if i == 0:
                    await asyncio.sleep(6)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as probe:
            await wait_for(lambda: is_status(probe, health + "/readyz", 200))
        await asyncio.gather(pooled("api", api + "/v1/completions", "POST", {"model": "tiny", "max_tokens": 1}),
                             pooled("health", health + "/readyz", "GET", None))
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(main, 30)
        return created

    assert asyncio.run(scenario()) == {"api": 1, "health": 1}


def test_an_adapter_swapped_after_verification_is_never_loaded(tmp_path, keys, fake_engine, monkeypatch):
    """A writer to the adapter's volume swaps its weights after the runtime verified them, right before the engine
    is told to load it: the engine loads the bytes that were verified (a pod-private copy), not the swapped file."""
    from llmos_runtime.adapters import AdapterManager

    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    shared = signed_dir(tmp_path / "shared-lora", {"adapter_config.json": b"{}", "a.safetensors": b"v" * 64}, priv)
    adapters = tmp_path / "adapters.json"
    adapters.write_text(json.dumps({"adapters": [
        {"name": "lora", "source": f"file://{shared}", "signature": str(shared / "model.sig")}]}))
    real_post = AdapterManager._post
    swapped = []

    async def swap_then_post(self, path, payload):
        if path == "/v1/load_lora_adapter" and not swapped:
            (shared / "a.safetensors").write_bytes(b"X" * 64)  # the writer wins the race
            swapped.append(payload["lora_path"])
        return await real_post(self, path, payload)

    monkeypatch.setattr(AdapterManager, "_post", swap_then_post)
    cfg = make_cfg(tmp_path, model, pub, adapters_file=adapters, engine_args=["--enable-lora"])
    rt = Runtime(cfg)
    _, health = urls(cfg)
    copies = tmp_path / "cache" / "adapters"

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            report = await _json(s, health + "/adapters")
            loaded_path = Path(report["loaded"][0]["path"])
            served_bytes = (loaded_path / "a.safetensors").read_bytes()
            adapters.write_text(json.dumps({"adapters": []}))
            await wait_for(_true(lambda: not loaded_path.exists() or loaded_path == shared), timeout=5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(main, 30)
        return report, loaded_path, served_bytes

    report, loaded_path, served_bytes = asyncio.run(scenario())
    assert swapped, "the writer never got its chance"
    (loaded,) = report["loaded"]
    assert served_bytes == b"v" * 64  # what was verified, not the swapped file
    assert loaded["verified"] and loaded_path.is_relative_to(copies.resolve())
    assert list(copies.iterdir()) == []  # unloaded: its copy is removed


def _true(fn):
    async def cond():
        return fn()

    return cond


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        try:
            u.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
            ip = u.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_the_health_ports_details_answer_only_inside_the_pod(tmp_path, keys, fake_engine):
    ip = _non_loopback_address()
    if ip is None:
        pytest.skip("this machine has no non-loopback address")
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    adapters = tmp_path / "adapters.json"
    adapters.write_text(json.dumps({"adapters": []}))
    cfg = make_cfg(tmp_path, model, pub, adapters_file=adapters, engine_args=["--enable-lora"])
    cfg.host = "0.0.0.0"
    rt = Runtime(cfg)
    inside, outside = f"http://127.0.0.1:{cfg.health_port}", f"http://{ip}:{cfg.health_port}"

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, inside + "/readyz", 200))
            out = {
                "inside /adapters": await status(s, inside + "/adapters"),
                "outside /adapters": await status(s, outside + "/adapters"),
                "outside /readyz": await _json(s, outside + "/readyz"),
                "inside /readyz": await _json(s, inside + "/readyz"),
                "outside /metrics": await status(s, outside + "/metrics"),
            }
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(main, 30)
        return out

    out = asyncio.run(scenario())
    assert out["inside /adapters"] == 200 and out["outside /adapters"] == 404
    assert out["outside /metrics"] == 200  # Prometheus
    assert set(out["outside /readyz"]) == {"ready", "digest", "phase"}  # no verification details
    assert out["inside /readyz"]["verification"]["signer"] == "signer.pem"
