"""The OpenAI-compatible port: a small streaming reverse proxy in front of vLLM's loopback port.

Owning the client-facing socket is what makes a clean drain possible: after SIGTERM every NEW request is refused at
once with 503 (``Connection: close``, ``Retry-After``) so that a load balancer retries it on another replica, while
requests already in flight (streaming ones included) keep flowing to the engine until they finish.

It is also what keeps the engine's management API private: only the inference endpoints in ``INFERENCE_ROUTES``
reach vLLM; everything else (adapter loading, ``/adapters``, profiling, sleep/wake, cache resets, collective RPC,
weight updates, ...) answers 404 here. Adapters change only through the runtime's own verified reconcile, which
talks to the engine's loopback port directly.

Cheap on purpose (see bench/proxy_bench.py): responses are streamed chunk by chunk as they arrive, request bodies
larger than ``BUFFERED_BODY_LIMIT`` are streamed too, pooled engine connections are dropped before vLLM's 5 s
keep-alive ends them, and a request whose pooled connection turns out dead before any response byte is retried once
on a fresh one. A client that hangs up cancels its handler (``handler_cancellation``), which closes the engine
connection, which makes vLLM abort the generation.

Headers follow RFC 9110 section 7.6.1: hop-by-hop headers, and every header named in ``Connection:``, are dropped
both ways; repeated headers are kept as they are; ``X-Forwarded-For`` gets the client's address appended. WebSocket
upgrades (vLLM's ``/v1/realtime`` audio endpoint) are refused with 501: llmos serves text models.
"""

from __future__ import annotations

import json
import logging
import re

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .state import RuntimeState

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1), plus the ones aiohttp computes itself for the new message.
_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
    )
)
DRAINING_HEADER = "X-LLMOS-Draining"
# Request bodies up to this size are read whole (so a request can be retried on a fresh engine connection); larger
# ones are streamed to the engine as they arrive.
BUFFERED_BODY_LIMIT = 1 << 20
# vLLM (uvicorn) closes idle connections after 5 s; an idle pooled connection is dropped well before that, so the
# proxy never writes a request into a socket the engine is closing.
UPSTREAM_KEEPALIVE_SECONDS = 2.0
MAX_BODY = 64 * 1024 * 1024

# The inference API of vLLM 0.32's OpenAI-compatible server: (methods, path pattern). Nothing else is forwarded.
INFERENCE_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = tuple(
    (frozenset(methods), re.compile(pattern))
    for methods, pattern in (
        (("GET",), r"/v1/models"),
        (("GET",), r"/v1/models/[^/]+"),
        (("POST",), r"/v1/completions"),
        (("POST",), r"/v1/chat/completions"),
        (("POST",), r"/v1/responses"),
        (("GET",), r"/v1/responses/[^/]+"),
        (("POST",), r"/v1/responses/[^/]+/cancel"),
        (("POST",), r"/v1/messages"),
        (("POST",), r"/v1/messages/count_tokens"),
        (("POST",), r"/v1/embeddings"),
        (("POST",), r"/pooling"),
        (("POST",), r"/classify"),
        (("POST",), r"/tokenize"),
        (("POST",), r"/detokenize"),
        (("POST",), r"/score"),
        (("POST",), r"/v1/score"),
        (("POST",), r"/rerank"),
        (("POST",), r"/v1/rerank"),
        (("POST",), r"/v2/rerank"),
        (("GET",), r"/health"),
        (("GET",), r"/version"),
    )
)


def is_inference_route(method: str, path: str) -> bool:
    return any(method in methods and pattern.fullmatch(path) for methods, pattern in INFERENCE_ROUTES)


def error_body(message: str, code: int, err_type: str) -> bytes:
    """An OpenAI-style error object, like the engine's own."""
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}}).encode()


def _error(status: int, message: str, err_type: str, **headers: str) -> web.Response:
    return web.Response(status=status, body=error_body(message, status, err_type),
                        headers={"Content-Type": "application/json", **headers})


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


def _connection_tokens(headers) -> set[str]:
    return {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",") if t.strip()}


def end_to_end_headers(headers) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop ones (including those named in ``Connection:``); repeats and order kept."""
    drop = _HOP | _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k.lower() not in drop:
            out.add(k, v)
    return out


def forwarded_request_headers(request: web.Request) -> CIMultiDict[str]:
    out = end_to_end_headers(request.headers)
    peer = request.remote
    if peer:
        prior = ", ".join(out.popall("X-Forwarded-For", []))
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    host = request.headers.get("Host")
    if host and "X-Forwarded-Host" not in out:
        out["X-Forwarded-Host"] = host
    if "X-Forwarded-Proto" not in out:
        out["X-Forwarded-Proto"] = request.scheme
    return out


class _NothingSent(Exception):
    """The engine connection failed before the engine could have seen the request (safe to retry)."""


class Proxy:
    def __init__(self, state: RuntimeState):
        self.state = state
        self.upstream: str | None = None  # http://127.0.0.1:<engine port>, set once the engine is started
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        # handler_cancellation: a client that hangs up cancels its handler, which closes the engine connection, which
        # makes vLLM abort the generation. auto_decompress off: bodies are forwarded as sent.
        app = web.Application(client_max_size=MAX_BODY,
                              handler_args={"auto_decompress": False, "handler_cancellation": True})
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def open(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        if not is_inference_route(request.method, request.path):
            state.metrics.rejected.labels(reason="not-found").inc()
            return _error(404, f"{request.method} {request.path} is not part of this model's inference API",
                          "NotFoundError")
        if "upgrade" in _connection_tokens(request.headers) or request.headers.get("Upgrade"):
            return _error(501, "protocol upgrades (WebSocket) are not supported by this endpoint", "NotImplemented")
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

    async def _send(self, request: web.Request, headers: CIMultiDict[str], body) -> aiohttp.ClientResponse:
        assert self.session is not None and self.upstream is not None
        try:
            return await self.session.request(
                request.method, self.upstream + request.rel_url.path_qs, headers=headers, data=body,
                allow_redirects=False, compress=None, auto_decompress=False,
            )
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            # A reset or close before any response byte: for a buffered body nothing is lost by sending it again.
            raise _NothingSent(str(e) or type(e).__name__) from e

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = forwarded_request_headers(request)
        length = request.content_length
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if length is not None and length > MAX_BODY:
            return _error(413, f"request body larger than {MAX_BODY} bytes", "RequestEntityTooLarge")
        buffered = not chunked and (length or 0) <= BUFFERED_BODY_LIMIT
        body = (await request.read() or None) if buffered else request.content
        try:
            try:
                upstream = await self._send(request, headers, body)
            except _NothingSent as e:
                if not buffered:
                    raise aiohttp.ClientError(str(e)) from e
                log.debug("engine connection reset before a response to %s; retrying once", request.path)
                upstream = await self._send(request, headers, body)
        except (aiohttp.ClientError, _NothingSent) as e:
            log.warning("engine unreachable for %s %s: %s", request.method, request.rel_url.path, e)
            return _error(502, f"engine unreachable: {e}", "BadGateway")
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=end_to_end_headers(upstream.headers))
            if upstream.content_length is not None and "chunked" not in upstream.headers.get(
                "Transfer-Encoding", ""
            ).lower():
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                try:
                    await resp.write(chunk)
                except (ConnectionResetError, aiohttp.ClientConnectionResetError):
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
            # On cancellation too (the client hung up): closing the connection is what makes vLLM abort the request.
            upstream.release() if upstream.content.is_eof() else upstream.close()
