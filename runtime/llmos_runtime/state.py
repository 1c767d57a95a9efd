"""Shared runtime state: what /healthz and /readyz report, mirrored to the engine's guard (guard.py) on every
change."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .metrics import RuntimeMetrics


@dataclass
class RuntimeState:
    metrics: RuntimeMetrics = field(default_factory=RuntimeMetrics)
    phase: str = "starting"  # starting, fetching, verifying, engine-starting, loading-adapters, serving, draining, ...
    verified: bool = False  # the model passed signature verification (or verification is disabled by policy)
    verification: dict[str, Any] | None = None  # what verify_model returned, for /readyz
    engine_ready: bool = False
    engine_healthy: bool = True  # False while the watchdog judges the engine hung, silent or unhealthy
    engine_problem: str | None = None  # the watchdog's reason, while not healthy
    phase_started: float = field(default_factory=time.monotonic)
    engine_exited: int | None = None  # the engine's exit code once it has exited
    draining: bool = False  # SIGTERM came: not ready (new requests are still served for the drain grace)
    refusing: bool = False  # the drain grace is over: new requests are refused
    failure: str | None = None
    started_at: float = field(default_factory=time.time)
    on_publish: Callable[[], None] | None = None  # called after every change (keeps the guard's marker in sync)

    @property
    def serving(self) -> bool:
        """Verified, engine up and healthy, nothing failed."""
        return (self.verified and self.engine_ready and self.engine_healthy and self.engine_exited is None
                and self.failure is None)

    @property
    def ready(self) -> bool:
        return self.serving and not self.draining

    @property
    def accepting(self) -> bool:
        """The guard serves new requests: while ready, and after SIGTERM until the drain grace is over."""
        return self.serving and not self.refusing

    @property
    def digest(self) -> str | None:
        """``sha256:<root digest>`` of the verified manifest (the form of the Model's ``status.digest``), or None
        while unverified or when verification is disabled."""
        root = (self.verification or {}).get("root_digest") if self.verified else None
        return f"sha256:{root}" if root else None

    @property
    def alive(self) -> bool:
        return self.engine_exited is None and self.failure is None

    def not_ready_reason(self) -> str:
        if self.failure:
            return self.failure
        if self.draining:
            return "draining"
        if self.engine_exited is not None:
            return f"engine exited with code {self.engine_exited}"
        if not self.verified:
            return f"model not verified yet ({self.phase})"
        if not self.engine_healthy:
            return self.engine_problem or "engine not healthy"
        return f"engine not ready ({self.phase})"

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.phase_started = time.monotonic()
        self.publish()

    def publish(self) -> None:
        m = self.metrics
        m.ready.set(1 if self.ready else 0)
        m.draining.set(1 if self.draining else 0)
        m.verified.set(1 if self.verified else 0)
        if self.on_publish is not None:
            self.on_publish()
