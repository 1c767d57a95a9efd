"""How a key's limit holds across replicas: a key limited to 600 requests/min, offered 1,200/min for a minute against
3 replicas, in four set-ups side by side (one run, concurrently, each with its own key):

- store / share: limits kept in a shared Valkey/Redis (exact) or each replica enforcing its share (1/3) alone;
- per-request / per-connection: a load balancer that spreads each request over the replicas (an L7 gateway), or one
  pooled keep-alive connection that stays on one replica (kube-proxy balances connections, not requests).

Each replica is the fake engine (tests/support/fake_engine.py: Starlette on uvicorn, like vLLM) with the runtime's
real guard in front (keys, limits) — the limit does not depend on the engine. Goal (issue 20): 600 ± 10 %.

    .venv/bin/python bench/limits_bench.py [--seconds 60] [--rpm 600] [--offered 1200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmos_runtime.keys import generate_key, key_hash, table_json  # noqa: E402
from tests.support.runtime_proc import free_port  # noqa: E402
from tests.support.valkey import Valkey  # noqa: E402


def start_replica(root: Path, name: str, table: dict, store: str | None) -> tuple[subprocess.Popen, str]:
    guard = root / name
    guard.mkdir(parents=True)
    (guard / "serving").touch()
    (guard / "keys.json").write_text(json.dumps(table))
    port = free_port()
    env = {**os.environ, "LLMOS_GUARD_DIR": str(guard), "LLMOS_GUARD_TOKEN": secrets.token_hex(8),
           "LLMOS_GUARD_KEYS": "required", "LLMOS_GUARD_SERVED": "tiny", "PYTHONPATH": str(REPO / "runtime")}
    if store:
        env["LLMOS_LIMITS_STORE"] = store
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "support" / "fake_engine.py"), "--port", str(port),
                             "--served-model-name", "tiny", "--chunk-delay", "0.001",
                             "--middleware", "llmos_runtime.guard.InferenceOnly"], env=env,
                            stdout=subprocess.DEVNULL, stderr=(guard / "log").open("w"))
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


async def offer(urls: list[str], key: str, per_connection: bool, per_minute: float, seconds: float) -> dict:
    """Open loop: requests at exact times, whatever the answers take."""
    counts: dict[str, int] = {}
    auth = {"Authorization": f"Bearer {key}"}
    conn = aiohttp.TCPConnector(limit=1 if per_connection else 100)
    async with aiohttp.ClientSession(connector=conn, headers=auth) as s:
        async def one(url: str) -> None:
            try:
                async with s.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1}) as r:
                    await r.read()
                    counts[str(r.status)] = counts.get(str(r.status), 0) + 1
            except aiohttp.ClientError as e:
                counts[type(e).__name__] = counts.get(type(e).__name__, 0) + 1

        tasks, start, n = [], time.monotonic(), int(per_minute * seconds / 60)
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i * 60 / per_minute - time.monotonic()))
            url = urls[0] if per_connection else urls[i % len(urls)]
            tasks.append(asyncio.create_task(one(url)))
        await asyncio.gather(*tasks)
    return counts


async def main_async(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="limits-bench-"))
    store = Valkey(root / "valkey").start()
    procs: list[subprocess.Popen] = []
    setups = {}
    try:
        for mode in ("store", "share"):
            for routing in ("per-request", "per-connection"):
                key = generate_key()
                table = table_json([{"id": f"bench/{mode}-{routing}", "hash": key_hash(key),
                                     "limits": {"requestsPerMinute": args.rpm}}], tenant="bench",
                                   replicas={"tiny": 3})
                urls = []
                for r in range(3):
                    p, url = start_replica(root, f"{mode}-{routing}-{r}", table, store.url if mode == "store" else None)
                    procs.append(p)
                    urls.append(url)
                setups[(mode, routing)] = (key, urls)
        await asyncio.gather(*(wait_up(u) for _, urls in setups.values() for u in urls))
        results = await asyncio.gather(*(offer(urls, key, routing == "per-connection", args.offered, args.seconds)
                                         for (mode, routing), (key, urls) in setups.items()))
    finally:
        for p in procs:
            p.terminate()
        store.stop()
    goal = args.rpm * args.seconds / 60
    print(f"key limited to {args.rpm}/min, offered {args.offered}/min for {args.seconds:.0f} s, 3 replicas "
          f"(goal {goal:.0f} ± 10 %):")
    for ((mode, routing), _), counts in zip(setups.items(), results, strict=True):
        ok = counts.get("200", 0)
        other = {k: v for k, v in counts.items() if k not in ("200", "429")}
        print(f"  {mode:5s} {routing:14s}  admitted {ok:5d} ({100 * ok / goal:5.1f} % of the limit), "
              f"refused 429: {counts.get('429', 0)}, other: {other}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--rpm", type=float, default=600)
    p.add_argument("--offered", type=float, default=1200)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
