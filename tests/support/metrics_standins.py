"""Stand-ins for model pods' health ports, as the operator's autoscaler reads them: ``GET /metrics`` answers vLLM's
three gauges (``vllm:num_requests_waiting``, ``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``) with the
values a test sets per address, honouring ``name[]`` like prometheus_client; optionally padded with other series to
the size of a real engine's full answer. One listening socket per loopback address (``127.x.y.z:<port>``), each
address a "pod IP"; every request is recorded (address, query).

A stand-in, not an engine: where a test needs many replicas of a load it controls (the autoscaler's unit and
integration tests, bench/autoscale.py), a real vLLM per replica cannot run on this machine. Loopback only.

In a thread (``StandIns(port).start()``) or as a process of its own (``python -m tests.support.metrics_standins
--port P --count N --prefix 127.61``: prints ``ready`` once listening; values from the file ``--values`` if given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from pathlib import Path

from aiohttp import web

NAMES = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")
KEYS = {"waiting": NAMES[0], "running": NAMES[1], "kv_cache": NAMES[2]}


def exposition(values: dict[str, float], names: list[str], padding: int = 0) -> bytes:
    """vLLM-like text: HELP/TYPE and one series per gauge (model_name and engine labels), filtered by ``names``;
    with ``padding``, the whole answer whatever is named (as vLLM 0.32 itself, or a runtime that does not filter,
    answers): the gauges and ``padding`` bytes of histogram series."""
    if padding:
        names = []
    out = []
    for key, name in KEYS.items():
        if names and name not in names:
            continue
        out.append(f"# HELP {name} stand-in\n# TYPE {name} gauge\n"
                   f'{name}{{engine="0",model_name="m"}} {float(values.get(key, 0.0))}\n')
    text = "".join(out).encode()
    if padding:
        line = b'vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 12.0\n'
        text += line * (padding // len(line))
    return text


class StandIns:
    def __init__(self, port: int, padding: int = 0):
        self.port, self.padding = port, padding
        self.values: dict[str, dict[str, float]] = {}  # address → gauges
        self.status: dict[str, int] = {}  # address → HTTP status to answer instead (tests of failures)
        self.requests: list[tuple[str, str]] = []  # (address, query string)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _readyz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ready": True})

    async def _metrics(self, request: web.Request) -> web.Response:
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        address = sock[0] if sock else ""
        self.requests.append((address, request.query_string))
        if address in self.status:
            return web.Response(status=self.status[address])
        body = exposition(self.values.get(address, {}), request.query.getall("name[]", []), self.padding)
        return web.Response(body=body, content_type="text/plain")

    async def serve(self, addresses: list[str]) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        for address in addresses:
            await web.TCPSite(self._runner, address, self.port, reuse_address=True).start()

    # In a thread ---------------------------------------------------------------------------------------------------

    def start(self, addresses: list[str]) -> StandIns:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve(addresses))
            self._ready.set()
            self._loop.run_forever()

        threading.Thread(target=run, name="metrics-standins", daemon=True).start()
        if not self._ready.wait(30):
            raise RuntimeError("the stand-ins did not start")
        return self

    def close(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)


def addresses(count: int, prefix: str = "127.61") -> list[str]:
    """``count`` loopback addresses ``<prefix>.<i // 250>.<i % 250 + 1>``."""
    return [f"{prefix}.{i // 250}.{i % 250 + 1}" for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--prefix", default="127.61")
    parser.add_argument("--padding", type=int, default=0, help="bytes of other series in a full answer")
    parser.add_argument("--values", type=Path, help="JSON {address: {waiting, running, kv_cache}}, read at start")
    args = parser.parse_args(argv)
    standins = StandIns(args.port, args.padding)
    if args.values:
        standins.values = json.loads(args.values.read_text())

    async def run() -> None:
        await standins.serve(addresses(args.count, args.prefix))
        print("ready", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
