"""The guard's own CPU per streamed event, in process (no network, no engine): an ASGI app that streams N events with a
no-op ``send``, called bare and through ``llmos_runtime.guard.InferenceOnly``, alternating, one run.

Since issue 19 the guard wraps ``send`` (and ``receive``) of each inference request, to know whether the request waits
on the engine or on its client (the engine watchdog's input); this measures what that costs per event. The network
bench of the whole data path is proxy_bench.py, whose per-event differences of this size are within its noise.

    .venv/bin/python bench/guard_bench.py [--events 2000] [--requests 20] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from llmos_runtime.guard import SERVING_MARKER, InferenceOnly


def make_app(events: int):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = {"type": "http.response.body", "body": b"data: x\n\n", "more_body": True}
        for _ in range(events):
            await send(chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def receive():
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def send(_message):
    pass


async def per_event(handler, events: int, requests: int) -> float:
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    t = time.perf_counter()
    for _ in range(requests):
        await handler(scope, receive, send)
    return (time.perf_counter() - t) / (events * requests) * 1e6


async def main(args: argparse.Namespace) -> None:
    app = make_app(args.events)
    guard_dir = tempfile.mkdtemp(prefix="guard-bench-")
    (Path(guard_dir) / SERVING_MARKER).touch()
    guard = InferenceOnly(app, guard_dir=guard_dir, token="bench")
    bare, guarded = [], []
    for _ in range(args.rounds):
        bare.append(await per_event(app, args.events, args.requests))
        guarded.append(await per_event(guard, args.events, args.requests))
    b, g = statistics.median(bare), statistics.median(guarded)
    print(f"{args.requests} requests x {args.events} events, {args.rounds} alternating rounds (medians)")
    print(f"bare app        {b:.3f} µs/event")
    print(f"through guard   {g:.3f} µs/event")
    print(f"guard's own     {g - b:.3f} µs/event")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--rounds", type=int, default=7)
    ns = p.parse_args()
    try:
        import uvloop

        uvloop.run(main(ns))
    except ImportError:
        asyncio.run(main(ns))
