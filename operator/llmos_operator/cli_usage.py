"""``llmos usage``: who used what (filled in with metering)."""

from __future__ import annotations

from typing import Any


def add_usage_command(sub: Any) -> None:
    return None
