"""The adapter reconciler: parsing the adapters file and the calls it makes to the engine's runtime LoRA API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from llmos_runtime import adapters as adapters_mod
from llmos_runtime.adapters import AdapterFileError, AdapterManager, AdapterSpec, parse_adapters
from llmos_runtime.metrics import RuntimeMetrics

pytestmark = pytest.mark.unit


def test_parse_adapters(tmp_path):
    raw = json.dumps({"adapters": [
        {"name": "a", "source": "file:///x/a", "signature": "a.sig"},
        {"name": "b", "source": "s3://bucket/b", "signature": "/abs/b.sig"},
        {"name": "c", "source": "file:///x/c", "signature": None},
        {"name": "a", "source": "file:///x/dup"},
        {"name": "bad name!", "source": "file:///x"},
        {"name": "nosrc"},
        "not an object",
    ]}).encode()
    specs, invalid = parse_adapters(raw, tmp_path)
    assert specs == [
        AdapterSpec("a", "file:///x/a", tmp_path / "a.sig", signature_digest=""),  # "": bundle not readable
        AdapterSpec("b", "s3://bucket/b", Path("/abs/b.sig"), signature_digest=""),
        AdapterSpec("c", "file:///x/c", None),
    ]
    assert invalid == {"a": "duplicate adapter name", "bad name!": "invalid adapter name 'bad name!'",
                       "nosrc": "missing source", "#6": "entry is not an object"}
    # the API's object forms (what the operator's renderer may write)
    specs, invalid = parse_adapters(json.dumps({"adapters": [
        {"name": "o1", "source": {"uri": "hf://org/lora", "revision": "abc"}, "signature": {"policy": "Disabled"}},
        {"name": "o2", "source": {"uri": "file:///x/o2"}, "signature": {"path": "o2.sig", "policy": "Required"}},
        {"name": "o3", "source": {"uri": "file:///x/o3"},
         "signature": {"bundleRef": {"name": "cm", "key": "o3.sig"}, "policy": "Required"}},
    ]}).encode(), tmp_path)
    assert specs == [AdapterSpec("o1", "hf://org/lora", None, revision="abc"),
                     AdapterSpec("o2", "file:///x/o2", tmp_path / "o2.sig", signature_digest="")]
    assert list(invalid) == ["o3"] and "cannot resolve" in invalid["o3"]  # fails closed, reported

    assert parse_adapters(b"", tmp_path) == ([], {})
    assert parse_adapters(b'{"adapters": []}', tmp_path) == ([], {})
    for broken in (b"{", b"[]", b'{"adapters": {}}'):
        with pytest.raises(AdapterFileError):
            parse_adapters(broken, tmp_path)


class FakeLoRAEngine:
    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.loaded: dict[str, str] = {}
        self.url = ""

    async def start(self):
        app = web.Application()
        app.router.add_post("/v1/load_lora_adapter", self.load)
        app.router.add_post("/v1/unload_lora_adapter", self.unload)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    async def load(self, request):
        body = await request.json()
        self.calls.append(("load", body))
        if "broken" in body["lora_path"]:
            return web.json_response({"error": {"message": "Loading lora failed: bad rank"}}, status=400)
        self.loaded[body["lora_name"]] = body["lora_path"]
        return web.Response(text="Success")

    async def unload(self, request):
        body = await request.json()
        self.calls.append(("unload", body))
        if self.loaded.pop(body["lora_name"], None) is None:
            return web.json_response({"error": {"message": "not found"}}, status=404)
        return web.Response(text="Success")


def write(path: Path, adapters: list[dict]) -> None:
    path.write_text(json.dumps({"adapters": adapters}))


def test_reconcile_loads_unloads_updates_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(adapters_mod, "RETRY_SECONDS", 0.0)
    f = tmp_path / "adapters.json"
    prepared: list[str] = []

    async def prepare(spec: AdapterSpec):
        prepared.append(spec.name)
        if "tampered" in spec.source:
            raise RuntimeError("verification failed: hash mismatch: adapter_model.safetensors")
        return Path(spec.source.removeprefix("file://")), ({"signer": "k"} if spec.signature else None)

    async def scenario():
        eng = FakeLoRAEngine()
        await eng.start()
        mgr = AdapterManager(f, engine_url=eng.url, prepare=prepare, metrics=RuntimeMetrics(), served_name="base")
        # no file yet: nothing wanted, nothing fails
        await mgr.reconcile(force=True)
        assert mgr.report()["loaded"] == [] and eng.calls == []

        write(f, [{"name": "a", "source": "file:///l/a", "signature": "a.sig"},
                  {"name": "t", "source": "file:///l/tampered"},
                  {"name": "base", "source": "file:///l/x"}])
        await mgr.reconcile()
        assert eng.loaded == {"a": "/l/a"}
        rep = mgr.report()
        assert [x["name"] for x in rep["loaded"]] == ["a"] and rep["loaded"][0]["verified"] is True
        failed = {x["name"]: x["reason"] for x in rep["failed"]}
        assert failed == {"t": "verification failed: hash mismatch: adapter_model.safetensors",
                          "base": "adapter name equals the served model name"}
        assert mgr.failures() == failed and mgr.loaded() == ["a"]  # what the pod annotation carries

        # unchanged file: nothing happens (apart from retrying the failed one, RETRY_SECONDS is 0 here)
        eng.calls.clear()
        prepared.clear()
        await mgr.reconcile()
        assert eng.calls == [] and prepared == ["t"]

        # remove a, add b: the unload comes first
        eng.calls.clear()
        write(f, [{"name": "b", "source": "file:///l/b"}])
        await mgr.reconcile()
        assert [c[0] for c in eng.calls] == ["unload", "load"]
        assert eng.loaded == {"b": "/l/b"} and mgr.report()["failed"] == []

        # b moves to a new path: swapped in place (no window in which "b" is unknown)
        eng.calls.clear()
        write(f, [{"name": "b", "source": "file:///l/b2"}])
        await mgr.reconcile()
        assert eng.calls == [("load", {"lora_name": "b", "lora_path": "/l/b2", "load_inplace": True})]

        # an update the engine refuses leaves the previous version serving, and is reported
        write(f, [{"name": "b", "source": "file:///l/broken"}])
        await mgr.reconcile()
        rep = mgr.report()
        assert eng.loaded == {"b": "/l/b2"} and rep["loaded"][0]["source"] == "file:///l/b2"
        assert rep["failed"][0]["previousVersionLoaded"] is True
        assert "engine refused the adapter (HTTP 400): Loading lora failed: bad rank" in rep["failed"][0]["reason"]

        # an invalid file changes nothing
        f.write_text("{oops")
        await mgr.reconcile()
        assert eng.loaded == {"b": "/l/b2"} and mgr.report()["fileError"].startswith("adapters file is not valid")

        # emptied: everything unloaded
        write(f, [])
        await mgr.reconcile()
        assert eng.loaded == {} and mgr.report()["loaded"] == [] and mgr.report()["failed"] == []
        await mgr.close()
        await eng.runner.cleanup()

    asyncio.run(scenario())


def test_without_enable_lora_every_adapter_fails_with_a_clear_reason(tmp_path):
    f = tmp_path / "adapters.json"
    write(f, [{"name": "a", "source": "file:///l/a"}])

    async def prepare(spec):
        raise AssertionError("not reached")

    async def scenario():
        mgr = AdapterManager(f, engine_url="http://127.0.0.1:9", prepare=prepare, metrics=RuntimeMetrics(),
                             served_name="base", lora_enabled=False)
        await mgr.reconcile(force=True)
        await mgr.close()
        return mgr.report()

    rep = asyncio.run(scenario())
    assert rep["failed"][0]["reason"] == "engine started without --enable-lora"


def test_tightened_policy_and_new_bundles_are_enforced(tmp_path, monkeypatch):
    """A new bundle for the same URI re-verifies and reloads; a wanted signature that does not verify unloads the
    version loaded so far (policy tightened from Disabled, or a new bundle the bytes do not match)."""
    from llmos_runtime.adapters import AdapterVerificationError

    monkeypatch.setattr(adapters_mod, "RETRY_SECONDS", 0.0)
    f = tmp_path / "adapters.json"
    sig = tmp_path / "a.sig"
    verdict = {"ok": True}
    prepared: list[tuple[str, str | None]] = []

    async def prepare(spec: AdapterSpec):
        prepared.append((spec.name, spec.signature_digest))
        if spec.signature is not None and not verdict["ok"]:
            raise AdapterVerificationError("verification failed: hash mismatch: adapter_model.safetensors")
        return Path("/l/a"), ({"signer": "k"} if spec.signature else None)

    async def scenario():
        eng = FakeLoRAEngine()
        await eng.start()
        mgr = AdapterManager(f, engine_url=eng.url, prepare=prepare, metrics=RuntimeMetrics(), served_name="base")
        # policy Disabled: loaded unverified
        write(f, [{"name": "a", "source": "file:///l/a", "signature": None}])
        await mgr.reconcile(force=True)
        assert eng.loaded == {"a": "/l/a"} and mgr.report()["loaded"][0]["verified"] is False

        # tightened to Required, and the bytes do not verify: the unverified version is unloaded
        sig.write_bytes(b"bundle-1")
        verdict["ok"] = False
        write(f, [{"name": "a", "source": "file:///l/a", "signature": "a.sig"}])
        await mgr.reconcile()
        assert eng.loaded == {} and mgr.loaded() == []
        assert mgr.failures() == {"a": "verification failed: hash mismatch: adapter_model.safetensors"}

        # the bytes verify now: loaded, verified
        verdict["ok"] = True
        await mgr.reconcile()
        assert eng.loaded == {"a": "/l/a"} and mgr.report()["loaded"][0]["verified"] is True

        # a new bundle for the same URI (adapters.json unchanged) is noticed: re-verified and reloaded in place
        prepared.clear()
        eng.calls.clear()
        sig.write_bytes(b"bundle-2")
        await mgr.reconcile()
        assert [p[0] for p in prepared] == ["a"]
        assert eng.calls == [("load", {"lora_name": "a", "lora_path": "/l/a", "load_inplace": True})]

        # ... and one that the bytes do not match unloads it (every replica decides the same from the same bundle)
        verdict["ok"] = False
        sig.write_bytes(b"bundle-3")
        await mgr.reconcile()
        assert eng.loaded == {} and "a" in mgr.failures()
        await mgr.close()
        await eng.runner.cleanup()

    asyncio.run(scenario())


def test_a_transient_failure_keeps_a_verified_version_serving(tmp_path, monkeypatch):
    monkeypatch.setattr(adapters_mod, "RETRY_SECONDS", 0.0)
    f = tmp_path / "adapters.json"
    (tmp_path / "a.sig").write_bytes(b"bundle-1")

    async def prepare(spec: AdapterSpec):
        if spec.source.endswith("unreachable"):
            raise RuntimeError("source: download of s3://b/unreachable failed")
        return Path("/l/a"), {"signer": "k"}

    async def scenario():
        eng = FakeLoRAEngine()
        await eng.start()
        mgr = AdapterManager(f, engine_url=eng.url, prepare=prepare, metrics=RuntimeMetrics(), served_name="base")
        write(f, [{"name": "a", "source": "file:///l/a", "signature": "a.sig"}])
        await mgr.reconcile(force=True)
        write(f, [{"name": "a", "source": "s3://b/unreachable", "signature": "a.sig"}])
        await mgr.reconcile()
        assert eng.loaded == {"a": "/l/a"} and mgr.report()["failed"][0]["previousVersionLoaded"] is True
        await mgr.close()
        await eng.runner.cleanup()

    asyncio.run(scenario())


def test_an_adapter_the_runtime_did_not_load_is_unloaded_by_the_audit(tmp_path):
    """Issue 18: someone with the guard token (``kubectl exec`` into the pod) loads an unverified adapter through the
    management route; the audit finds it in the engine's /v1/models and unloads it, and reports it."""
    f = tmp_path / "adapters.json"
    write(f, [{"name": "good", "source": "file:///x/good", "signature": None}])

    async def prepare(spec: AdapterSpec):
        return Path(spec.source.removeprefix("file://")), None

    class EngineWithModels(FakeLoRAEngine):
        async def start(self):
            app = web.Application()
            app.router.add_post("/v1/load_lora_adapter", self.load)
            app.router.add_post("/v1/unload_lora_adapter", self.unload)
            app.router.add_get("/v1/models", self.models)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

        async def models(self, request):  # vLLM's shape: the base model, then each LoRA with its parent
            return web.json_response({"object": "list", "data": [{"id": "base", "parent": None}] + [
                {"id": name, "root": path, "parent": "base"} for name, path in self.loaded.items()]})

    async def scenario():
        eng = EngineWithModels()
        await eng.start()
        changes: list[int] = []
        mgr = AdapterManager(f, engine_url=eng.url, prepare=prepare, metrics=RuntimeMetrics(), served_name="base",
                             on_change=lambda: changes.append(1))
        try:
            await mgr.reconcile(force=True)
            assert await mgr.audit() == []  # what the runtime loaded stays
            eng.loaded["injected"] = "/tmp/unverified"  # loaded behind the runtime's back
            assert await mgr.audit() == ["injected"]
            assert sorted(eng.loaded) == ["good"]
            assert mgr.report()["foreignUnloaded"] == ["injected"]
            assert mgr.metrics.adapters_foreign_unloaded._value.get() == 1
            assert changes  # reported on the pod
        finally:
            await mgr.close()
            await eng.runner.cleanup()

    asyncio.run(scenario())
