"""A small local round-robin load balancer for the zero-failed-requests tests (loopback only).

By default it behaves like a Kubernetes Service fronted by a retrying gateway: it health-checks every backend's
``/readyz`` (every ``check_interval`` s) and routes only to backends that answered 200 last time; a request that a
backend refused before doing any work (connection refused, or HTTP 503 — what a draining llmos runtime answers) is
retried on the next ready backend. A request that reached a backend is never retried (it may not be idempotent): if
it fails, the client sees the failure.

``propagation_delay`` and ``retry=False`` make it a stand-in for endpoint propagation behind a plain L4 path
(kube-proxy, most gateways for a POST): a backend that turned not ready keeps receiving requests for
``propagation_delay`` s more (the time endpoint removal takes to reach the load balancer), and nothing is retried:
a refusal reaches the client. Its upstream connections are pooled (keep-alive), like a gateway's.

Runs in a thread with its own event loop so a synchronous test can drive processes around it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

NO_BACKEND_HEADER = "X-Test-No-Backend"
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length",
        "proxy-connection"}


@dataclass
class Backend:
    name: str
    api: str
    health: str
    ready: bool = False
    removed: bool = False
    served: int = 0
    refused: int = 0
    unready_since: float | None = None  # when its /readyz last turned non-200
    closed: int = 0  # answers that carried Connection: close


@dataclass
class LBStats:
    forwarded: int = 0
    retried: int = 0
    no_backend_waits: int = 0
    errors: list[str] = field(default_factory=list)


class RoundRobinLB:
    def __init__(self, check_interval: float = 0.2, retry_deadline: float = 30.0, *, propagation_delay: float = 0.0,
                 retry: bool = True):
        self.check_interval = check_interval
        self.retry_deadline = retry_deadline
        self.propagation_delay = propagation_delay
        self.retry = retry
        self.backends: list[Backend] = []
        self.stats = LBStats()
        self.port: int | None = None
        self._rr = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- control (any thread) ----
    def add(self, name: str, api: str, health: str) -> None:
        with self._lock:
            self.backends.append(Backend(name, api, health))

    def remove(self, name: str) -> None:
        with self._lock:
            for b in self.backends:
                if b.name == name:
                    b.removed = True
            self.backends = [b for b in self.backends if not b.removed]

    def ready_names(self) -> list[str]:
        with self._lock:
            return [b.name for b in self.backends if b.ready]

    def routed_names(self) -> list[str]:
        """Backends requests still go to: ready ones, and those whose removal has not propagated yet."""
        now = time.monotonic()
        with self._lock:
            return [b.name for b in self.backends if self._routable(b, now)]

    def _routable(self, b: Backend, now: float) -> bool:
        return b.ready or (b.unready_since is not None and now - b.unready_since < self.propagation_delay)

    def start(self) -> RoundRobinLB:
        self._thread = threading.Thread(target=self._run, name="test-lb", daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("load balancer did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ---- the loop ----
    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        self._check_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        checker = asyncio.create_task(self._check_loop())
        self._started.set()
        await self._stop.wait()
        checker.cancel()
        await runner.cleanup()
        await self._session.close()
        await self._check_session.close()

    async def _check_one(self, b: Backend) -> None:
        try:
            async with self._check_session.get(b.health + "/readyz") as r:
                ready = r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ready = False
        if b.ready and not ready:
            b.unready_since = time.monotonic()
        b.ready = ready

    async def _check_loop(self) -> None:
        while True:
            with self._lock:
                backends = list(self.backends)
            await asyncio.gather(*(self._check_one(b) for b in backends))
            await asyncio.sleep(self.check_interval)

    def _pick(self, exclude: set[str]) -> Backend | None:
        now = time.monotonic()
        with self._lock:
            ready = [b for b in self.backends if self._routable(b, now) and b.name not in exclude]
            if not ready:
                ready = [b for b in self.backends if self._routable(b, now)]
            if not ready:
                return None
            self._rr += 1
            return ready[self._rr % len(ready)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        deadline = time.monotonic() + self.retry_deadline
        tried: set[str] = set()
        while True:
            b = self._pick(tried)
            if b is None and not self.retry:  # the endpoint is gone: this request would go to another replica
                return web.Response(status=503, text="no backend", headers={NO_BACKEND_HEADER: "1"})
            if b is None:
                if time.monotonic() > deadline:
                    return web.Response(status=503, text="no ready backend")
                self.stats.no_backend_waits += 1
                await asyncio.sleep(0.05)
                continue
            try:
                upstream = await self._session.request(
                    request.method, b.api + request.rel_url.path_qs, headers=headers, data=body or None
                )
            except aiohttp.ClientConnectorError:
                if not self.retry:
                    b.refused += 1
                    return web.Response(status=502, text=f"{b.name} refused the connection")
                b.ready = False  # connection refused: nothing was sent; safe to retry elsewhere
                b.refused += 1
                tried.add(b.name)
                self.stats.retried += 1
                continue
            if upstream.status == 503 and self.retry and time.monotonic() < deadline:
                upstream.close()  # refused before doing any work: retry elsewhere
                b.ready = False
                b.refused += 1
                tried.add(b.name)
                self.stats.retried += 1
                continue
            break
        b.served += 1
        self.stats.forwarded += 1
        if upstream.headers.get("Connection", "").lower() == "close":
            b.closed += 1
        try:
            resp = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            resp.headers["X-Test-Backend"] = b.name
            await resp.prepare(request)
            # An upstream failure propagates (the client then sees a broken response, counted as failed); only a
            # client that left (the test stopping its load) ends the copy quietly.
            async for chunk in upstream.content.iter_any():
                try:
                    await resp.write(chunk)
                except ConnectionResetError:
                    return resp
            try:
                await resp.write_eof()
            except ConnectionResetError:
                pass
            return resp
        finally:
            upstream.close()
