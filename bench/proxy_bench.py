"""The runtime's data path under streaming load: direct to the engine vs through the runtime's data path, one run.

The runtime no longer proxies: vLLM serves the pod's API port itself, behind the runtime's guard middleware
(llmos_runtime.guard, loaded with ``--middleware``). This bench starts two identical fake engines built like vLLM's
server (tests/support/fake_engine.py: Starlette on uvicorn/uvloop, SSE chunks at a fixed per-token step), one plain
("direct") and one exactly as the runtime starts it (guard middleware, marker directory, token: "via runtime"). A
client process opens N concurrent streaming /v1/completions against each, alternating rounds, and prints side by side:

    TTFB p50 / p99, events/s, engine CPU µs per event, and the data path's own CPU µs per event
    (guarded engine's CPU per event minus the plain engine's)

Goal (issue 10): p99 TTFB within 10 % of direct and events/s >= 90 % of direct, in the same run.

    .venv/bin/python bench/proxy_bench.py [--streams 400] [--tokens 80] [--step 0.025] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_ENGINE = ROOT / "tests" / "support" / "fake_engine.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_client(url: str, streams: int, tokens: int) -> None:
    """Prints one JSON line: per-stream TTFB, event count, wall time."""
    import aiohttp
    import uvloop

    async def one(session: aiohttp.ClientSession, t0: float, out: list) -> None:
        async with session.post(url + "/v1/completions",
                                json={"model": "m", "prompt": "x", "max_tokens": tokens, "stream": True}) as r:
            ttfb = None
            events = 0
            buf = b""
            async for chunk in r.content.iter_any():
                if ttfb is None:
                    ttfb = time.monotonic() - t0
                buf += chunk
                *done, buf = buf.split(b"\n\n")
                events += sum(1 for e in done if e.startswith(b"data: ") and e != b"data: [DONE]")
            out.append((ttfb, events, r.status))

    async def main() -> None:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
            out: list = []
            t0 = time.monotonic()
            await asyncio.gather(*(one(s, t0, out) for _ in range(streams)))
            wall = time.monotonic() - t0
        print(json.dumps({"results": out, "wall": wall}))

    uvloop.run(main())


# ---- driver -----------------------------------------------------------------------------------------------------
def _engine(port: int, step: float, guarded: bool, guard_dir: str) -> subprocess.Popen:
    """A fake engine; ``guarded``: started the way the runtime starts vLLM (guard middleware, markers, token)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "runtime"), str(ROOT)]))
    args = [sys.executable, str(FAKE_ENGINE), "--port", str(port), "--chunk-delay", str(step),
            "--served-model-name", "m"]
    if guarded:
        sys.path[:0] = [str(ROOT / "runtime")]
        from llmos_runtime.config import GUARD_MIDDLEWARE
        from llmos_runtime.guard import ENV_DIR, ENV_TOKEN, SERVING_MARKER

        Path(guard_dir, SERVING_MARKER).touch()  # the replica is ready
        env.update({ENV_DIR: guard_dir, ENV_TOKEN: "bench-token"})
        args += ["--middleware", GUARD_MIDDLEWARE]
    return subprocess.Popen(args, env=env)


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def _round(url: str, streams: int, tokens: int, watch: list[int]) -> dict:
    before = [cpu_seconds(p) for p in watch]
    out = subprocess.run([sys.executable, __file__, "client", url, str(streams), str(tokens)], capture_output=True,
                         text=True, check=True, env=dict(os.environ))
    after = [cpu_seconds(p) for p in watch]
    data = json.loads(out.stdout)
    results = data["results"]
    bad = [r for r in results if r[2] != 200 or r[0] is None]
    ttfb = sorted(r[0] for r in results if r[0] is not None)
    events = sum(r[1] for r in results)
    return {
        "ttfb": ttfb, "events": events, "wall": data["wall"], "errors": len(bad),
        "cpu": [a - b for a, b in zip(after, before, strict=True)],
    }


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        run_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=400)
    p.add_argument("--tokens", type=int, default=80, help="SSE events per stream")
    p.add_argument("--step", type=float, default=0.025, help="seconds between two events of one stream")
    p.add_argument("--rounds", type=int, default=4, help="rounds of (direct, via runtime), the order alternating")
    args = p.parse_args()

    engine_port, proxy_port = free_port(), free_port()
    guard_dir = tempfile.mkdtemp(prefix="llmos-bench-guard-")
    engine = _engine(engine_port, args.step, False, guard_dir)
    proxy = _engine(proxy_port, args.step, True, guard_dir)
    try:
        _wait_port(engine_port)
        _wait_port(proxy_port)
        runs: dict[str, list[dict]] = {"direct": [], "proxy": []}
        # warm-up (imports, connection pools)
        _round(f"http://127.0.0.1:{proxy_port}", 20, 4, [engine.pid, proxy.pid])
        _round(f"http://127.0.0.1:{engine_port}", 20, 4, [engine.pid, proxy.pid])
        for i in range(args.rounds):
            # alternate which goes first: on a shared machine the load drifts between the two halves of a round
            order = [("direct", engine_port), ("proxy", proxy_port)]
            for name, port in order if i % 2 == 0 else order[::-1]:
                runs[name].append(_round(f"http://127.0.0.1:{port}", args.streams, args.tokens,
                                         [engine.pid, proxy.pid]))
    finally:
        for proc in (proxy, engine):
            proc.terminate()
            proc.wait(10)

    def summary(rs: list[dict]) -> dict:
        ttfb = sorted(x for r in rs for x in r["ttfb"])
        events = sum(r["events"] for r in rs)
        wall = sum(r["wall"] for r in rs)
        return {
            "p50": _pct(ttfb, 0.50) * 1000, "p99": _pct(ttfb, 0.99) * 1000, "eps": events / wall,
            "errors": sum(r["errors"] for r in rs), "events": events,
            "plain_us": sum(r["cpu"][0] for r in rs) / max(events, 1) * 1e6,
            "guarded_us": sum(r["cpu"][1] for r in rs) / max(events, 1) * 1e6,
        }

    d, x = summary(runs["direct"]), summary(runs["proxy"])
    ideal = args.streams * args.tokens / (args.tokens * args.step)
    print(f"\n{args.streams} concurrent SSE streams x {args.tokens} events, {args.step * 1000:.0f} ms step "
          f"(ideal {ideal:,.0f} events/s), {args.rounds} round(s) each, {os.cpu_count()} CPUs")
    print(f"{'':28}{'direct':>12}{'via runtime':>14}{'ratio':>9}")
    print(f"{'TTFB p50 (ms)':28}{d['p50']:12.1f}{x['p50']:14.1f}{x['p50'] / d['p50']:9.2f}")
    print(f"{'TTFB p99 (ms)':28}{d['p99']:12.1f}{x['p99']:14.1f}{x['p99'] / d['p99']:9.2f}")
    print(f"{'events/s':28}{d['eps']:12,.0f}{x['eps']:14,.0f}{x['eps'] / d['eps']:9.2f}")
    print(f"{'errors':28}{d['errors']:12d}{x['errors']:14d}")
    print(f"{'engine CPU µs/event':28}{d['plain_us']:12.1f}{x['guarded_us']:14.1f}")
    print(f"{'data path CPU µs/event':28}{'-':>12}{x['guarded_us'] - d['plain_us']:14.1f}"
          "   (guarded engine minus plain engine; the guard runs once per request)")
    ok = x["p99"] <= 1.10 * d["p99"] and x["eps"] >= 0.90 * d["eps"] and x["errors"] == 0
    print(f"goal (p99 TTFB within 10 %, events/s >= 90 % of direct): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
