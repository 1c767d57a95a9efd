"""API keys in force in the guard (guard.py): who may call this model, how much, and what it used.

Per request on the inference API (``/health`` and ``/version`` excepted): ``Authorization: Bearer <key>`` is hashed
(sha256, keys.py) and looked up in the key table the runtime keeps in the guard's directory (reloaded when the
file changes, looked at no more than every ``RELOAD_CHECK_SECONDS``); a missing, unknown or expired key is answered
401, a key not for the model the body names 403, a request over a limit of its key or tenant 429 with
``Retry-After``, all in OpenAI's error shape. The body of an admitted request is read once and handed on to the
engine; a stream that does not ask for usage is made to (``stream_options.include_usage``) and the usage-only event
is taken out of what the client gets. The answer's usage is metered (metering.py) and charged to the
tokens-per-minute limits (limits.py; store.py when a shared store is configured).

Standard library only: it runs inside the engine's process.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .answers import respond as _refuse
from .keys import TABLE_FILE, KeyTable, key_hash
from .limits import LocalLimiter, Refused
from .metering import NO_KEY, OTHER_MODEL, USAGE_MARK, Meter, scan_stream_chunk, usage_of, usage_tokens

ENV_KEYS = "LLMOS_GUARD_KEYS"  # "required": the guard enforces API keys (the runtime sets it)
ENV_SERVED = "LLMOS_GUARD_SERVED"  # the served model name (a request naming no model is for it)
ENV_STORE = "LLMOS_LIMITS_STORE"  # redis://[user:password@]host:port of the shared limit store, if any
RELOAD_CHECK_SECONDS = 0.25
OPEN_ROUTES = frozenset({("GET", "/health"), ("GET", "/version")})
USAGE_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions"})
MAX_METERED_BODY = 4 << 20  # a non-streamed answer larger than this is not parsed for its usage


def error_json(message: str, err_type: str, code: str) -> bytes:
    """OpenAI's error shape."""
    return json.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}}).encode()


def bearer(scope: dict) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == b"authorization":
            scheme, _, token = v.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


class KeyTableFile:
    """The key table the runtime writes (atomically) into the guard's directory, reloaded when it changes."""

    def __init__(self, path: str, clock=time.monotonic):
        self.path, self.clock = path, clock
        self.table: KeyTable | None = None
        self._seen: tuple | None = None
        self._checked = float("-inf")

    def current(self) -> KeyTable | None:
        now = self.clock()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self.table
        self._checked = now
        try:
            st = os.stat(self.path)
        except OSError:
            return self.table
        seen = (st.st_mtime_ns, st.st_ino, st.st_size)
        if seen != self._seen:
            try:
                with open(self.path, "rb") as f:
                    self.table = KeyTable.loads(f.read())
                self._seen = seen
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a half-written or bad file: keep the table in force (the runtime writes by rename)
        return self.table


