"""The API-port proxy on its own: forwarding, refusal before ready and while draining, and what happens to a stream
when the client leaves or the engine dies mid-answer."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from llmos_runtime.proxy import Proxy
from llmos_runtime.state import RuntimeState

pytestmark = pytest.mark.unit


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def test_proxy_forwards_refuses_and_handles_broken_streams():
    seen = {"aborted": False}

    async def stream(request: web.Request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(200):
                await resp.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            seen["aborted"] = True
            raise
        await resp.write_eof()
        return resp

    async def die(request: web.Request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"data: partial\n\n")
        await asyncio.sleep(0.05)
        request.transport.close()  # the engine dies mid-answer
        return resp

    async def echo(request: web.Request):
        return web.json_response({"path": request.path_qs, "body": await request.json(),
                                  "auth": request.headers.get("Authorization")}, status=201)

    async def scenario():
        up = web.Application()
        up.router.add_post("/v1/chat/completions", stream)
        up.router.add_post("/v1/embeddings", die)
        up.router.add_post("/v1/completions", echo)
        up_runner, up_url = await _serve(up)

        state = RuntimeState()
        proxy = Proxy(state)
        px_runner, px_url = await _serve(proxy.app())
        async with aiohttp.ClientSession() as s:
            async with s.post(px_url + "/v1/completions", json={"a": 1}) as r:
                assert r.status == 503  # not ready: refused, engine not even contacted
            await proxy.open(up_url)
            state.verified = state.engine_ready = True

            async with s.post(px_url + "/v1/completions?x=1", json={"a": 1}, headers={"Authorization": "Bearer t"}) as r:
                assert r.status == 201
                assert await r.json() == {"path": "/v1/completions?x=1", "body": {"a": 1}, "auth": "Bearer t"}

            # the client leaves mid-stream: the engine's request is aborted, nothing stays in flight
            r = await s.post(px_url + "/v1/chat/completions", json={})
            await r.content.readline()
            assert state.inflight == 1
            r.close()
            for _ in range(100):
                if state.inflight == 0 and seen["aborted"]:
                    break
                await asyncio.sleep(0.02)
            assert state.inflight == 0 and seen["aborted"]

            # the engine dies mid-answer: the client sees an incomplete response, not a clean end
            with pytest.raises(aiohttp.ClientPayloadError):
                async with s.post(px_url + "/v1/embeddings", json={}) as r:
                    await r.read()
            assert state.inflight == 0

            state.draining = True
            async with s.post(px_url + "/v1/chat/completions", json={}) as r:
                assert r.status == 503 and r.headers["X-LLMOS-Draining"] == "1"
        await proxy.close()
        await px_runner.cleanup()
        await up_runner.cleanup()
        return state

    state = asyncio.run(scenario())
    text = state.metrics.exposition().decode()
    assert 'llmos_runtime_rejected_requests_total{reason="not-ready"} 1.0' in text
    assert 'llmos_runtime_rejected_requests_total{reason="draining"} 1.0' in text


async def _ready_proxy(upstream_url: str) -> tuple[Proxy, web.AppRunner, str]:
    state = RuntimeState()
    state.verified = state.engine_ready = True
    proxy = Proxy(state)
    await proxy.open(upstream_url)
    runner, url = await _serve(proxy.app())
    return proxy, runner, url


MANAGEMENT = [
    ("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter"), ("POST", "/adapters"),
    ("DELETE", "/adapters/x"), ("GET", "/adapters"), ("POST", "/start_profile"), ("POST", "/sleep"),
    ("POST", "/wake_up"), ("POST", "/reset_prefix_cache"), ("POST", "/collective_rpc"), ("POST", "/update_weights"),
    ("POST", "/invocations"), ("GET", "/metrics"), ("POST", "/pause"), ("GET", "/server_info"),
    ("DELETE", "/v1/completions"), ("POST", "/v1/completions/render"), ("POST", "/v1//../load_lora_adapter"),
    ("POST", "/V1/load_lora_adapter"), ("POST", "/v1/models"),
]


def test_only_the_inference_api_reaches_the_engine():
    hits: list[str] = []

    async def anything(request: web.Request):
        hits.append(f"{request.method} {request.path}")
        return web.json_response({"ok": True})

    async def scenario():
        up = web.Application()
        up.router.add_route("*", "/{tail:.*}", anything)
        up_runner, up_url = await _serve(up)
        proxy, px_runner, px_url = await _ready_proxy(up_url)
        try:
            async with aiohttp.ClientSession() as s:
                for method, path in MANAGEMENT:
                    async with s.request(method, px_url + path, json={"lora_name": "x", "lora_path": "/tmp"}) as r:
                        assert r.status == 404, (method, path)
                        assert "not part of this model's inference API" in (await r.json())["error"]["message"]
                assert hits == []  # the engine never saw any of them
                for method, path in [("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                     ("POST", "/v1/responses"), ("GET", "/v1/responses/resp_1"),
                                     ("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("POST", "/tokenize"),
                                     ("POST", "/detokenize"), ("POST", "/v1/score"), ("POST", "/v1/rerank"),
                                     ("POST", "/v2/rerank"), ("GET", "/health")]:
                    async with s.request(method, px_url + path, json={}) as r:
                        assert r.status == 200, (method, path)
                # WebSocket (vLLM's /v1/realtime) is refused clearly, not silently downgraded
                async with s.get(px_url + "/v1/realtime", headers={"Connection": "Upgrade",
                                                                   "Upgrade": "websocket"}) as r:
                    assert r.status == 404
                async with s.post(px_url + "/v1/completions", headers={"Connection": "Upgrade",
                                                                       "Upgrade": "websocket"}) as r:
                    assert r.status == 501 and "WebSocket" in (await r.json())["error"]["message"]
        finally:
            await proxy.close()
            await px_runner.cleanup()
            await up_runner.cleanup()

    asyncio.run(scenario())


def test_headers_follow_rfc_9110():
    seen: dict = {}

    async def echo(request: web.Request):
        seen["headers"] = list(request.headers.items())
        resp = web.Response(text="ok")
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["X-Engine-Secret-Hop"] = "drop me"
        resp.headers["Connection"] = "X-Engine-Secret-Hop"
        return resp

    async def scenario():
        up = web.Application()
        up.router.add_post("/v1/completions", echo)
        up_runner, up_url = await _serve(up)
        proxy, px_runner, px_url = await _ready_proxy(up_url)
        try:
            async with aiohttp.ClientSession() as s:
                headers = [("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"), ("Keep-Alive", "timeout=5"),
                           ("X-Multi", "1"), ("X-Multi", "2"), ("X-Forwarded-For", "10.0.0.1"),
                           ("Proxy-Authorization", "Basic x"), ("TE", "trailers")]
                from multidict import CIMultiDict

                async with s.post(px_url + "/v1/completions", data=b"{}", headers=CIMultiDict(headers)) as r:
                    assert r.status == 200
                    assert r.headers.getall("Set-Cookie") == ["a=1", "b=2"]  # repeated headers kept
                    assert "X-Engine-Secret-Hop" not in r.headers  # named in the engine's Connection: dropped
        finally:
            await proxy.close()
            await px_runner.cleanup()
            await up_runner.cleanup()

    asyncio.run(scenario())
    got = seen["headers"]
    names = [k.lower() for k, _ in got]
    assert "x-hop" not in names and "keep-alive" not in names and "proxy-authorization" not in names
    assert "te" not in names
    assert [v for k, v in got if k.lower() == "x-multi"] == ["1", "2"]
    assert [v for k, v in got if k.lower() == "x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]


def test_a_pooled_connection_reset_before_any_byte_is_retried_once():
    """vLLM closes idle keep-alive connections after 5 s; a request written into such a socket is retried once on a
    fresh connection instead of answering 502."""
    connections = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        n = len(connections)
        connections.append(writer)
        served = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if n == 0 and served == 1:
                writer.transport.abort()  # the engine closes the idle connection as the next request arrives
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            await writer.drain()
            served += 1

    async def scenario():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        up_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        proxy, px_runner, px_url = await _ready_proxy(up_url)
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(3):
                    async with s.post(px_url + "/v1/completions", json={"p": 1}) as r:
                        assert r.status == 200 and await r.text() == "ok"
        finally:
            await proxy.close()
            await px_runner.cleanup()
            server.close()
        return len(connections)

    assert asyncio.run(scenario()) == 2  # one retry, on a new connection


def test_a_client_hanging_up_on_a_non_streaming_request_aborts_it_at_the_engine():
    seen = {"cancelled": False, "started": asyncio.Event}

    async def slow(request: web.Request):
        try:
            await asyncio.sleep(30)  # a long non-streaming generation
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
        return web.json_response({})

    async def scenario():
        up = web.Application(handler_args={"handler_cancellation": True})
        up.router.add_post("/v1/completions", slow)
        up_runner, up_url = await _serve(up)
        proxy, px_runner, px_url = await _ready_proxy(up_url)
        try:
            async with aiohttp.ClientSession() as s:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(s.post(px_url + "/v1/completions", json={}), 0.5)
            for _ in range(100):
                if seen["cancelled"] and proxy.state.inflight == 0:
                    break
                await asyncio.sleep(0.05)
            assert seen["cancelled"] and proxy.state.inflight == 0
        finally:
            await proxy.close()
            await px_runner.cleanup()
            await up_runner.cleanup()

    asyncio.run(scenario())


def test_large_request_bodies_are_streamed_not_buffered():
    from llmos_runtime.proxy import BUFFERED_BODY_LIMIT

    got = {}

    async def count(request: web.Request):
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        got["n"] = n
        return web.json_response({"n": n})

    async def body():
        for _ in range(8):
            yield b"x" * (BUFFERED_BODY_LIMIT // 2)

    async def scenario():
        up = web.Application(client_max_size=1 << 30)
        up.router.add_post("/v1/embeddings", count)
        up_runner, up_url = await _serve(up)
        proxy, px_runner, px_url = await _ready_proxy(up_url)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(px_url + "/v1/embeddings", data=body()) as r:  # chunked, 4 MiB
                    assert r.status == 200 and (await r.json())["n"] == 4 * BUFFERED_BODY_LIMIT
        finally:
            await proxy.close()
            await px_runner.cleanup()
            await up_runner.cleanup()

    asyncio.run(scenario())
