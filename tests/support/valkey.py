"""A real Valkey/Redis for the tests (Debian's package, `make tools`): started on a free loopback port with its own
directory, no persistence, optionally a password; stopped at the end."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.ports import free_port


class Valkey:
    def __init__(self, workdir: Path, password: str | None = None):
        self.binary = shutil.which("valkey-server") or shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("no valkey-server or redis-server: run `make tools`")
        self.port, self.password, self.workdir = free_port(), password, workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> Valkey:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--protected-mode", "yes"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=(self.workdir / "server.log").open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis did not listen on {self.port}: {(self.workdir / 'server.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
