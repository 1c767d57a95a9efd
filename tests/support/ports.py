"""Loopback ports for the servers tests start (operators, runtimes, Valkey, Prometheus)."""

from __future__ import annotations

import socket
import threading

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A loopback port free now and never handed out before by this process. The kernel may give a port it just gave
    (and that was closed again) out a second time, so two ports picked one after the other, say an operator's metrics
    and liveness ports, could be one: CI once saw the liveness URL answered by the same process's metrics server."""
    with _lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
