"""Polling helpers for tests against a real cluster or engine."""

from __future__ import annotations

import time

import pytest


def wait_for(predicate, timeout: float = 30, interval: float = 0.25, message: str = "condition"):
    """Poll until predicate() returns a truthy value; return it, or fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {message} (last: {last!r})")
