"""GPU time a tenant used (pure): the ledger over time (GPU-seconds reserved) and ready replicas × GPUs over time
(GPU-seconds serving), per GPU class, integrated exactly between the moments the operator looks, in calendar-month
periods (UTC).

What held since the last look is what is integrated (a step function: the operator looks at every change and on a
tick), so a restarted operator continues from ``Tenant.status.usage``: its period, GPU-hours and the GPUs reserved and
serving when it was written. The time the operator was away is integrated with those GPUs: the ledger cannot change
while no operator runs (nothing is admitted), and pods keep serving.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

HOUR = 3600.0


def period_of(epoch: float) -> str:
    """The calendar month (UTC) an instant belongs to: ``2026-12``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m")


def period_start(period: str) -> float:
    return datetime.strptime(period + "-01", "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def next_period_start(period: str) -> float:
    year, month = (int(x) for x in period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class TenantGPUTime:
    """One tenant's GPU time in the current period: GPU-seconds per class, and what held at ``at``."""

    period: str
    at: float  # epoch seconds of the last integration
    reserved_seconds: dict[str, float] = field(default_factory=dict)
    serving_seconds: dict[str, float] = field(default_factory=dict)
    reserved: dict[str, int] = field(default_factory=dict)  # GPUs per class at ``at``
    serving: dict[str, int] = field(default_factory=dict)

    @classmethod
    def starting(cls, now: float) -> TenantGPUTime:
        return cls(period=period_of(now), at=now)

    def advance(self, now: float, reserved: Mapping[str, int] | None = None,
                serving: Mapping[str, int] | None = None) -> TenantGPUTime:
        """Integrate what held since ``at`` up to ``now`` (a new period starts from zero at its first instant), then
        hold ``reserved`` and ``serving`` (None: unchanged) from ``now`` on."""
        state, at = self, self.at
        if now < at:  # a clock step back: nothing to integrate
            now = at
        while period_of(now) != state.period:
            boundary = next_period_start(state.period)
            state = state._integrated(max(at, min(boundary, now)))
            state = replace(state, period=period_of(boundary), at=boundary, reserved_seconds={}, serving_seconds={})
            at = boundary
        state = state._integrated(now)
        return replace(state, reserved=dict(reserved if reserved is not None else state.reserved),
                       serving=dict(serving if serving is not None else state.serving))

    def _integrated(self, until: float) -> TenantGPUTime:
        dt = max(0.0, until - self.at)
        res = dict(self.reserved_seconds)
        srv = dict(self.serving_seconds)
        for cls, gpus in self.reserved.items():
            res[cls] = res.get(cls, 0.0) + gpus * dt
        for cls, gpus in self.serving.items():
            srv[cls] = srv.get(cls, 0.0) + gpus * dt
        return replace(self, at=until, reserved_seconds=res, serving_seconds=srv)

    def classes(self) -> set[str]:
        return set(self.reserved_seconds) | set(self.serving_seconds) | set(self.reserved) | set(self.serving)

    def to_status(self) -> dict[str, Any]:
        """``Tenant.status.usage`` fields (merged beside ``gpus``, which admission writes)."""
        return {
            "period": self.period,
            "updatedAt": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "gpuHours": {c: {"reserved": round(self.reserved_seconds.get(c, 0.0) / HOUR, 6),
                             "serving": round(self.serving_seconds.get(c, 0.0) / HOUR, 6)}
                         for c in sorted(self.classes())},
            "meteredGPUs": {c: {"reserved": self.reserved.get(c, 0), "serving": self.serving.get(c, 0)}
                            for c in sorted(self.classes())},
        }

    @classmethod
    def from_status(cls, usage: Mapping[str, Any] | None) -> TenantGPUTime | None:
        """What a previous operator wrote; None when it wrote nothing usable."""
        if not usage or not usage.get("period") or not usage.get("updatedAt"):
            return None
        try:
            at = datetime.fromisoformat(str(usage["updatedAt"]).replace("Z", "+00:00")).timestamp()
            hours = usage.get("gpuHours") or {}
            gpus = usage.get("meteredGPUs") or {}
            return cls(period=str(usage["period"]), at=at,
                       reserved_seconds={c: float(v.get("reserved", 0)) * HOUR for c, v in hours.items()},
                       serving_seconds={c: float(v.get("serving", 0)) * HOUR for c, v in hours.items()},
                       reserved={c: int(v.get("reserved", 0)) for c, v in gpus.items()},
                       serving={c: int(v.get("serving", 0)) for c, v in gpus.items()})
        except (ValueError, TypeError, AttributeError):
            return None


def reserved_gpus(reservations: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """GPUs per class the ledger (``Tenant.status.reservations``) holds: deployments, surge, releasing, strays."""
    out: dict[str, int] = {}
    for entry in reservations.values():
        cls = str(entry.get("class") or "")
        if cls:
            out[cls] = out.get(cls, 0) + int(entry.get("gpus") or 0)
    return out
