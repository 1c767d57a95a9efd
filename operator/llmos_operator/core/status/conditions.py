"""Conditions as Kubernetes conventions want them, and the merge patches that carry status. Pure.

A status is applied as a JSON merge patch: a ``None`` value deletes that field (``queuePosition`` once admitted, a
ledger entry once freed). Conditions carry ``observedGeneration``, CamelCase reasons, and keep
``lastTransitionTime`` while their status does not change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ...api.names import DEGRADED, MODEL_VERIFIED, QUOTA_ADMITTED, READY, VERIFIED
from ...api.types import Condition

MAX_MESSAGE = 1024


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _conditions_of(previous: Iterable[Condition | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for c in previous or ():
        out.append(c.to_dict() if isinstance(c, Condition) else dict(c))
    return out


def condition(type_: str, status: bool | str, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    """A condition without lastTransitionTime (``merge_conditions`` sets it)."""
    if isinstance(status, bool):
        status = "True" if status else "False"
    message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
    out: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def merge_conditions(
    previous: Iterable[Condition | Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]], now: str
) -> list[dict[str, Any]]:
    """``new`` conditions in order, each keeping its previous lastTransitionTime if its status is unchanged, then the
    previous conditions of other types (set by someone else) as they were."""
    old = {c["type"]: c for c in _conditions_of(previous)}
    out = []
    for c in new:
        c = dict(c)
        before = old.get(c["type"])
        if before is not None and before.get("status") == c["status"] and before.get("lastTransitionTime"):
            c["lastTransitionTime"] = before["lastTransitionTime"]
        else:
            c["lastTransitionTime"] = now
        out.append(c)
    mine = {c["type"] for c in new}
    out += [c for t, c in old.items() if t not in mine]
    return out


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed: emit a Kubernetes Event for it."""

    type: str
    old_status: str | None
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        """Whether the Event should be of type Warning."""
        bad = {READY: "False", QUOTA_ADMITTED: "False", MODEL_VERIFIED: "False", DEGRADED: "True", VERIFIED: "False"}
        return bad.get(self.type) == self.status


def transitions(
    previous: Iterable[Condition | Mapping[str, Any]] | None, current: Iterable[Mapping[str, Any]]
) -> list[Transition]:
    old = {c["type"]: c for c in _conditions_of(previous)}
    out = []
    for c in current:
        before = old.get(c["type"])
        if before is None or before.get("status") != c["status"] or before.get("reason") != c["reason"]:
            out.append(Transition(c["type"], (before or {}).get("status"), c["status"], c["reason"],
                                  c.get("message", "")))
    return out


def map_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning map ``old`` into ``new``: keys that went away are set to None."""
    out: dict[str, Any] = {k: None for k in (old or {}) if k not in new}
    out.update(new)
    return out



def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Would merge-patching ``new`` into ``old`` change anything?"""
    for key, value in new.items():
        if value is None:
            if old.get(key) is not None:
                return True
        elif isinstance(value, dict) and isinstance(old.get(key), dict) and key != "conditions":
            if status_changed(old[key], value):
                return True
        elif old.get(key) != value:
            return True
    return False


def is_true(conditions: Iterable[Mapping[str, Any]], type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in conditions)
