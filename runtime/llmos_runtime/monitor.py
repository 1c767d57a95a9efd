"""Watching the engine once the replica is ready: poll it, let the watchdog (watchdog.py) judge, act on the verdict.

Three polls every ``--engine-health-interval`` seconds, each waiting as long as it takes (a slow answer under load is
an answer, not a failure; only ``--watchdog-restart-after`` bounds it): vLLM's ``/health``; vLLM's ``/metrics``
(its running/waiting requests and token counters); the guard's in-flight count. A verdict of not ready turns
``/readyz`` 503 and the guard away from new requests, with the reason in ``/readyz``, the log and the metric
``llmos_runtime_engine_state``; back to ok, the replica is ready again. A verdict of dead fails ``/healthz`` and writes
the termination message (the kubelet's liveness probe restarts the container).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp

from .config import RuntimeConfig
from .guard import INFLIGHT_PATH
from .state import RuntimeState
from .watchdog import DEAD, OK, Verdict, Watchdog, read_engine_metrics

log = logging.getLogger("llmos_runtime")


class EngineMonitor:
    def __init__(self, cfg: RuntimeConfig, state: RuntimeState, url: str, headers: dict[str, str],
                 on_dead: Callable[[str], object]):
        self.cfg, self.state, self.url, self.headers = cfg, state, url, dict(headers)
        self.on_dead = on_dead  # (termination message) -> None
        self.watchdog = Watchdog(cfg.watchdog_unready_after, cfg.watchdog_restart_after, time.monotonic())
        self._warned_blind = False
        self._sources = "none seen yet"  # what the last progress sample was made of (logged with a verdict)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.cfg.watchdog_restart_after)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(self._poll_health(session), self._poll_progress(session), self._judge())

    async def _pace(self, started: float) -> None:
        await asyncio.sleep(max(0.0, self.cfg.engine_health_interval - (time.monotonic() - started)))

    async def _poll_health(self, session: aiohttp.ClientSession) -> None:
        while True:
            started = time.monotonic()
            try:
                async with session.get(self.url + "/health", headers=self.headers) as r:
                    self.watchdog.health(time.monotonic(), r.status == 200, f"/health answered HTTP {r.status}")
            except TimeoutError:
                pass  # no answer: the silence clock runs on
            except aiohttp.ClientError as e:  # refused: nothing listens
                self.watchdog.health(time.monotonic(), False, f"/health: {type(e).__name__}")
            await self._pace(started)

    async def _poll_progress(self, session: aiohttp.ClientSession) -> None:
        while True:
            started = time.monotonic()
            try:
                waiting = await self._guard_waiting(session)
                async with session.get(self.url + "/metrics", headers=self.headers) as r:
                    text = await r.text() if r.status == 200 else ""
                engine_pending, counters = read_engine_metrics(text)
                pending = max(waiting or 0, engine_pending or 0)
                self._sources = f"vLLM running+waiting {engine_pending}, guard waiting {waiting}"
                self.watchdog.progress(time.monotonic(), pending, counters)
                if counters is None and not self._warned_blind:
                    self._warned_blind = True
                    log.warning("the engine exports no token counters (--disable-log-stats?): the watchdog judges "
                                "only its /health answers")
            except (TimeoutError, aiohttp.ClientError, ValueError) as e:
                log.debug("engine progress unavailable: %s", e)
            await self._pace(started)

    async def _guard_waiting(self, session: aiohttp.ClientSession) -> int | None:
        async with session.get(self.url + INFLIGHT_PATH, headers=self.headers) as r:
            return int((await r.json()).get("waiting", 0)) if r.status == 200 else None

    async def _judge(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.cfg.engine_health_interval))
            if self.state.draining:
                continue  # the engine is being stopped on purpose; the drain has its own bounds
            now = time.monotonic()
            self.apply(self.watchdog.verdict(now), self.watchdog.stalled_for(now))

    def apply(self, verdict: Verdict, stalled: float) -> None:
        s, m = self.state, self.state.metrics
        m.engine_state.state(verdict.state)
        m.engine_stalled_seconds.set(round(stalled, 1))
        m.engine_waiting_requests.set(self.watchdog.pending)
        healthy = verdict.level == OK
        if healthy != s.engine_healthy:
            if healthy:
                log.warning("engine ok again (was: %s): ready", s.engine_problem)
            else:
                log.error("%s: not ready (last sample: %s)", verdict.reason, self._sources)
            s.engine_healthy, s.engine_problem = healthy, None if healthy else verdict.reason
            s.publish()
        elif not healthy:
            s.engine_problem = verdict.reason  # the seconds in the reason keep counting
        if verdict.level == DEAD and s.failure is None:
            limit = self.cfg.watchdog_restart_after
            self.on_dead(f"{verdict.reason} (--watchdog-restart-after {limit:g}); restarting")
