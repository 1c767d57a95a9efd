"""The runtime's promises of issue 10 against the fake engine (tests/support/fake_engine.py): the bytes served are the
bytes verified, a failed download is not cached, startup budgets and the engine's health are enforced, the engine's
API key is used, every startup failure ends with one termination line and a documented exit code."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from llmos_runtime import server as server_mod
from llmos_runtime import sources as sources_mod
from llmos_runtime.resources import cgroup_cpu_limit, cpu_threads
from llmos_runtime.server import Runtime
from tests.support.runtime_harness import SMALL_MODEL, is_status, make_cfg, signed_dir, status, urls, wait_for

pytestmark = pytest.mark.unit

def _termination(tmp_path: Path) -> str:
    return (tmp_path / "termination-log").read_text()


def test_a_file_added_after_verification_is_refused_before_ready(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_args=["--startup-delay", "1.5"])
    rt = Runtime(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        await wait_for(_phase(rt, "engine-starting"))
        # single-file checkpoint: vLLM would load any *.safetensors it finds
        (model / "model-00002.safetensors").write_bytes(b"unsigned")
        return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 4
    assert _termination(tmp_path) == ("model verification failed: file added after verification: "
                                      "model-00002.safetensors; refusing to serve\n")


def test_a_file_rewritten_after_verification_is_refused_before_ready(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    rt = Runtime(make_cfg(tmp_path, model, pub, engine_args=["--startup-delay", "1.5"]))

    async def scenario():
        main = asyncio.create_task(rt.main())
        await wait_for(_phase(rt, "engine-starting"))
        st = os.stat(model / "config.json")
        (model / "config.json").write_bytes(b"{}")  # same size, same content even: still a write
        os.utime(model / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime cannot be
        return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 4
    assert "file modified after verification: config.json" in _termination(tmp_path)


def test_a_flipped_symlink_changes_nothing_the_real_path_is_served(tmp_path, keys, fake_engine):
    priv, pub = keys
    v1 = signed_dir(tmp_path / "v1", SMALL_MODEL, priv)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "model.safetensors").write_bytes(b"unsigned v2")
    current = tmp_path / "current"
    current.symlink_to(v1)
    cfg = make_cfg(tmp_path, current, None, engine_args=["--startup-delay", "1"])
    cfg.signature, cfg.trusted_keys = v1 / "model.sig", [pub]
    rt = Runtime(cfg)
    _, health = urls(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        await wait_for(_phase(rt, "engine-starting"))
        tmp_link = tmp_path / "current.tmp"
        tmp_link.symlink_to(v2)
        os.rename(tmp_link, current)  # flipped after verification
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 0
    assert fake_engine[0][0] == v1.resolve()  # the engine got the verified directory, not the link


def test_verify_copy_serves_a_private_copy(tmp_path, keys, fake_engine):
    priv, pub = keys
    shared = signed_dir(tmp_path / "shared", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, shared, pub, engine_args=["--startup-delay", "1"], verify_mode="copy")
    rt = Runtime(cfg)  # the signature lives inside the shared directory: it is not copied as a model file
    _, health = urls(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        await wait_for(_phase(rt, "engine-starting"))
        (shared / "model-00002.safetensors").write_bytes(b"another writer")  # the shared volume changes
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 0
    served = fake_engine[0][0]
    assert served.is_relative_to((tmp_path / "cache" / "private").resolve())
    assert sorted(p.name for p in served.iterdir()) == ["config.json", "model.safetensors"]


class _Fetcher:
    content = SMALL_MODEL

    def fetch(self, source, dest: Path) -> None:
        for name, data in _Fetcher.content.items():
            (dest / name).write_bytes(data)


def test_a_download_that_fails_verification_is_not_cached(tmp_path, keys, fake_engine, monkeypatch):
    priv, pub = keys
    signed = signed_dir(tmp_path / "signed", SMALL_MODEL, priv)
    monkeypatch.setattr(sources_mod, "DEFAULT_FETCHERS", {"s3": _Fetcher})
    _Fetcher.content = {**SMALL_MODEL, "model.safetensors": b"half-uploaded"}
    cfg = make_cfg(tmp_path, signed, pub)
    cfg.source = "s3://bucket/model"
    assert asyncio.run(Runtime(cfg).main()) == 4
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # evicted: the next start fetches again

    _Fetcher.content = SMALL_MODEL  # the upload completed
    cfg2 = make_cfg(tmp_path, signed, pub)
    cfg2.source = "s3://bucket/model"
    rt = Runtime(cfg2)
    _, health = urls(cfg2)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 0


class _ObjectStore(_Fetcher):
    opened: list[str] = []

    def download_into(self, source, rel, sink):
        _ObjectStore.opened.append(rel)
        sink.write(_Fetcher.content[rel])


def test_a_signed_remote_model_is_fetched_and_verified_in_one_pass(tmp_path, keys, fake_engine, monkeypatch):
    priv, pub = keys
    signed = signed_dir(tmp_path / "signed", SMALL_MODEL, priv)
    monkeypatch.setattr(sources_mod, "DEFAULT_FETCHERS", {"s3": _ObjectStore})
    _Fetcher.content = {**SMALL_MODEL, "model.safetensors": b"w" * 100}  # half uploaded
    cfg = make_cfg(tmp_path, signed, pub)
    cfg.source = "s3://bucket/model"
    assert asyncio.run(Runtime(cfg).main()) == 4
    assert "hash mismatch: model.safetensors" in _termination(tmp_path)
    assert list((tmp_path / "cache" / "models").iterdir()) == []

    _Fetcher.content = SMALL_MODEL
    _ObjectStore.opened = []
    cfg2 = make_cfg(tmp_path, signed, pub)
    cfg2.source = "s3://bucket/model"
    rt = Runtime(cfg2)
    _, health = urls(cfg2)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            async with s.get(health + "/readyz") as r:
                verification = (await r.json())["verification"]
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(main, 30)
        return verification

    verification = asyncio.run(scenario())
    assert verification["verified_while_fetching"] is True and verification["file_count"] == 2
    assert sorted(_ObjectStore.opened) == ["config.json", "model.safetensors"]


def test_a_phase_past_its_budget_fails_healthz_and_exits_6(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_args=["--startup-delay", "30"], load_budget=1.0)
    rt = Runtime(cfg)
    _, health = urls(cfg)
    seen = []

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/healthz", 200))  # alive while within budget
            while not main.done():
                code = await status(s, health + "/healthz")
                if code is not None:
                    seen.append(code)
                await asyncio.sleep(0.05)
        return await main

    assert asyncio.run(scenario()) == 6
    assert _termination(tmp_path) == ("startup phase load exceeded its budget of 1s (--load-budget); "
                                      "restarting\n")
    assert seen[0] == 200


def test_a_silent_engine_turns_the_pod_not_ready_then_not_live(tmp_path, keys, fake_engine):
    """vLLM's API server stopped (SIGSTOP): no /health answer at all. Not ready after --watchdog-unready-after, not
    live after --watchdog-restart-after, with a termination message that says why."""
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_health_interval=0.2, watchdog_unready_after=1.0,
                   watchdog_restart_after=3.0)
    rt = Runtime(cfg)
    _, health = urls(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            pid = rt.engine.proc.pid
            os.kill(pid, signal.SIGSTOP)
            try:
                await wait_for(lambda: is_status(s, health + "/readyz", 503), timeout=3)
                assert await status(s, health + "/healthz") == 200  # not ready first, still live
                async with s.get(health + "/readyz") as r:
                    assert "engine did not answer /health for" in (await r.json())["reason"]
                await wait_for(lambda: is_status(s, health + "/healthz", 503), timeout=5)
                async with s.get(health + "/healthz") as r:
                    assert "engine did not answer /health for" in (await r.json())["reason"]
            finally:
                os.kill(pid, signal.SIGCONT)
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(main, 30)

    asyncio.run(scenario())
    line = _termination(tmp_path)
    assert line.startswith("engine did not answer /health for ") and "(--watchdog-restart-after 3); restarting" in line


def test_the_runtime_uses_the_engines_api_key_for_its_own_calls(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    lora = signed_dir(tmp_path / "lora", {"adapter_config.json": b"{}"}, priv)
    adapters = tmp_path / "adapters.json"
    adapters.write_text(json.dumps({"adapters": [
        {"name": "lora", "source": f"file://{lora}", "signature": str(lora / "model.sig")}]}))
    cfg = make_cfg(tmp_path, model, pub, adapters_file=adapters,
                   engine_args=["--enable_lora", "--api-key", "s3cret"])  # underscore spelling: LoRA is on
    rt = Runtime(cfg)
    api, health = urls(cfg)

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            async with s.get(health + "/adapters") as r:
                rep = await r.json()
            async with s.post(api + "/v1/completions", json={"model": "lora"},
                              headers={"Authorization": "Bearer s3cret"}) as r:
                answered = r.status
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(main, 30)
        return rep, answered

    rep, answered = asyncio.run(scenario())
    assert [a["name"] for a in rep["loaded"]] == ["lora"] and rep["failed"] == []
    assert answered == 200


def test_adapters_verify_against_any_trusted_key_without_a_model_signature(tmp_path, keys):
    from tests.support.tiny_model import make_signing_key

    priv, pub = keys
    other_priv, other_pub = make_signing_key(tmp_path / "other-key")
    lora = signed_dir(tmp_path / "lora", {"adapter_config.json": b"{}"}, other_priv)
    cfg = make_cfg(tmp_path, tmp_path, None)
    cfg.trusted_keys = [pub, other_pub]  # the tenant's keys; the model itself has policy Disabled
    rt = Runtime(cfg)
    from llmos_runtime.adapters import AdapterSpec
    from llmos_runtime.verify import load_trusted_keys

    rt.weights.trusted_keys = load_trusted_keys(cfg.trusted_keys)
    path, summary = asyncio.run(rt.weights.prepare_adapter(
        AdapterSpec("lora", f"file://{lora}", lora / "model.sig")))
    assert path.parent == (tmp_path / "cache" / "adapters").resolve() and summary["file_count"] == 1


def test_an_adapter_larger_than_the_limit_is_not_copied(tmp_path, keys):
    """Adapters are copied into pod-private storage (the pod's emptyDir) before verification: at most
    --adapter-max-bytes each, counted while copying; nothing is left of a copy that stopped."""
    from llmos_runtime.adapters import AdapterSpec
    from llmos_runtime.verify import load_trusted_keys

    priv, pub = keys
    lora = signed_dir(tmp_path / "lora", {"adapter_config.json": b"{}", "a.safetensors": b"a" * 4096}, priv)
    cfg = make_cfg(tmp_path, tmp_path, None, adapter_max_bytes=1000)
    cfg.trusted_keys = [pub]
    rt = Runtime(cfg)
    rt.weights.trusted_keys = load_trusted_keys(cfg.trusted_keys)
    with pytest.raises(RuntimeError, match=r"larger than the 1000 bytes allowed for a copy \(--adapter-max-bytes\)"):
        asyncio.run(rt.weights.prepare_adapter(AdapterSpec("lora", f"file://{lora}", lora / "model.sig")))
    assert list((tmp_path / "cache" / "adapters").iterdir()) == []
    cfg.adapter_max_bytes = 8192
    path, summary = asyncio.run(rt.weights.prepare_adapter(AdapterSpec("lora", f"file://{lora}", lora / "model.sig")))
    assert summary["file_count"] == 2 and sorted(p.name for p in path.iterdir()) == ["a.safetensors",
                                                                                     "adapter_config.json"]


def test_an_engine_that_cannot_be_spawned_exits_5_with_a_message(tmp_path, keys, monkeypatch):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    monkeypatch.setattr(server_mod, "engine_command", lambda *a, **k: [str(tmp_path / "no-such-python")])
    assert asyncio.run(Runtime(make_cfg(tmp_path, model, pub)).main()) == 5
    line = _termination(tmp_path)
    assert line.startswith("engine could not be started: ") and "no-such-python" in line and line.count("\n") == 1


def test_an_unwritable_cache_directory_exits_3_with_a_message(tmp_path, fake_engine, monkeypatch):
    monkeypatch.setattr(sources_mod, "DEFAULT_FETCHERS", {"s3": _Fetcher})
    (tmp_path / "not-a-dir").write_text("")
    cfg = make_cfg(tmp_path, tmp_path, None)
    cfg.source, cfg.cache_dir = "s3://bucket/model", tmp_path / "not-a-dir" / "cache"
    assert asyncio.run(Runtime(cfg).main()) == 3
    line = _termination(tmp_path)
    assert line.startswith("model source failed: ") and "not-a-dir" in line and line.count("\n") == 1


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "250000 100000\n"}, 2.5),
        ({"cpu/cpu.cfs_quota_us": "150000", "cpu/cpu.cfs_period_us": "100000"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({}, None),
    ],
)
def test_hashing_threads_follow_the_cgroup_cpu_limit(tmp_path, files, expected, monkeypatch):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected
    monkeypatch.setattr("llmos_runtime.resources._affinity", lambda: 224)  # a big node
    want = 224 if expected is None else int(-(-expected // 1))
    assert cpu_threads(tmp_path, env={}) == want
    assert cpu_threads(tmp_path, env={"LLMOS_HASH_THREADS": "3"}) == 3


def _phase(rt: Runtime, phase: str):
    async def cond():
        return rt.state.phase == phase

    return cond


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
