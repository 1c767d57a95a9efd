"""The health port: ``/healthz`` (process alive), ``/readyz`` (model loaded and verified, not draining),
``/metrics`` (the engine's metrics followed by the runtime's own) and ``/adapters`` (loaded and failed adapters).

What it tells whom: the kubelet needs only the status codes, Prometheus ``/metrics``. Whoever else the namespace's
ingress policy admits (the tenant's namespaces, gateways) gets those and the short bodies of ``/healthz`` and
``/readyz`` (alive/ready, phase, the revision's digest, the reason when not). The details — the verification summary
and the adapter report with its paths and failure reasons — answer only on loopback, i.e. from inside the pod
(``kubectl exec``, ``kubectl port-forward``); the adapter report reaches the operator through the pod annotation."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from .guard import METERING_PATH
from .state import RuntimeState

if TYPE_CHECKING:
    from .adapters import AdapterManager

log = logging.getLogger(__name__)

PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def is_loopback(remote: str | None) -> bool:
    """True for a peer address inside the pod (127.0.0.0/8, ::1, or an IPv4-mapped loopback)."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


_SAMPLE_SUFFIXES = (b"", b"_total", b"_created", b"_bucket", b"_count", b"_sum", b"_info")


def only_families(text: bytes, names: list[str]) -> bytes:
    """The lines of Prometheus text that belong to the families ``names`` (their HELP and TYPE lines and samples,
    counters' ``_total`` and histograms' ``_bucket``/``_count``/``_sum`` included)."""
    wanted = {n.encode() for n in names}
    samples = {n + s for n in wanted for s in _SAMPLE_SUFFIXES}
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith(b"#"):
            parts = line.split(b" ", 3)
            if len(parts) >= 3 and parts[1] in (b"HELP", b"TYPE") and parts[2] in wanted:
                out.append(line)
        elif line.split(b"{", 1)[0].split(b" ", 1)[0] in samples:
            out.append(line)
    return b"".join(out)


class HealthServer:
    def __init__(self, state: RuntimeState, *, engine_url: Callable[[], str | None],
                 adapters: Callable[[], AdapterManager | None], engine_headers: dict[str, str] | None = None):
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

    async def readyz(self, request: web.Request) -> web.Response:
        s = self.state
        # the digest names what this replica serves (or will serve): a rollout tells new pods from old by it
        if s.ready:
            body: dict[str, Any] = {"ready": True, "digest": s.digest, "phase": s.phase}
            if is_loopback(request.remote):
                body["verification"] = s.verification
            return web.json_response(body)
        return web.json_response({"ready": False, "digest": s.digest, "phase": s.phase,
                                  "reason": s.not_ready_reason()}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        # ?name[]=…: only those families, as prometheus_client's filter. The operator's autoscaler asks for three
        # gauges every few seconds: it reads a few hundred bytes, not the engine's ~50 KB (vLLM 0.32's /metrics
        # route ignores the filter, so the runtime applies it to what the engine answered).
        names = request.query.getall("name[]", [])
        query = ("?" + urlencode([("name[]", n) for n in names])) if names else ""
        engine_text = b""
        url = self._engine_url()
        if url and self.state.engine_exited is None:
            if self.session is None:
                self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            # vLLM's, then the guard's metering (keys, tokens) unless only named families are asked for
            paths = [("/metrics" + query)] + ([] if names else [METERING_PATH])
            for path in paths:
                try:
                    async with self.session.get(url + path, headers=self._engine_headers) as r:
                        if r.status == 200:
                            text = await r.read()
                            engine_text += text if not text or text.endswith(b"\n") else text + b"\n"
                except (aiohttp.ClientError, TimeoutError) as e:
                    log.debug("engine metrics unavailable (%s): %s", path, e)
        if names:
            engine_text = only_families(engine_text, names)
        return web.Response(body=engine_text + self.state.metrics.exposition(names),
                            headers={"Content-Type": PROM_CONTENT_TYPE})

    async def adapters(self, request: web.Request) -> web.Response:
        if not is_loopback(request.remote):
            return web.json_response({"error": "the adapter report answers only inside the pod; the pod's "
                                      "llmos.dev/adapters annotation carries its summary"}, status=404)
        mgr = self._adapters()
        if mgr is None:
            return web.json_response({"enabled": False, "loaded": [], "failed": []})
        return web.json_response(mgr.report())
