"""The runtime's whole flow (verify → engine → ready → adapters → SIGTERM drain) against a fake engine.

The real engine is covered by tests/engine; these run in seconds and pin the control flow: readiness, refusal while
draining, in-flight streams finishing, exit codes, the termination message, the adapter watcher.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from llmos_runtime import server as server_mod
from llmos_runtime.server import Runtime
from tests.support.runtime_harness import SMALL_MODEL, is_status, make_cfg, signed_dir, status, wait_for
from tests.support.runtime_proc import write_configmap

pytestmark = pytest.mark.unit


def test_serve_adapters_and_drain(tmp_path, keys, fake_engine, caplog):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    good = signed_dir(tmp_path / "lora-good", {"adapter_config.json": b"{}", "a.safetensors": b"a" * 64}, priv)
    bad = signed_dir(tmp_path / "lora-bad", {"adapter_config.json": b"{}", "a.safetensors": b"b" * 64}, priv)
    (bad / "a.safetensors").write_bytes(b"c" * 64)  # tampered after signing
    reject = signed_dir(tmp_path / "lora-reject", {"adapter_config.json": b"{}"}, priv)
    adapters_dir = tmp_path / "adapters"
    (adapters_dir).mkdir()
    (adapters_dir / "adapters.json").write_text(json.dumps({"adapters": [
        {"name": "good", "source": f"file://{good}", "signature": str(good / "model.sig")},
        {"name": "bad", "source": f"file://{bad}", "signature": str(bad / "model.sig")},
        {"name": "reject", "source": f"file://{reject}", "signature": None},
    ]}))
    cfg = make_cfg(tmp_path, model, pub, adapters_file=adapters_dir / "adapters.json",
                   engine_args=["--enable-lora", "--chunk-delay", "0.05"], drain_timeout=30, drain_grace=1.0)
    rt = Runtime(cfg)
    api, health = f"http://127.0.0.1:{cfg.port}", f"http://127.0.0.1:{cfg.health_port}"

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/healthz", 200))
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            assert fake_engine and fake_engine[0][0] == model

            async with s.get(health + "/adapters") as r:
                rep = await r.json()
            assert [a["name"] for a in rep["loaded"]] == ["good"]
            assert rep["loaded"][0]["verified"] is True
            failed = {a["name"]: a["reason"] for a in rep["failed"]}
            assert failed["bad"] == "verification failed: hash mismatch: a.safetensors"
            assert "engine refused the adapter (HTTP 404)" in failed["reject"]

            async with s.post(api + "/v1/completions", json={"model": "good", "prompt": "x", "max_tokens": 3}) as r:
                assert r.status == 200 and (await r.json())["choices"][0]["text"] == "xxx"
            async with s.get(health + "/metrics") as r:
                text = await r.text()
            assert "vllm:fake 1.0" in text and "llmos_runtime_ready 1.0" in text
            assert "llmos_runtime_adapters_loaded 1.0" in text
            # what the operator's autoscaler asks for: the engine's gauges named, nothing else
            async with s.get(health + "/metrics?name[]=vllm:num_requests_running&name[]=vllm:num_requests_waiting") \
                    as r:
                text = await r.text()
            assert text == "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"

            # a stream of 40 chunks (2 s) is in flight when SIGTERM arrives
            stream = await s.post(api + "/v1/completions",
                                  json={"model": "tiny", "prompt": "x", "max_tokens": 40, "stream": True})
            assert stream.status == 200
            first = await stream.content.readline()
            assert first.startswith(b"data: ")
            os.kill(os.getpid(), signal.SIGTERM)
            await wait_for(lambda: is_status(s, health + "/readyz", 503), timeout=2)
            # the drain grace: new requests are still served, each answer closing its connection
            async with s.post(api + "/v1/completions", json={"model": "tiny", "prompt": "x"}) as r:
                assert r.status == 200 and r.headers["Connection"] == "close"
            await asyncio.sleep(1.2)
            t = time.monotonic()
            async with s.post(api + "/v1/completions", json={"model": "tiny", "prompt": "x"}) as r:
                assert r.status == 503
                assert r.headers["X-LLMOS-Draining"] == "1" and r.headers["Retry-After"] == "1"
            assert time.monotonic() - t < 1.0
            assert await status(s, health + "/healthz") == 200  # still alive while draining
            rest = await stream.read()
            assert rest.rstrip().endswith(b"data: [DONE]") and rest.count(b"data: ") == 40  # 39 chunks + [DONE]
            code = await asyncio.wait_for(main, 30)
        return code

    caplog.set_level("INFO", logger="llmos_runtime")
    assert asyncio.run(scenario()) == 0
    assert rt.engine is not None and rt.engine.returncode is not None
    assert not (tmp_path / "termination-log").exists()
    assert "SIGTERM: draining (not ready; new requests served with Connection: close for 1s; 1 in flight)" \
        in caplog.text  # the guard's count
    assert "drain grace over: new requests refused; 1 in flight" in caplog.text


def test_tampered_model_exits_4_without_starting_the_engine(tmp_path, keys, fake_engine, capsys):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", SMALL_MODEL, priv)
    data = bytearray((model / "model.safetensors").read_bytes())
    data[100] ^= 1
    (model / "model.safetensors").write_bytes(bytes(data))
    code = asyncio.run(Runtime(make_cfg(tmp_path, model, pub)).main())
    assert code == 4
    assert fake_engine == []  # the engine was never started
    line = "model verification failed: hash mismatch: model.safetensors"
    assert (tmp_path / "termination-log").read_text() == line + "\n"
    assert f"llmos-runtime: {line}" in capsys.readouterr().err


def test_unsigned_extra_file_is_refused(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", {"config.json": b"{}"}, priv)
    (model / "extra.py").write_text("print('not signed')")
    assert asyncio.run(Runtime(make_cfg(tmp_path, model, pub)).main()) == 4
    assert "extra.py" in (tmp_path / "termination-log").read_text()


def test_missing_source_exits_3(tmp_path, fake_engine):
    cfg = make_cfg(tmp_path, tmp_path / "nope", None)
    assert asyncio.run(Runtime(cfg).main()) == 3
    assert "model directory not found" in (tmp_path / "termination-log").read_text()
    assert fake_engine == []


def test_engine_failing_at_startup_exits_5(tmp_path, keys, fake_engine):
    priv, pub = keys
    model = signed_dir(tmp_path / "model", {"config.json": b"{}"}, priv)
    cfg = make_cfg(tmp_path, model, pub, engine_args=["--exit-code", "3"])
    assert asyncio.run(Runtime(cfg).main()) == 5
    assert (tmp_path / "termination-log").read_text().startswith("engine exited with code 3 before it was ready")


class FakeReporter:
    """Stands in for report.PodReporter (the pod annotation): records what would be written."""

    reports: list = []

    @classmethod
    def from_env(cls):
        return cls()

    def report(self, loaded, failed):
        FakeReporter.reports.append((list(loaded), dict(failed)))
        return True


def test_not_ready_until_engine_healthy_and_adapter_hot_load(tmp_path, keys, fake_engine, monkeypatch):
    """The proxy refuses (503) until the engine is healthy; a ConfigMap-style swap of the adapters file is seen and
    reported on the pod."""
    monkeypatch.setattr(server_mod, "PodReporter", FakeReporter)
    FakeReporter.reports = []
    priv, pub = keys
    model = signed_dir(tmp_path / "model", {"config.json": b"{}"}, priv)
    lora = signed_dir(tmp_path / "lora", {"adapter_config.json": b"{}"}, priv)
    shutil.copy(lora / "model.sig", tmp_path / "lora.sig")
    mount = tmp_path / "etc-llmos-adapters"
    write_configmap(mount, {"adapters.json": json.dumps({"adapters": []})})
    cfg = make_cfg(tmp_path, model, None, adapters_file=mount / "adapters.json",
                   engine_args=["--enable-lora", "--startup-delay", "1.5"], drain_timeout=5)
    cfg.trusted_keys = [pub]  # model signature policy Disabled (no --signature); adapters are still verified
    rt = Runtime(cfg)
    api, health = f"http://127.0.0.1:{cfg.port}", f"http://127.0.0.1:{cfg.health_port}"

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/healthz", 200))
            # before ready the API port is closed (the engine is loading) or answers 503 (the guard), never 200
            assert await status(s, api + "/v1/models") in (None, 503)
            await wait_for(lambda: is_status(s, health + "/readyz", 200))

            async def answers(name):
                async with s.post(api + "/v1/completions", json={"model": name, "max_tokens": 1}) as r:
                    return r.status == 200

            # the relative signature path is resolved against the adapters file's directory
            write_configmap(mount, {
                "adapters.json": json.dumps({"adapters": [
                    {"name": "lora", "source": f"file://{lora}", "signature": "lora.sig"}]}),
                "lora.sig": (tmp_path / "lora.sig").read_bytes(),
            })
            t = time.monotonic()
            await wait_for(lambda: answers("lora"), timeout=5)
            assert time.monotonic() - t < 2
            await wait_for(_true(lambda: FakeReporter.reports[-1] == (["lora"], {})), timeout=2)
            write_configmap(mount, {"adapters.json": "not json"})  # a broken update changes nothing
            await asyncio.sleep(0.5)
            assert await answers("lora")
            async with s.get(health + "/adapters") as r:
                rep = await r.json()
            assert rep["fileError"].startswith("adapters file is not valid JSON")
            assert [a["name"] for a in rep["loaded"]] == ["lora"]
            write_configmap(mount, {"adapters.json": json.dumps({"adapters": []})})
            await wait_for(lambda: _not(answers("lora")), timeout=5)
            async with s.get(health + "/adapters") as r:
                rep = await r.json()
            assert rep["loaded"] == [] and rep["failed"] == [] and rep["fileError"] is None
            await wait_for(_true(lambda: FakeReporter.reports[-1] == ([], {})), timeout=2)
            assert FakeReporter.reports[0] == ([], {})  # the initial (empty) set was reported too
            os.kill(os.getpid(), signal.SIGTERM)
            return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 0


async def _not(aw):
    return not await aw


def _true(fn):
    async def cond():
        return fn()

    return cond


def _root_digest(model: Path, pub: Path) -> str:
    from llmos_signing import verify_bundle

    return "sha256:" + verify_bundle((model / "model.sig").read_bytes(), {"signer.pem": pub.read_bytes()}).root_digest


def _readyz_then_stop(cfg) -> tuple[dict, int]:
    """Run a runtime until /readyz answers 200; (that answer, the exit code after SIGTERM)."""
    rt = Runtime(cfg)
    health = f"http://127.0.0.1:{cfg.health_port}"

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            async with s.get(health + "/readyz") as r:
                body = await r.json()
            rt._on_signal(signal.SIGTERM)
            return body, await asyncio.wait_for(main, 30)

    return asyncio.run(scenario())


def test_readyz_names_the_verified_digest_and_the_expected_digest_is_accepted(tmp_path, keys, fake_engine):
    """/readyz carries `sha256:<root digest>` (the form of the Model's status.digest); --expect-digest equal to it
    serves."""
    priv, pub = keys
    model = signed_dir(tmp_path / "model", {"config.json": b"{}", "model.safetensors": b"w" * 64}, priv)
    digest = _root_digest(model, pub)
    body, code = _readyz_then_stop(make_cfg(tmp_path, model, pub, expect_digest=digest, drain_timeout=5))
    assert code == 0
    assert body["ready"] is True and body["digest"] == digest
    assert body["verification"]["root_digest"] == digest.removeprefix("sha256:")


def test_readyz_digest_is_null_for_an_unsigned_model(tmp_path, keys, fake_engine):
    priv, _pub = keys
    model = signed_dir(tmp_path / "model", {"config.json": b"{}"}, priv)
    body, _code = _readyz_then_stop(make_cfg(tmp_path, model, None, drain_timeout=5))
    assert body["digest"] is None


def test_another_digest_than_expected_exits_4_before_the_engine_starts(tmp_path, keys, fake_engine, capsys):
    """A bundle that verifies but names another revision than the operator expects never reaches the engine."""
    priv, pub = keys
    model = signed_dir(tmp_path / "model", {"config.json": b"{}"}, priv)
    got = _root_digest(model, pub)
    expected = "sha256:" + "0" * 64
    code = asyncio.run(Runtime(make_cfg(tmp_path, model, pub, expect_digest=expected)).main())
    assert code == 4
    assert fake_engine == []
    line = (f"model verification failed: the signature names {got}, not the expected {expected} "
            "(--expect-digest); refusing to serve")
    assert (tmp_path / "termination-log").read_text() == line + "\n"
    assert f"llmos-runtime: {line}" in capsys.readouterr().err
    assert (model / "config.json").exists()  # a local source is never removed
