"""The pod's public API port, guarded inside vLLM's own server: a pure ASGI middleware that vLLM loads with
``--middleware llmos_runtime.guard.InferenceOnly`` (the runtime adds it; tenants cannot).

Why not a proxy: a Python reverse proxy in front of vLLM cost ~29 µs of CPU per streamed event and multiplied the
p99 time to first byte under 400 concurrent streams (bench/proxy_bench.py). This middleware runs once per request,
before routing, and then hands vLLM's own ``send`` through untouched: streaming costs nothing extra, client
disconnects abort the generation natively, and there is no pooled connection to go stale.

Per request it decides:

- Only the inference API (``INFERENCE_ROUTES``) is served; everything else — adapter management, ``/adapters*``,
  profiling, sleep/wake, cache resets, collective RPC, weight updates, SageMaker ``/invocations`` — answers 404.
- The runtime's own calls (loading/unloading verified adapters, reading the in-flight count while draining) carry
  ``X-LLMOS-Runtime-Token``, a secret the runtime generates at every start and gives only to the engine's process
  (environment ``LLMOS_GUARD_TOKEN``). Without it those paths are 404 like any other.
- Readiness and drain, through marker files in ``LLMOS_GUARD_DIR`` that the runtime keeps (one ``stat`` each per
  request, which works across several API server processes, which an in-process flag would not): ``serving`` while
  new requests are served (the replica is ready, or SIGTERM came less than the drain grace ago); ``closing`` after
  SIGTERM: answers carry ``Connection: close``, so pooled connections end with the request they carried; without
  ``serving``, requests get 503 with ``Retry-After: 1`` and ``Connection: close`` (and ``X-LLMOS-Draining: 1`` once
  ``draining`` exists), so a load balancer retries on another replica; requests already in flight continue.
- Its own answers (404, 503) carry ``X-LLMOS-Guard: refused``: the runtime's self-test before ready checks that a
  management route gets exactly this answer, i.e. that the guard runs in front of every route of this engine.
- The in-flight count (``GET /llmos/inflight``, runtime token only): inference requests in flight, and how many of
  them wait on the engine (the body is in, no answer is being written: a client reading slowly, or still sending
  its body, is not the engine's delay). The runtime's watchdog and drain read it.
- API keys (access.py), when the runtime enforces them: 401 without a valid key, 403 for a model the key may not
  call, 429 over a limit; the answers' usage metered per key and model (``GET /llmos/metering``, runtime token).
- WebSocket (vLLM's ``/v1/realtime`` audio endpoint) is refused: the handshake is closed (HTTP 403); llmos serves
  text models.

Imports only the standard library: it runs inside the engine's process.
"""

from __future__ import annotations

import hmac
import json
import os
import re

from .answers import GUARD_HEADER, GUARD_REFUSED
from .answers import respond as _respond

__all__ = ["GUARD_HEADER", "GUARD_REFUSED", "InferenceOnly"]

TOKEN_HEADER = "x-llmos-runtime-token"
DRAINING_HEADER = "X-LLMOS-Draining"
INFLIGHT_PATH = "/llmos/inflight"
METERING_PATH = "/llmos/metering"
ENV_DIR = "LLMOS_GUARD_DIR"
ENV_TOKEN = "LLMOS_GUARD_TOKEN"
SERVING_MARKER = "serving"
CLOSING_MARKER = "closing"
DRAINING_MARKER = "draining"

# The inference API of vLLM 0.32's OpenAI-compatible server: (methods, path pattern). Nothing else is served.
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
# What only the runtime may call (with its token).
RUNTIME_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
    ("GET", INFLIGHT_PATH),
    ("GET", METERING_PATH),
    ("GET", "/metrics"),
    ("GET", "/health"),  # the runtime's health poll must see the engine, not the replica's readiness
    ("GET", "/v1/models"),  # the adapter audit reads what the engine serves, without an API key
)


def is_inference_route(method: str, path: str) -> bool:
    return any(method in methods and pattern.fullmatch(path) for methods, pattern in INFERENCE_ROUTES)


