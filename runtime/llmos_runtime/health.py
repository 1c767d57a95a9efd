"""The health port: ``/healthz`` (process alive), ``/readyz`` (model loaded and verified, not draining),
``/metrics`` (the engine's metrics followed by the runtime's own) and ``/adapters`` (loaded and failed adapters)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from .state import RuntimeState

if TYPE_CHECKING:
    from .adapters import AdapterManager

log = logging.getLogger(__name__)

PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    def __init__(self, state: RuntimeState, *, engine_url: Callable[[], str | None],
                 adapters: Callable[[], "AdapterManager | None"], engine_headers: dict[str, str] | None = None):
        self.state = state
        self._engine_url = engine_url
        self._adapters = adapters
        self._engine_headers = dict(engine_headers or {})  # the guard's token: /metrics is not public
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/adapters", self.adapters)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def healthz(self, _request: web.Request) -> web.Response:
        s = self.state
        body = {"alive": s.alive, "phase": s.phase}
        if not s.alive:
            body["reason"] = s.failure or f"engine exited with code {s.engine_exited}"
            return web.json_response(body, status=503)
        return web.json_response(body)

    async def readyz(self, _request: web.Request) -> web.Response:
        s = self.state
        # the digest names what this replica serves (or will serve): a rollout tells new pods from old by it
        if s.ready:
            return web.json_response({"ready": True, "digest": s.digest, "phase": s.phase,
                                      "verification": s.verification})
        return web.json_response({"ready": False, "digest": s.digest, "phase": s.phase,
                                  "reason": s.not_ready_reason()}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        # ?name[]=…: only those families (prometheus_client's filter, which vLLM's /metrics has too). The operator's
        # autoscaler asks for three gauges every few seconds: the engine then renders a few hundred bytes, not all.
        names = request.query.getall("name[]", [])
        query = ("?" + urlencode([("name[]", n) for n in names])) if names else ""
        engine_text = b""
        url = self._engine_url()
        if url and self.state.engine_exited is None:
            if self.session is None:
                self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            try:
                async with self.session.get(url + "/metrics" + query, headers=self._engine_headers) as r:
                    if r.status == 200:
                        engine_text = await r.read()
            except (aiohttp.ClientError, TimeoutError) as e:
                log.debug("engine metrics unavailable: %s", e)
        if engine_text and not engine_text.endswith(b"\n"):
            engine_text += b"\n"
        return web.Response(body=engine_text + self.state.metrics.exposition(names),
                            headers={"Content-Type": PROM_CONTENT_TYPE})

    async def adapters(self, _request: web.Request) -> web.Response:
        mgr = self._adapters()
        if mgr is None:
            return web.json_response({"enabled": False, "loaded": [], "failed": []})
        return web.json_response(mgr.report())
