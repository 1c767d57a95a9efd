"""SIGTERM while serving: a drain that loses no request behind any load balancer (the timeline and its budget are in
termination.py and docs/runtime.md).

1. ``--drain-grace`` s: ``/readyz`` is 503 at once (the runtime publishes it before this starts), but new requests
   are still served, each answer with ``Connection: close`` — endpoint removal takes time to reach kube-proxy and
   gateways, which keep sending meanwhile and mostly do not retry a POST.
2. Then new requests are refused (503, ``X-LLMOS-Draining``), and the ones in flight (streams included) finish, for
   up to ``--drain-timeout`` s; the runtime asks the guard for its in-flight count every 0.2 s.
3. ``FLUSH_SECONDS`` more, so the server writes the last bytes of the last answers; then vLLM is stopped.

The engine exiting by itself on the way is a failure (exit 5), not a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable

import aiohttp

from .engine import Engine
from .guard import INFLIGHT_PATH
from .state import RuntimeState
from .termination import FLUSH_SECONDS

log = logging.getLogger("llmos_runtime")

POLL_SECONDS = 0.2


class EngineExitedWhileDraining(Exception):
    def __init__(self, code: int):
        super().__init__(f"engine exited with code {code} while draining")
        self.code = code


class Drain:
    def __init__(self, engine: Engine, state: RuntimeState, headers: dict[str, str], *, grace: float,
                 timeout: float, force: asyncio.Event, signal_name: str = "SIGTERM"):
        self.engine, self.state, self.headers = engine, state, dict(headers)
        self.grace, self.timeout, self.force, self.signal_name = grace, timeout, force, signal_name

    async def inflight(self) -> int | None:
        """Requests in flight in the engine's public API (from the guard), or None if it cannot be asked."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
                async with s.get(self.engine.url + INFLIGHT_PATH, headers=self.headers) as r:
                    return int((await r.json())["inflight"]) if r.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError):
            return None

    async def run(self) -> float:
        """Grace, refusal, in-flight wait, flush. Returns the seconds it took; raises EngineExitedWhileDraining."""
        started = time.monotonic()
        log.info("%s: draining (not ready; new requests served with Connection: close for %gs; %s in flight)",
                 self.signal_name, self.grace, _count(await self.inflight()))
        await self._wait(self._until(started + self.grace), "the drain grace")
        self.state.refusing = True
        self.state.publish()
        refused_at = time.monotonic()
        inflight = await self.inflight()
        log.info("drain grace over: new requests refused; %s in flight", _count(inflight))
        while inflight != 0 and time.monotonic() - refused_at < self.timeout and not self.force.is_set():
            await self._wait(self._sleep(POLL_SECONDS), "in-flight requests")
            inflight = await self.inflight()
        if inflight:
            log.warning("%d request(s) still in flight after %.1fs; stopping the engine anyway",
                        inflight, time.monotonic() - refused_at)
        else:
            log.info("drained in %.2fs", time.monotonic() - started)
            # The count falls when a response's last chunk is handed to the server, which may not have written it
            # to the socket yet: stopping vLLM's process at once could cut a stream's final bytes.
            await self._wait(asyncio.sleep(FLUSH_SECONDS), "the last bytes")
        self._check_engine()
        return time.monotonic() - started

    async def _until(self, deadline: float) -> None:
        while time.monotonic() < deadline and not self.force.is_set():
            await self._sleep(min(POLL_SECONDS, deadline - time.monotonic()))

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.force.wait(), max(0.0, seconds))
        except TimeoutError:
            pass

    async def _wait(self, aw: Awaitable[None], what: str) -> None:
        """Await ``aw``; the engine exiting meanwhile ends the drain with EngineExitedWhileDraining."""
        task = asyncio.ensure_future(aw)
        exited = asyncio.ensure_future(self.engine.wait_exit())
        try:
            await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
            exited.cancel()
        if self.engine.returncode is not None:
            log.error("engine exited with code %s while waiting for %s", self.engine.returncode, what)
        self._check_engine()

    def _check_engine(self) -> None:
        if self.engine.returncode is not None:
            raise EngineExitedWhileDraining(self.engine.returncode)


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)
