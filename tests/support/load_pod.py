"""A stand-in for a model pod's runtime, for the autoscaling integration tests: it serves what the operator and the
kubelet read of a runtime's health port — ``/healthz``, ``/readyz``, ``/metrics`` with vLLM's three gauges
(tests/support/metrics_standins.py) — with the per-replica load a test writes to a JSON file
(``{"waiting": …, "running": …, "kv_cache": …}``, read at every request), and on SIGTERM turns not ready, "drains"
for ``--drain-seconds`` and exits 0, as the runtime does.

Why a stand-in: these tests start and stop many replicas within seconds; a real vLLM per replica takes minutes and
gigabytes on this machine. The engine tier (tests/engine/test_autoscaling.py) scales real vLLM once. Run by
tests/support/process_kubelet.py (``runner=load_pod_runner(...)``) on the pod's own loopback address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path

from aiohttp import web

from tests.support.metrics_standins import exposition


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--health-port", type=int, required=True)
    parser.add_argument("--load-file", type=Path, required=True)
    parser.add_argument("--drain-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    draining = asyncio.Event()

    def values() -> dict:
        try:
            return json.loads(args.load_file.read_text())
        except (OSError, ValueError):
            return {}

    async def healthz(_r: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(_r: web.Request) -> web.Response:
        return web.json_response({"ready": not draining.is_set()}, status=503 if draining.is_set() else 200)

    async def metrics(r: web.Request) -> web.Response:
        return web.Response(body=exposition(values(), r.query.getall("name[]", [])), content_type="text/plain")

    async def run() -> None:
        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.health_port).start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, draining.set)
        await draining.wait()
        await asyncio.sleep(args.drain_seconds)
        await runner.cleanup()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())


def load_pod_runner(load_dir: Path, drain_seconds: float = 1.0):
    """A ProcessKubelet runner: the stand-in on the pod's address and its container's health port, reading the load
    of its ModelDeployment from ``<load_dir>/<deployment>.json``."""
    import os

    from tests.support.runtime_proc import RuntimeProcess

    repo = Path(__file__).resolve().parents[2]

    def run(pod: dict, ip: str, fsroot: Path) -> RuntimeProcess:
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "runtime"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports") or []}
        deployment = pod["metadata"]["labels"]["llmos.dev/model-deployment"]
        argv = [sys.executable, "-m", "tests.support.load_pod", "--host", ip, "--health-port", str(ports["health"]),
                "--load-file", str(load_dir / f"{deployment}.json"), "--drain-seconds", str(drain_seconds)]
        env = {**os.environ, "PYTHONPATH": str(repo)}
        return RuntimeProcess(argv=argv, env=env, log_path=fsroot / "stand-in.log", port=ports["openai"],
                              health_port=ports["health"], name=pod["metadata"]["name"], host=ip)

    return run


class LoadSplitter(threading.Thread):
    """The total load of each deployment, split over its ready pods (what a load balancer would do), written where
    the stand-ins read it, every 0.3 s."""

    def __init__(self, kubelet, load_dir: Path):
        super().__init__(daemon=True)
        self.kubelet, self.dir = kubelet, load_dir
        self.total: dict[str, dict[str, float]] = {}
        self._halt = threading.Event()
        self._lock = threading.Lock()  # the thread and set() both write

    def set(self, deployment: str, **total: float) -> None:
        self.total[deployment] = total
        self.write()

    def write(self) -> None:
        ready: dict[str, int] = {}
        for e in self.kubelet.endpoints().values():
            if e.ready and not e.deleting:
                owner = e.pod.rsplit("-", 2)[0]
                ready[owner] = ready.get(owner, 0) + 1
        with self._lock:
            for deployment, total in list(self.total.items()):
                per = {k: v / max(ready.get(deployment, 0), 1) for k, v in total.items()}
                tmp = self.dir / f".{deployment}.json"
                tmp.write_text(json.dumps(per))
                tmp.rename(self.dir / f"{deployment}.json")

    def run(self) -> None:
        while not self._halt.wait(0.3):
            self.write()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
