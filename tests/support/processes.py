"""Stopping the processes tests start (operators, benches' operators): politely first, then for sure."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen | None, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; waits for the process either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill(proc: subprocess.Popen | None) -> None:
    """SIGKILL: no cleanup, as when a node dies."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
