"""Supervise the vLLM OpenAI-compatible server: start it on a loopback port, wait until it is healthy, stop it."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from .termination import KILL_WAIT_SECONDS

log = logging.getLogger(__name__)


class EngineExited(Exception):
    def __init__(self, code: int):
        super().__init__(f"engine exited with code {code}")
        self.code = code


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the engine stops if the runtime is killed
    except OSError:
        pass


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process (not a zombie), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None  # exited: only its entry is left for its parent to reap
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """All live descendants of ``pid`` as (pid, start time), deepest first (Linux /proc)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st[0], []).append((int(entry.name), st[1]))
    out: list[tuple[int, int]] = []

    def walk(p: int) -> None:
        for c in children.get(p, []):
            walk(c[0])
            out.append(c)

    walk(pid)
    return out


def kill_same(procs: list[tuple[int, int]], wait: float = 0.0) -> list[int]:
    """SIGKILL each (pid, start time) that is still the same process (pids may have been reused), then wait up to
    ``wait`` seconds until they are gone (a SIGKILL is not instant: the process still runs while it exits). Returns
    the pids still alive."""
    for pid, start in procs:
        st = _stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + wait
    while True:
        alive = [pid for pid, start in procs if (st := _stat(pid)) is not None and st[1] == start]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


class Engine:
    def __init__(self, cmd: Sequence[str], env: dict[str, str], port: int, *, host: str = "127.0.0.1",
                 headers: dict[str, str] | None = None):
        self.cmd = list(cmd)
        self.env = env
        self.port = port
        # the runtime reaches the engine over loopback when it listens on every address
        self.url = f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"
        self.headers = dict(headers or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None

    async def start(self) -> None:
        log.info("starting engine: %s", " ".join(self.cmd))
        self.started_at = time.monotonic()
        # stdout/stderr are inherited: the engine's log is the container's log. Same process group as the runtime,
        # so that killing the group (test teardown, a terminal) takes the engine and its workers along.
        self.proc = await asyncio.create_subprocess_exec(*self.cmd, env=self.env, preexec_fn=_die_with_parent)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def wait_exit(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def wait_healthy(self, poll: float = 0.5, timeout: float | None = None) -> float:
        """Poll the engine's /health until 200; raises EngineExited if it dies first. Returns seconds waited."""
        assert self.proc is not None and self.started_at is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if self.proc.returncode is not None:
                    raise EngineExited(self.proc.returncode)
                try:
                    async with session.get(self.url + "/health", headers=self.headers) as r:
                        if r.status == 200:
                            return time.monotonic() - self.started_at
                except (TimeoutError, aiohttp.ClientError):
                    pass
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"engine not healthy after {timeout:.0f}s")
                try:
                    await asyncio.wait_for(self.proc.wait(), poll)
                except TimeoutError:
                    pass

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM the engine, wait up to ``timeout`` s, then SIGKILL it and every process it started."""
        if self.proc is None or self.proc.returncode is not None:
            return self.returncode
        pid = self.proc.pid
        tree = descendants(pid)
        log.info("stopping engine (pid %d)", pid)
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
            log.info("engine exited with code %s", code)
        except TimeoutError:
            log.warning("engine did not exit within %.0fs; killing it", timeout)
            code = None
        if code is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        if code is None:
            code = await self.proc.wait()
        # Leftovers (workers whose parent has gone) are killed in any case, and the runtime returns only once they
        # are gone (a SIGKILLed process runs on while it exits): the engine never outlives its runtime.
        alive = await asyncio.to_thread(kill_same, tree, KILL_WAIT_SECONDS)
        if alive:
            log.warning("engine processes %s still alive %g s after SIGKILL", alive, KILL_WAIT_SECONDS)
        return code
