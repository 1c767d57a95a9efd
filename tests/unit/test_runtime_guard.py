"""The guard in front of the engine's API (llmos_runtime.guard): only the inference API is public, adapter
management only with the runtime's token, 503 while not ready or draining, WebSocket refused. First the middleware
on its own (ASGI calls), then through a running runtime and the fake engine (built like vLLM: Starlette on uvicorn)."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
import pytest

from llmos_runtime.guard import InferenceOnly
from llmos_runtime.server import Runtime
from tests.support.runtime_harness import is_status, make_cfg, signed_dir, wait_for

pytestmark = pytest.mark.unit

MANAGEMENT = [
    ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"), ("POST", "/adapters"),
    ("DELETE", "/adapters/x"), ("GET", "/adapters"), ("POST", "/start_profile"), ("POST", "/sleep"),
    ("POST", "/wake_up"), ("POST", "/reset_prefix_cache"), ("POST", "/collective_rpc"), ("POST", "/update_weights"),
    ("POST", "/invocations"), ("GET", "/metrics"), ("POST", "/pause"), ("GET", "/server_info"),
    ("GET", "/llmos/inflight"), ("DELETE", "/v1/completions"), ("POST", "/v1/completions/render"),
    ("POST", "/V1/load_lora_adapter"), ("POST", "/v1/models"), ("POST", "/abort_requests"),
]
INFERENCE = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/v1/responses"),
             ("GET", "/v1/responses/resp_1"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"),
             ("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/v1/score"), ("POST", "/v1/rerank"),
             ("POST", "/v2/rerank"), ("GET", "/health")]


def _call(guard: InferenceOnly, method: str, path: str, headers=(), kind="http"):
    sent: list[dict] = []
    reached: list[str] = []

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def go():
        await guard({"type": kind, "method": method, "path": path, "headers": list(headers)}, receive, send)

    guard.app = _app(reached)
    asyncio.run(go())
    status = sent[0].get("status") if sent and sent[0]["type"] == "http.response.start" else None
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, dict(sent[0].get("headers", [])) if status else {}, body, reached, sent


def _app(reached):
    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"engine"})

    return app


def test_only_the_inference_api_is_public_and_only_while_serving(tmp_path):
    guard = InferenceOnly(None, guard_dir=str(tmp_path), token="secret")
    # not ready (no marker): 503, Retry-After, Connection: close, engine not reached
    status, headers, body, reached, _ = _call(guard, "POST", "/v1/completions")
    assert status == 503 and headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
    assert b"x-llmos-draining" not in headers and reached == []

    (tmp_path / "serving").touch()
    for method, path in INFERENCE:
        status, _, body, reached, _ = _call(guard, method, path)
        assert (status, body, reached) == (200, b"engine", [path]), (method, path)
    for method, path in MANAGEMENT:
        status, headers, body, reached, _ = _call(guard, method, path)
        assert status == 404 and reached == [], (method, path)
        assert headers[b"x-llmos-guard"] == b"refused"  # what the runtime's self-test recognises
        assert "not part of this model's inference API" in json.loads(body)["error"]["message"]
    # a wrong token is no token
    assert _call(guard, "POST", "/v1/load_lora_adapter", [(b"x-llmos-runtime-token", b"guess")])[0] == 404
    # the runtime's token opens the runtime's own routes (and only those)
    tok = [(b"x-llmos-runtime-token", b"secret")]
    assert _call(guard, "POST", "/v1/load_lora_adapter", tok)[3] == ["/v1/load_lora_adapter"]
    assert _call(guard, "DELETE", "/adapters/x", tok)[0] == 404
    status, _, body, reached, _ = _call(guard, "GET", "/llmos/inflight", tok)
    assert status == 200 and json.loads(body) == {"inflight": 0, "waiting": 0} and reached == []

    # WebSocket (vLLM's /v1/realtime): the handshake is closed, nothing reaches the engine
    *_, reached, sent = _call(guard, "GET", "/v1/realtime", kind="websocket")
    assert sent[0]["type"] == "websocket.close" and reached == []

    # draining: 503 with the draining header; the runtime's health poll (with the token) still sees the engine
    (tmp_path / "serving").unlink()
    (tmp_path / "draining").touch()
    status, headers, *_ = _call(guard, "POST", "/v1/chat/completions")
    assert status == 503 and headers[b"x-llmos-draining"] == b"1"
    assert _call(guard, "GET", "/health", tok)[0] == 200
    assert _call(guard, "GET", "/health")[0] == 503


def test_the_drain_grace_serves_with_connection_close_then_refuses(tmp_path):
    """After SIGTERM the runtime keeps `serving` for the drain grace and adds `closing`: answers end their
    connection (a pooled client reconnects, to another replica once the endpoint is gone); then `serving` goes."""
    guard = InferenceOnly(None, guard_dir=str(tmp_path), token="secret")
    (tmp_path / "serving").touch()
    status, headers, body, reached, _ = _call(guard, "POST", "/v1/completions")
    assert (status, body) == (200, b"engine") and b"connection" not in headers  # keep-alive while ready
    (tmp_path / "closing").touch()
    status, headers, body, reached, _ = _call(guard, "POST", "/v1/completions")
    assert (status, body, reached) == (200, b"engine", ["/v1/completions"]) and headers[b"connection"] == b"close"
    (tmp_path / "draining").touch()
    (tmp_path / "serving").unlink()
    status, headers, *_ = _call(guard, "POST", "/v1/completions")
    assert status == 503 and headers[b"x-llmos-draining"] == b"1" and headers[b"connection"] == b"close"


def test_waiting_counts_requests_on_the_engine_not_on_the_client(tmp_path):
    """The watchdog's input: a request counts as waiting on the engine from the end of its body until its answer is
    complete, except while the server writes to the client (a slow reader) — and not while its body is still
    arriving (a slow sender must not make the pod look hung)."""
    guard = InferenceOnly(None, guard_dir=str(tmp_path), token="secret")
    (tmp_path / "serving").touch()
    seen: dict[str, int] = {}
    gates = {name: asyncio.Event() for name in ("body", "engine", "client", "end")}

    async def app(scope, receive, send):
        await gates["body"].wait()
        await receive()  # the body arrives
        seen["after body"] = guard.waiting
        await gates["engine"].wait()  # the engine generates
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(msg):
        if msg["type"] == "http.response.body" and msg.get("more_body"):
            seen["while writing"] = guard.waiting
            await gates["client"].wait()  # a client reading slowly

    async def go():
        guard.app = app
        task = asyncio.create_task(guard({"type": "http", "method": "POST", "path": "/v1/completions",
                                          "headers": []}, receive, send))
        await asyncio.sleep(0.01)
        seen["before body"] = guard.waiting
        gates["body"].set()
        await asyncio.sleep(0.01)
        seen["generating"] = guard.waiting
        gates["engine"].set()
        await asyncio.sleep(0.01)
        seen["inflight while writing"] = guard.inflight
        gates["client"].set()
        await task
        seen["after"] = guard.waiting + guard.inflight

    asyncio.run(go())
    assert seen == {"before body": 0, "after body": 1, "generating": 1, "while writing": 0,
                    "inflight while writing": 1, "after": 0}


def test_a_token_less_guard_lets_no_one_manage(tmp_path):
    guard = InferenceOnly(None, guard_dir=str(tmp_path), token="")
    assert _call(guard, "POST", "/v1/load_lora_adapter", [(b"x-llmos-runtime-token", b"")])[0] == 404


def test_through_the_pods_port_adapters_cannot_be_managed_and_hangups_abort(tmp_path, keys, fake_engine):
    """What a hostile client tried in issue 10, through the public port of a running runtime."""
    priv, pub = keys
    model = signed_dir(tmp_path / "model", {"config.json": b"{}"}, priv)
    lora = signed_dir(tmp_path / "lora", {"adapter_config.json": b"{}"}, priv)
    adapters = tmp_path / "adapters.json"
    adapters.write_text(json.dumps({"adapters": [
        {"name": "lora", "source": f"file://{lora}", "signature": str(lora / "model.sig")}]}))
    cfg = make_cfg(tmp_path, model, pub, adapters_file=adapters, engine_args=["--enable-lora", "--chunk-delay", "0.05"])
    rt = Runtime(cfg)
    api, health = f"http://127.0.0.1:{cfg.port}", f"http://127.0.0.1:{cfg.health_port}"

    async def models(s):
        async with s.get(api + "/v1/models") as r:
            return sorted(m["id"] for m in (await r.json())["data"])

    async def scenario():
        main = asyncio.create_task(rt.main())
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: is_status(s, health + "/readyz", 200))
            assert await models(s) == ["lora", "tiny"]
            unsigned = {"lora_name": "lora", "lora_path": "/tmp/unsigned", "load_inplace": True}
            for method, path, body in [("POST", "/v1/load_lora_adapter", unsigned),
                                       ("POST", "/v1/unload_lora_adapter", {"lora_name": "lora"}),
                                       ("POST", "/adapters", {"name": "evil", "src": "/tmp/unsigned"}),
                                       ("DELETE", "/adapters/lora", None)]:
                async with s.request(method, api + path, json=body) as r:
                    assert r.status == 404, (method, path)
            assert await models(s) == ["lora", "tiny"]  # the served adapter set did not change
            async with s.get(health + "/adapters") as r:
                assert [a["name"] for a in (await r.json())["loaded"]] == ["lora"]

            # a client hanging up on a long non-streaming request frees the engine (the request is aborted)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(s.post(api + "/v1/completions",
                                              json={"model": "tiny", "max_tokens": 400}), 0.5)

            async def aborted():
                async with s.get(health + "/metrics") as r:
                    text = await r.text()
                return "llmos_fake_aborted_total 1" in text and "vllm:num_requests_running 0" in text

            await wait_for(aborted, timeout=10)
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(main, 30)

    assert asyncio.run(scenario()) == 0
