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
        up.router.add_get("/stream", stream)
        up.router.add_get("/die", die)
        up.router.add_post("/v1/echo", echo)
        up_runner, up_url = await _serve(up)

        state = RuntimeState()
        proxy = Proxy(state)
        px_runner, px_url = await _serve(proxy.app())
        async with aiohttp.ClientSession() as s:
            async with s.post(px_url + "/v1/echo", json={"a": 1}) as r:
                assert r.status == 503  # not ready: refused, engine not even contacted
            await proxy.open(up_url)
            state.verified = state.engine_ready = True

            async with s.post(px_url + "/v1/echo?x=1", json={"a": 1}, headers={"Authorization": "Bearer t"}) as r:
                assert r.status == 201
                assert await r.json() == {"path": "/v1/echo?x=1", "body": {"a": 1}, "auth": "Bearer t"}

            # the client leaves mid-stream: the engine's request is aborted, nothing stays in flight
            r = await s.get(px_url + "/stream")
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
                async with s.get(px_url + "/die") as r:
                    await r.read()
            assert state.inflight == 0

            state.draining = True
            async with s.get(px_url + "/stream") as r:
                assert r.status == 503 and r.headers["X-LLMOS-Draining"] == "1"
        await proxy.close()
        await px_runner.cleanup()
        await up_runner.cleanup()
        return state

    state = asyncio.run(scenario())
    text = state.metrics.exposition().decode()
    assert 'llmos_runtime_rejected_requests_total{reason="not-ready"} 1.0' in text
    assert 'llmos_runtime_rejected_requests_total{reason="draining"} 1.0' in text