def error_body(message: str, code: int, err_type: str) -> bytes:
    """An OpenAI-style error object, like the engine's own."""
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}}).encode()


class InferenceOnly:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app, guard_dir: str | None = None, token: str | None = None):
        self.app = app
        d = guard_dir if guard_dir is not None else os.environ.get(ENV_DIR, "")
        self._serving = os.path.join(d, SERVING_MARKER) if d else None
        self._closing = os.path.join(d, CLOSING_MARKER) if d else None
        self._draining = os.path.join(d, DRAINING_MARKER) if d else None
        self._token = (token if token is not None else os.environ.get(ENV_TOKEN, "")).encode()
        from .access import Access

        self.access = Access.from_env(d)
        self.inflight = 0
        self.waiting = 0  # of those, requests whose body is in and whose answer is not being written

    def _from_runtime(self, scope) -> bool:
        if not self._token:
            return False
        for k, v in scope.get("headers", ()):
            if k == TOKEN_HEADER.encode():
                return hmac.compare_digest(v, self._token)
        return False

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "WebSocket is not served here"})
            return
        if kind != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        if (method, path) in RUNTIME_ROUTES and self._from_runtime(scope):
            if path == INFLIGHT_PATH:
                body = json.dumps({"inflight": self.inflight, "waiting": self.waiting}).encode()
                return await _respond(send, 200, body)
            if path == METERING_PATH:
                return await _respond(send, 200, self.access.meter.exposition() if self.access else b"")
            return await self.app(scope, receive, send)
        if not is_inference_route(method, path):
            return await _respond(send, 404, error_body(
                f"{method} {path} is not part of this model's inference API", 404, "NotFoundError"))
        if self._serving is not None and not os.path.exists(self._serving):
            draining = os.path.exists(self._draining)
            headers = [(b"retry-after", b"1"), (b"connection", b"close")]
            if draining:
                headers.append((DRAINING_HEADER.lower().encode(), b"1"))
            return await _respond(send, 503, error_body(
                f"replica is {'draining' if draining else 'not ready'}; retry on another", 503,
                "ServiceUnavailable"), headers)
        close = self._closing is not None and os.path.exists(self._closing)
        return await _Counted(self, close).run(scope, receive, send)


class _Counted:
    """One inference request: counted in flight, and as waiting on the engine from the end of its body until its
    answer is complete, except while the server writes to the client."""

    __slots__ = ("guard", "close", "body_in", "sending", "done", "answer", "_receive", "_send")

    def __init__(self, guard: InferenceOnly, close: bool):
        self.guard, self.close = guard, close
        self.body_in = self.sending = self.done = False
        self.answer = None  # with API keys: the metering of this answer (access.py), shown every message

    def _counts(self) -> bool:
        return self.body_in and not self.sending and not self.done

    async def run(self, scope, receive, send):
        self._receive, self._send = receive, send
        g = self.guard
        g.inflight += 1
        try:
            if g.access is not None and g.access.needs_key(scope["method"], scope["path"]):
                return await g.access.handle(scope, self.receive, self.send, g.app, self)
            return await g.app(scope, self.receive, self.send)
        finally:
            g.inflight -= 1
            if self._counts():
                g.waiting -= 1
            self.done = True

    async def receive(self):
        message = await self._receive()
        if not self.body_in and message["type"] == "http.request" and not message.get("more_body", False):
            self.body_in = True
            if self._counts():
                self.guard.waiting += 1
        return message

    async def send(self, message):
        kind = message["type"]
        if self.answer is not None:
            message = self.answer.see(kind, message)
        if self.close and kind == "http.response.start":
            # drain grace: this answer ends its connection, so a pooled client reconnects (to another replica)
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        if self._counts():
            self.guard.waiting -= 1
        self.sending = True
        try:
            await self._send(message)
        finally:
            self.sending = False
            if kind == "http.response.body" and not message.get("more_body", False):
                self.done = True
            if self._counts():
                self.guard.waiting += 1
