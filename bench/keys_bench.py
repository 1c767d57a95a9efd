"""What API keys cost in the guard, side by side in one run: the guard without keys vs the guard enforcing a table of
10,000 keys (sha256 of the bearer token, a dictionary lookup, the body read once and handed on, usage asked for and
metered; no limits, so no store round trip).

1. In process (no network, no engine; like guard_bench.py): CPU per request of a completion (a 200-byte JSON body,
   a JSON answer with usage), and the metering's CPU per streamed event (events scanned for usage).
2. Over the network, like proxy_bench.py: two fake engines built like vLLM's server, both behind the guard, one
   without keys and one with the 10,000 keys; N concurrent streaming clients (alternating rounds): TTFB p50/p99 and
   events/s.

Goals (issue 20): CPU per request ≤ 50 µs, p99 TTFB within 5 %, events/s ≥ 95 % of the guard without keys.

    .venv/bin/python bench/keys_bench.py [--keys 10000] [--streams 200] [--tokens 80] [--step 0.025] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT), str(ROOT / "bench")]

from proxy_bench import _pct, _wait_port, cpu_seconds, free_port  # noqa: E402

from llmos_runtime.guard import SERVING_MARKER, InferenceOnly  # noqa: E402
from llmos_runtime.keys import generate_key, key_hash, table_json  # noqa: E402

BODY = json.dumps({"model": "m", "prompt": "Say something about the weather in Paris in one sentence, please.",
                   "max_tokens": 32, "temperature": 0.2}).encode()
ANSWER = json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "m",
                     "choices": [{"index": 0, "text": "It is sunny.", "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 14, "completion_tokens": 5, "total_tokens": 19}}).encode()


def write_table(guard_dir: Path, n: int) -> str:
    keys = [generate_key() for _ in range(n)]
    table = table_json([{"id": f"bench/k{i}", "hash": key_hash(k)} for i, k in enumerate(keys)], tenant="bench")
    (guard_dir / "keys.json").write_text(json.dumps(table))
    return keys[n // 2]


# ---- 1. in process -----------------------------------------------------------------------------------------------

def answer_app():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": ANSWER})
    return app


def stream_app(events: int):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        chunk = {"type": "http.response.body", "body": b'data: {"choices":[{"text":"x"}]}\n\n', "more_body": True}
        for _ in range(events):
            await send(chunk)
        await send({"type": "http.response.body", "more_body": True, "body":
                    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
    return app


async def receive():
    return {"type": "http.request", "body": BODY, "more_body": False}


async def send(_message):
    pass


async def per_call(handler, scope, calls: int) -> float:
    t = time.process_time()
    for _ in range(calls):
        await handler(scope, receive, send)
    return (time.process_time() - t) / calls * 1e6


def guards(app, n_keys: int) -> tuple[InferenceOnly, InferenceOnly, str]:
    plain_dir, keyed_dir = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    for d in (plain_dir, keyed_dir):
        (d / SERVING_MARKER).touch()
    key = write_table(keyed_dir, n_keys)
    os.environ.pop("LLMOS_GUARD_KEYS", None)
    plain = InferenceOnly(app, guard_dir=str(plain_dir), token="t")
    os.environ.update(LLMOS_GUARD_KEYS="required", LLMOS_GUARD_SERVED="m")
    keyed = InferenceOnly(app, guard_dir=str(keyed_dir), token="t")
    os.environ.pop("LLMOS_GUARD_KEYS")
    return plain, keyed, key


async def in_process(args) -> None:
    plain, keyed, key = guards(answer_app(), args.keys)
    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]}
    await per_call(keyed, scope, 100)  # loads the table
    a, b = [], []
    for _ in range(7):
        a.append(await per_call(plain, scope, 3000))
        b.append(await per_call(keyed, scope, 3000))
    pa, pb = statistics.median(a), statistics.median(b)
    print("in process, a completion (median of 7 alternating rounds of 3,000):")
    print(f"  guard without keys          {pa:7.2f} µs CPU/request")
    print(f"  guard with {args.keys:,} keys     {pb:7.2f} µs CPU/request")
    print(f"  keys' own cost              {pb - pa:7.2f} µs CPU/request (goal ≤ 50)")
    events = 2000
    plain, keyed, key = guards(stream_app(events), args.keys)
    scope = {**scope, "headers": [(b"authorization", f"Bearer {key}".encode())]}
    await per_call(keyed, scope, 2)
    a, b = [], []
    for _ in range(7):
        a.append(await per_call(plain, scope, 20) / events)
        b.append(await per_call(keyed, scope, 20) / events)
    pa, pb = statistics.median(a), statistics.median(b)
    print(f"  metering per streamed event {pb - pa:7.3f} µs CPU/event ({pa:.3f} without keys, {pb:.3f} with)")


# ---- 2. over the network -----------------------------------------------------------------------------------------

def run_client(url: str, streams: int, tokens: int, key: str) -> None:
    import aiohttp
    import uvloop

    async def one(session, t0: float, out: list) -> None:
        async with session.post(url + "/v1/completions",
                                json={"model": "m", "prompt": "x", "max_tokens": tokens, "stream": True}) as r:
            ttfb, events, buf = None, 0, b""
            async for chunk in r.content.iter_any():
                if ttfb is None:
                    ttfb = time.monotonic() - t0
                buf += chunk
                *done, buf = buf.split(b"\n\n")
                events += sum(1 for e in done if e.startswith(b"data: ") and e != b"data: [DONE]")
            out.append((ttfb, events, r.status))

    async def main() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         headers={"Authorization": f"Bearer {key}"},
                                         timeout=aiohttp.ClientTimeout(total=600)) as s:
            out: list = []
            t0 = time.monotonic()
            await asyncio.gather(*(one(s, t0, out) for _ in range(streams)))
            print(json.dumps({"results": out, "wall": time.monotonic() - t0}))

    uvloop.run(main())


def engine(port: int, step: float, guard_dir: Path, keys: bool) -> subprocess.Popen:
    (guard_dir / SERVING_MARKER).touch()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]),
               LLMOS_GUARD_DIR=str(guard_dir), LLMOS_GUARD_TOKEN="bench-token")
    if keys:
        env.update(LLMOS_GUARD_KEYS="required", LLMOS_GUARD_SERVED="m")
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "fake_engine.py"), "--port", str(port),
                             "--chunk-delay", str(step), "--served-model-name", "m",
                             "--middleware", "llmos_runtime.guard.InferenceOnly"], env=env)


def one_round(url: str, args, key: str, pids: list[int]) -> dict:
    before = [cpu_seconds(p) for p in pids]
    out = subprocess.run([sys.executable, __file__, "client", url, str(args.streams), str(args.tokens), key],
                         capture_output=True, text=True, check=True)
    after = [cpu_seconds(p) for p in pids]
    data = json.loads(out.stdout)
    res = data["results"]
    return {"ttfb": sorted(r[0] for r in res if r[0] is not None), "events": sum(r[1] for r in res),
            "wall": data["wall"], "errors": sum(1 for r in res if r[2] != 200),
            "cpu": [a - b for a, b in zip(after, before, strict=True)]}


def network(args) -> None:
    plain_dir, keyed_dir = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    key = write_table(keyed_dir, args.keys)
    ports = free_port(), free_port()
    procs = [engine(ports[0], args.step, plain_dir, False), engine(ports[1], args.step, keyed_dir, True)]
    runs: dict[str, list[dict]] = {"plain": [], "keys": []}
    try:
        for p in ports:
            _wait_port(p)
        pids = [p.pid for p in procs]
        for _name, port in (("plain", ports[0]), ("keys", ports[1])):  # warm-up
            one_round(f"http://127.0.0.1:{port}", argparse.Namespace(streams=20, tokens=4), key, pids)
        for i in range(args.rounds):
            order = [("plain", ports[0]), ("keys", ports[1])]
            for name, port in order if i % 2 == 0 else order[::-1]:
                runs[name].append(one_round(f"http://127.0.0.1:{port}", args, key, pids))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)

    def summary(rs: list[dict], which: int) -> dict:
        ttfb = sorted(x for r in rs for x in r["ttfb"])
        events, wall = sum(r["events"] for r in rs), sum(r["wall"] for r in rs)
        requests = args.streams * len(rs)
        return {"p50": _pct(ttfb, 0.5) * 1000, "p99": _pct(ttfb, 0.99) * 1000, "eps": events / wall,
                "errors": sum(r["errors"] for r in rs),
                "cpu_req": sum(r["cpu"][which] for r in rs) / requests * 1e6}

    p, k = summary(runs["plain"], 0), summary(runs["keys"], 1)
    print(f"\nover the network: {args.streams} concurrent SSE streams x {args.tokens} events, "
          f"{args.step * 1000:.0f} ms "
          f"step, {args.rounds} rounds each, {os.cpu_count()} CPUs")
    print(f"{'':26}{'no keys':>12}{f'{args.keys:,} keys':>14}{'ratio':>9}")
    print(f"{'TTFB p50 (ms)':26}{p['p50']:12.1f}{k['p50']:14.1f}{k['p50'] / p['p50']:9.3f}")
    print(f"{'TTFB p99 (ms)':26}{p['p99']:12.1f}{k['p99']:14.1f}{k['p99'] / p['p99']:9.3f}")
    print(f"{'events/s':26}{p['eps']:12,.0f}{k['eps']:14,.0f}{k['eps'] / p['eps']:9.3f}")
    print(f"{'errors':26}{p['errors']:12d}{k['errors']:14d}")
    print(f"{'engine CPU µs/request':26}{p['cpu_req']:12.0f}{k['cpu_req']:14.0f}{'':9}"
          f"(difference {k['cpu_req'] - p['cpu_req']:.0f} µs, all of a stream's events included)")
    ok = k["p99"] <= 1.05 * p["p99"] and k["eps"] >= 0.95 * p["eps"] and k["errors"] == 0
    print(f"goal (p99 TTFB within 5 %, events/s ≥ 95 %): {'met' if ok else 'NOT met'}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        run_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--tokens", type=int, default=80)
    p.add_argument("--step", type=float, default=0.025)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    import uvloop

    uvloop.run(in_process(args))
    network(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
