"""Limits exact across replicas: the GCRA arithmetic of limits.py run as Lua scripts in a Valkey/Redis every replica
of a namespace shares (``--limits-store redis://host:port``). One round trip per request to admit it (every limit of
its key and tenant checked, then charged, atomically, on the store's clock — no skew between replicas) and one after
its answer (tokens charged, its concurrency slot given back). Concurrency slots are leases (``LEASE_SECONDS``): a
replica that dies mid-request frees its slots when they expire.

When the store does not answer within ``TIMEOUT_SECONDS`` (or refuses), the replica falls back to its own share of
each limit (limits.LocalLimiter) and tries the store again after ``RETRY_SECONDS``: an outage of the store makes
limits approximate, never makes the model unavailable.

The client is a minimal RESP2 client on asyncio streams (pipelined: concurrent requests share one connection),
because the guard runs inside the engine's process and imports only the standard library; it needs AUTH, EVALSHA,
SCRIPT LOAD and nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from .keys import KeyEntry, Limits
from .limits import LocalLimiter, Refused

log = logging.getLogger("llmos_runtime.store")
TIMEOUT_SECONDS = 0.25
RETRY_SECONDS = 2.0
LEASE_SECONDS = 600.0
ENV_PASSWORD = "LLMOS_LIMITS_STORE_PASSWORD"

ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local id, lease, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local charged = {}
for i = 0, n - 1 do
  local rpm, tpm, conc = tonumber(ARGV[4 + 3 * i]), tonumber(ARGV[5 + 3 * i]), tonumber(ARGV[6 + 3 * i])
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 + 3 * i], '-inf', now)
    if redis.call('ZCARD', KEYS[3 + 3 * i]) + 1 > conc then return {1, '1000', 'concurrency', i} end
  end
  if tpm > 0 then
    local step = 60.0 / tpm
    local base = math.max(tonumber(redis.call('GET', KEYS[2 + 3 * i]) or '0'), now)
    local allow_until = now + math.max(1, tpm / 60.0) * step
    if base >= allow_until then
      return {1, tostring(math.ceil((base - allow_until + step) * 1000)), 'tokens', i}
    end
  end
  if rpm > 0 then
    local step = 60.0 / rpm
    local new_tat = math.max(tonumber(redis.call('GET', KEYS[1 + 3 * i]) or '0'), now) + step
    local allow_until = now + math.max(1, rpm / 60.0) * step
    if new_tat > allow_until + 1e-9 then
      return {1, tostring(math.ceil((new_tat - allow_until) * 1000)), 'requests', i}
    end
    charged[i] = new_tat
  end
end
for i = 0, n - 1 do
  if charged[i] then
    redis.call('SET', KEYS[1 + 3 * i], string.format('%.6f', charged[i]), 'PX',
               math.ceil((charged[i] - now) * 1000) + 60000)
  end
  if tonumber(ARGV[6 + 3 * i]) > 0 then
    redis.call('ZADD', KEYS[3 + 3 * i], now + lease, id)
    redis.call('PEXPIRE', KEYS[3 + 3 * i], math.ceil(lease * 1000))
  end
end
return {0}
"""

DONE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local id, tokens, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 0, n - 1 do
  local tpm, conc = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  if tpm > 0 and tokens > 0 then
    local tat = math.max(tonumber(redis.call('GET', KEYS[1 + 2 * i]) or '0'), now) + tokens * 60.0 / tpm
    redis.call('SET', KEYS[1 + 2 * i], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 60000)
  end
  if conc > 0 then redis.call('ZREM', KEYS[2 + 2 * i], id) end
