"""The OpenAI-compatible port: a small streaming reverse proxy in front of vLLM's loopback port.

Owning the client-facing socket is what makes a clean drain possible: after SIGTERM every NEW request is refused at
once with 503 (``Connection: close``, ``Retry-After``) so that a load balancer retries it on another replica, while
requests already in flight (streaming ones included) keep flowing to the engine until they finish.
"""

from __future__ import annotations

import json
import logging

import aiohttp
from aiohttp import web

from .state import RuntimeState

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones aiohttp recomputes.
_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)
DRAINING_HEADER = "X-LLMOS-Draining"


def error_body(message: str, code: int, err_type: str) -> bytes:
    """An OpenAI-style error object, like the engine's own."""
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}}).encode()


def refuse(state: RuntimeState, reason: str) -> web.Response:
    state.metrics.rejected.labels(reason=reason).inc()
    headers = {"Retry-After": "1", "Connection": "close", "Content-Type": "application/json"}
    if reason == "draining":
        headers[DRAINING_HEADER] = "1"
    return web.Response(
        status=503,
        body=error_body(f"replica is {'draining' if reason == 'draining' else 'not ready'}; retry on another",
                        503, "ServiceUnavailable"),
        headers=headers,
    )


class Proxy:
    def __init__(self, state: RuntimeState):
        self.state = state
        self.upstream: str | None = None  # http://127.0.0.1:<engine port>, set once the engine is started
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def open(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        if state.draining:
            return refuse(state, "draining")
        if not state.ready or self.session is None:
            return refuse(state, "not-ready")
        state.request_started()
        status = "error"
        try:
            resp = await self._forward(request)
            status = str(resp.status)
            return resp
        finally:
            state.metrics.requests.labels(code=status).inc()
            state.request_finished()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None and self.upstream is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        try:
            upstream = await self.session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
        except aiohttp.ClientError as e:
            log.warning("engine unreachable for %s %s: %s", request.method, request.rel_url.path, e)
            return web.Response(status=502, body=error_body(f"engine unreachable: {e}", 502, "BadGateway"),
                                content_type="application/json")
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            if upstream.content_length is not None and "chunked" not in upstream.headers.get(
                "Transfer-Encoding", ""
            ).lower():
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                try:
                    await resp.write(chunk)
                except ConnectionResetError:
                    # The client went away; closing the upstream response (below) makes the engine abort it.
                    log.debug("client left during %s %s", request.method, request.rel_url.path)
                    return resp
            await resp.write_eof()
            return resp
        except aiohttp.ClientError as e:
            # The engine failed mid-response: abort the client's connection so the answer is visibly incomplete
            # (a clean end of a chunked body would pass a truncated answer off as complete).
            log.warning("response to %s %s ended early: %s", request.method, request.rel_url.path, e)
            raise
        finally:
            upstream.release() if upstream.content.is_eof() else upstream.close()