async def read_body(receive) -> tuple[bytes, bool]:
    """The whole request body, and whether the client went away meanwhile."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(parts), True
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), False


class Access:
    """What the guard asks per request once the route is allowed and the replica serves."""

    def __init__(self, guard_dir: str, served_name: str, limiter: Any = None, meter: Meter | None = None):
        self.tables = KeyTableFile(os.path.join(guard_dir, TABLE_FILE))
        self.served_name = served_name
        self.limiter = limiter if limiter is not None else LocalLimiter()
        self.meter = meter if meter is not None else Meter()
        self._prefix = os.urandom(6).hex() + "-"  # request ids unique across replicas (concurrency leases)
        self._count = 0

    @classmethod
    def from_env(cls, guard_dir: str) -> Access | None:
        if os.environ.get(ENV_KEYS) != "required" or not guard_dir:
            return None
        limiter = None
        store = os.environ.get(ENV_STORE)
        if store:
            from .store import StoreLimiter

            limiter = StoreLimiter(store, fallback=LocalLimiter())
        return cls(guard_dir, os.environ.get(ENV_SERVED, ""), limiter)

    def needs_key(self, method: str, path: str) -> bool:
        return (method, path) not in OPEN_ROUTES

    def _table(self) -> KeyTable | None:
        table = self.tables.current()
        if table is not None and table is not getattr(self, "_meter_table", None):
            self._meter_table = table  # new keys get their series at 0 (metering.py: Meter.known)
            for entry in table.keys.values():
                self.meter.known(table.tenant, entry.id, self.served_name)
        return table

    async def handle(self, scope: dict, receive, send, app, counted: Any = None) -> None:
        """Refuse (401/403/429) or pass the request on to ``app``, metering its answer (``counted``: the guard's
        wrapper of this request, whose ``send`` hands each message to the answer's ``see``)."""
        table = self._table()
        if table is None:
            return await _refuse(send, 503, error_json("API keys are not loaded yet; retry", "server_error",
                                                        "keys_not_loaded"), [(b"retry-after", b"1")])
        token = bearer(scope)
        entry = table.keys.get(key_hash(token)) if token else None
        if entry is None:
            self.meter.record(table.tenant, NO_KEY, "", 401)
            what = "no API key given (Authorization: Bearer <key>)" if token is None else "the API key is not valid"
            return await _refuse(send, 401, error_json(what, "invalid_request_error",
                                                       "missing_api_key" if token is None else "invalid_api_key"))
        if entry.expires is not None and time.time() >= entry.expires:
            self.meter.record(table.tenant, NO_KEY, "", 401)
            return await _refuse(send, 401, error_json(f"API key {entry.id} has expired", "invalid_request_error",
                                                       "expired_api_key"))
        body, gone = (b"", False) if scope["method"] != "POST" else await read_body(receive)
        doc = _json(body)
        model = (doc.get("model") if isinstance(doc, dict) else None) or self.served_name
        served = table.served or frozenset((self.served_name,))
        label = model if model in served else OTHER_MODEL
        if scope["method"] == "POST" and not entry.allows(model):
            self.meter.record(table.tenant, entry.id, label, 403)
            return await _refuse(send, 403, error_json(
                f"API key {entry.id} may not call model {model!r} (allowed: {', '.join(sorted(entry.models or ()))})",
                "permission_error", "model_not_allowed"))
        replicas = table.replicas.get(self.served_name, 1)
        self._count += 1
        request_id = f"{self._prefix}{self._count}"
        refused: Refused | None = await self.limiter.admit(entry, table.tenant, table.tenant_limits, replicas,
                                                           request_id)
        if refused is not None:
            self.meter.record(table.tenant, entry.id, label, 429)
            self.meter.refused(table.tenant, refused.limit, refused.scope)
            return await _refuse(send, 429, error_json(
                f"{refused.scope} {entry.id if refused.scope == 'key' else table.tenant} is over its "
                f"{refused.limit} limit; retry after {refused.retry_after_header} s", refused.limit,
                "rate_limit_exceeded"), [(b"retry-after", refused.retry_after_header.encode())])
        answer = _Answer(self.meter, table.tenant, entry.id, label)
        if isinstance(doc, dict) and doc.get("stream") and scope["path"] in USAGE_ROUTES:
            body, scope = answer.ask_for_usage(doc, scope, body)
        if counted is not None:
            counted.answer = answer
        else:
            send = _seen_by(answer, send)
        try:
            await app(scope, _replay(body, gone, receive), send)
        finally:
            tokens = answer.finish()
            await self.limiter.done(entry, table.tenant, table.tenant_limits, replicas, tokens, request_id)


def _json(body: bytes) -> Any:
    if not body or body[:1] not in (b"{", b" ", b"\n", b"\t", b"\r"):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _replay(body: bytes, gone: bool, receive):
    sent = False

    async def replay():
        nonlocal sent
        if gone:
            return {"type": "http.disconnect"}
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _seen_by(answer: _Answer, send):
    async def seen(message):
        await send(answer.see(message["type"], message))

    return seen


class _Answer:
    """One admitted request's answer: its status, its usage."""

    __slots__ = ("meter", "tenant", "key", "model", "code", "stream", "strip", "usage", "parts", "size")

    def __init__(self, meter: Meter, tenant: str, key: str, model: str):
        self.meter, self.tenant, self.key, self.model = meter, tenant, key, model
        self.code, self.stream, self.strip = 500, False, False
        self.usage: dict | None = None
        self.parts: list[bytes] = []
        self.size = 0

    def ask_for_usage(self, doc: dict, scope: dict, body: bytes) -> tuple[bytes, dict]:
        options = doc.get("stream_options")
        options = options if isinstance(options, dict) else {}
        if options.get("include_usage"):
            return body, scope
        self.strip = True  # the client did not ask: the usage-only event is not sent to it
        doc["stream_options"] = {**options, "include_usage": True}
        body = json.dumps(doc).encode()
        headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        return body, {**scope, "headers": headers}

    def see(self, kind: str, message: dict) -> dict:
        """Each message of the answer, on its way out (called by the guard's own send wrapper: no extra layer per
        streamed event); returns what is sent."""
        if kind == "http.response.body":
            body = message.get("body", b"")
            if self.stream:
                if USAGE_MARK in body:  # the last event or two of a stream; every other event costs this search
                    kept, usage = scan_stream_chunk(body, self.strip)
                    if usage is not None:
                        self.usage = usage
                        if len(kept) != len(body):
                            return {**message, "body": kept}
            elif self.code < 400 and self.size < MAX_METERED_BODY:
                self.parts.append(body)
                self.size += len(body)
        elif kind == "http.response.start":
            self.code = message.get("status", 500)
            for k, v in message.get("headers", ()):
                if k.lower() == b"content-type":
                    self.stream = v.startswith(b"text/event-stream")
        return message

    def finish(self) -> int:
        """Meter the answer; returns its tokens (prompt + completion)."""
        if self.usage is None and self.parts and self.size < MAX_METERED_BODY:
            self.usage = usage_of(_json(b"".join(self.parts)))
        prompt, completion = usage_tokens(self.usage)
        self.meter.record(self.tenant, self.key, self.model, self.code, prompt, completion)
        return prompt + completion
