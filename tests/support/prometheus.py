"""A real Prometheus for the tests (Debian's package, `make tools`): scrapes the given targets every second, keeps
its data in a temporary directory, answers on a free loopback port; stopped at the end."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from tests.support.ports import free_port

SCRAPE_SECONDS = 1


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, list[str]]):
        """``targets``: job → ["127.0.0.1:port", ...] (each scraped at /metrics)."""
        self.binary = shutil.which("prometheus")
        if self.binary is None:
            raise RuntimeError("no prometheus: run `make tools`")
        self.workdir, self.targets, self.port = workdir, targets, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s"},
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]}
                                     for job, t in self.targets.items()]}
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(self.workdir / "prometheus.log").open("w"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prometheus did not start: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