end
return 0
"""


class StoreError(Exception):
    pass


class Resp:
    """One pipelined RESP2 connection; reconnects on the next call after a failure."""

    def __init__(self, url: str, password: str | None = None):
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 6379
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else password
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting: asyncio.Lock | None = None
        self._reading: asyncio.Task[None] | None = None

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._reader, self._writer = reader, writer
            self._reading = asyncio.get_running_loop().create_task(self._read_loop(reader))
            if self.password:
                auth = (("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
                await self._send(*auth)

    def _close(self, exc: BaseException) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(exc)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await _read_reply(reader)
                fut = self._pending.popleft()
                if not fut.done():
                    if isinstance(reply, StoreError):
                        fut.set_exception(reply)
                    else:
                        fut.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError) as e:
            self._close(ConnectionError(f"limit store connection lost: {e!r}"))

    async def _send(self, *args: Any) -> Any:
        assert self._writer is not None
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(fut)
        self._writer.write(b"".join(parts))
        return await fut

    async def call(self, *args: Any) -> Any:
        if self._writer is None:
            await self._connect()
        return await self._send(*args)

    def close(self) -> None:
        self._close(ConnectionError("closed"))


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return StoreError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = await reader.readexactly(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [await _read_reply(reader) for _ in range(n)]
    raise ValueError(f"unexpected reply {line!r}")


class StoreLimiter:
    """limits.LocalLimiter's interface, kept in the shared store (see the module docstring)."""

    def __init__(self, url: str, fallback: LocalLimiter | None = None, clock=time.monotonic):
        self.resp = Resp(url, os.environ.get(ENV_PASSWORD))
        self.fallback = fallback if fallback is not None else LocalLimiter()
        self.clock = clock
        self._sha: dict[str, str] = {}
        self._down_until = 0.0
        self._local: set[str] = set()  # request ids admitted by the fallback (done goes there too)
        self.fallbacks = 0

    @staticmethod
    def _subjects(key: KeyEntry, tenant: str, tenant_limits: Limits) -> list[tuple[str, Limits]]:
        out = []
        if not key.limits.empty:
            out.append((f"llmos:{{{tenant}}}:key:{key.id}", key.limits))
        if tenant and not tenant_limits.empty:
            out.append((f"llmos:{{{tenant}}}:tenant", tenant_limits))
        return out

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        sha = self._sha.get(script)
        if sha is None:
            sha = self._sha[script] = await self.resp.call("SCRIPT", "LOAD", script)
        try:
            return await self.resp.call("EVALSHA", sha, len(keys), *keys, *args)
        except StoreError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
            self._sha.pop(script, None)
            return await self.resp.call("EVAL", script, len(keys), *keys, *args)

    def _unavailable(self, e: BaseException) -> None:
        if self.clock() >= self._down_until:
            log.warning("limit store unavailable (%r): each replica enforces its share for %.0f s", e, RETRY_SECONDS)
        self._down_until = self.clock() + RETRY_SECONDS
        self.resp.close()
        self.fallbacks += 1

    async def admit(self, key: KeyEntry, tenant: str, tenant_limits: Limits, replicas: int,
                    request_id: str = "") -> Refused | None:
        subjects = self._subjects(key, tenant, tenant_limits)
        if not subjects:
            return None
        if self.clock() < self._down_until:
            self._local.add(request_id)
            return await self.fallback.admit(key, tenant, tenant_limits, replicas)
        keys, args = [], [request_id, LEASE_SECONDS, len(subjects)]
        for prefix, lim in subjects:
            keys += [f"{prefix}:r", f"{prefix}:t", f"{prefix}:c"]
            args += [lim.requests_per_minute or 0, lim.tokens_per_minute or 0, lim.concurrent_requests or 0]
        try:
            reply = await asyncio.wait_for(self._eval(ADMIT, keys, args), TIMEOUT_SECONDS)
        except (OSError, StoreError, TimeoutError, ConnectionError) as e:
            self._unavailable(e)
            self._local.add(request_id)
            return await self.fallback.admit(key, tenant, tenant_limits, replicas)
        if reply[0] == 0:
            return None
        scope = "key" if subjects[int(reply[3])][0].endswith(f":key:{key.id}") else "tenant"
        return Refused(str(reply[2]), scope, int(reply[1]) / 1000)

    async def done(self, key: KeyEntry, tenant: str, tenant_limits: Limits, replicas: int, tokens: int,
                   request_id: str = "") -> None:
        if request_id in self._local:
            self._local.discard(request_id)
            return await self.fallback.done(key, tenant, tenant_limits, replicas, tokens)
        subjects = self._subjects(key, tenant, tenant_limits)
        if not subjects or self.clock() < self._down_until:
            return None
        keys, args = [], [request_id, tokens, len(subjects)]
        for prefix, lim in subjects:
            keys += [f"{prefix}:t", f"{prefix}:c"]
            args += [lim.tokens_per_minute or 0, lim.concurrent_requests or 0]
        try:
            await asyncio.wait_for(self._eval(DONE, keys, args), TIMEOUT_SECONDS)
        except (OSError, StoreError, TimeoutError, ConnectionError) as e:
            self._unavailable(e)
        return None
