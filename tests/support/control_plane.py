"""Stop and start single components of a local control plane (`kwokctl --runtime binary`) under a running test.

kwokctl v0.8 stops and starts only whole clusters, so a component is restarted the way its runtime started it: the
process's recorded command line (/proc/<pid>/cmdline), its working directory, its log file appended to, and its pid
written back to kwokctl's `pids/<component>.pid` so `kwokctl delete cluster` (`llmos dev down`) still stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")


@dataclass(frozen=True)
class ProcessRecord:
    """How to start a component again: what /proc said about it while it ran."""

    name: str
    argv: tuple[str, ...]
    cwd: str
    env: dict[str, str]


def _pid_alive(pid: int) -> bool:
    """True until the process has fully exited. A SIGKILLed multi-threaded process (every component is Go) shows
    its main thread as a zombie while its other threads still hold its listening sockets, so a zombie counts as
    alive until it is reaped (by us if we started it) or its last thread is gone."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (ProcessLookupError, FileNotFoundError):
        return False
    return not (state == "Z" and threads <= 1)  # a zombie whose threads are all gone holds nothing any more


class ControlPlane:
    """The components of one kwokctl cluster, by name."""

    def __init__(self, cluster_dir: Path):
        self.dir = Path(cluster_dir)
        self.records: dict[str, ProcessRecord] = {}
        self._children: list[subprocess.Popen] = []
        for name in COMPONENTS:
            pid = self.pid(name)
            if pid is not None and _pid_alive(pid):
                self.records[name] = self._record(name, pid)

    def pid(self, name: str) -> int | None:
        try:
            return int((self.dir / "pids" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and _pid_alive(pid)

    @staticmethod
    def _record(name: str, pid: int) -> ProcessRecord:
        argv = tuple(a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a)
        env = dict(line.split(b"=", 1) for line in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                   if b"=" in line)
        return ProcessRecord(name, argv, os.readlink(f"/proc/{pid}/cwd"),
                             {k.decode(): v.decode() for k, v in env.items()})

    def stop(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
        """Signal the component and wait until it is gone (SIGKILL by default: a crash, not a shutdown)."""
        pid = self.pid(name)
        if pid is None or not _pid_alive(pid):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} (pid {pid}) did not exit after signal {sig}")
            time.sleep(0.05)

    def start(self, name: str, attempts: int = 10) -> int:
        """Start the component again from its record; returns the new pid. A start that exits at once (its port not
        yet free) is tried again."""
        record = self.records[name]
        for _ in range(attempts):
            log = (self.dir / "logs" / f"{name}.log").open("ab")
            proc = subprocess.Popen(list(record.argv), cwd=record.cwd, env=record.env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            self._children.append(proc)
            (self.dir / "pids" / f"{name}.pid").write_text(str(proc.pid))
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                return proc.pid  # still running: started
        raise RuntimeError(f"{name} exited at once {attempts} times; see {self.dir / 'logs' / (name + '.log')}")

    def restart(self, name: str, down_for: float = 0.0) -> int:
        self.stop(name)
        time.sleep(down_for)
        return self.start(name)

    def heal(self) -> list[str]:
        """Start every recorded component that is not running (kube-controller-manager and kube-scheduler exit on
        their own when they lose their leader lease while the API server is away). Returns what was started."""
        started = []
        for name in COMPONENTS:
            if name in self.records and not self.alive(name):
                self.start(name)
                started.append(name)
        return started
