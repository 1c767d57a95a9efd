"""API keys: their one hash, the table of hashes a model pod enforces, and how a key is made.

A key is 256 random bits (``llmos-`` + 43 URL-safe characters); its plain text exists only in its Secret (type
``llmos.dev/api-key``) and with whoever holds it. Everything else — the ConfigMap ``llmos-api-keys`` the operator
renders, the table the runtime hands its guard, metrics, logs — carries ``sha256:<hex>`` of it.

Why sha256 and not a slow password hash (bcrypt, scrypt, argon2): those exist to make guessing a *low-entropy*
secret from its hash expensive. A 256-bit random key cannot be guessed from its hash at any cost per try, so a slow
hash buys nothing — while it would cost milliseconds of CPU on every request (the guard's budget is 50 µs) and rule
out a dictionary lookup (a salted slow hash must be tried against every key). A hand-written Secret is held to the
same entropy: the operator refuses keys shorter than ``MIN_KEY_LENGTH`` characters. sha256 is collision and
preimage resistant, in the standard library, and ~0.5 µs for a key. Looking the hash up in a dictionary leaks, by
its timing at most, how much of a *hash* matched — which a caller cannot steer without preimages.

Standard library only: the guard that uses the table runs inside the engine's process.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

KEY_PREFIX = "llmos-"
MIN_KEY_LENGTH = 32  # characters of a hand-written key: ≥ 192 bits if random base64, refused below
TABLE_FILE = "keys.json"  # in the guard's directory: what the runtime hands the guard
TABLE_FORMAT = 1


def key_hash(key: str | bytes) -> str:
    """``sha256:<hex>`` of a key's bytes (UTF-8)."""
    data = key.encode() if isinstance(key, str) else key
    return "sha256:" + hashlib.sha256(data).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Limits:
    """Per minute and at once; None: no limit."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Limits:
        data = data or {}
        return cls(_int(data.get("requestsPerMinute")), _int(data.get("tokensPerMinute")),
                   _int(data.get("concurrentRequests")))

    def to_json(self) -> dict[str, int]:
        out = {"requestsPerMinute": self.requests_per_minute, "tokensPerMinute": self.tokens_per_minute,
               "concurrentRequests": self.concurrent_requests}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def empty(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None and self.concurrent_requests is None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class KeyEntry:
    """One key as a model pod knows it: ``id`` is ``<namespace>/<secret name>`` (what metrics and logs say)."""

    id: str
    hash: str
    models: frozenset[str] | None = None  # None: every model of the namespace
    limits: Limits = field(default_factory=Limits)
    expires: float | None = None  # epoch seconds

    def allows(self, model: str | None) -> bool:
        return self.models is None or (model is not None and model in self.models)


@dataclass(frozen=True)
class KeyTable:
    """What the guard enforces: keys by hash, the tenant's own limits, and replicas of each deployment (the share
    of a limit one replica enforces when no shared store is configured)."""

    keys: dict[str, KeyEntry] = field(default_factory=dict)  # hash → entry
    tenant: str = ""
    tenant_limits: Limits = field(default_factory=Limits)
    replicas: dict[str, int] = field(default_factory=dict)  # deployment (served) name → replicas
    served: frozenset[str] = frozenset()  # model names this pod serves (metrics label only these)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyTable:
        if data.get("format", TABLE_FORMAT) != TABLE_FORMAT:
            raise ValueError(f"unknown key table format {data.get('format')!r}")
        keys = {}
        for k in data.get("keys") or []:
            models = k.get("models")
            entry = KeyEntry(id=str(k["id"]), hash=str(k["hash"]),
                             models=None if models is None else frozenset(str(m) for m in models),
                             limits=Limits.from_json(k.get("limits")),
                             expires=None if k.get("expires") is None else float(k["expires"]))
            keys[entry.hash] = entry
        return cls(keys=keys, tenant=str(data.get("tenant") or ""),
                   tenant_limits=Limits.from_json(data.get("tenantLimits")),
                   replicas={str(k): int(v) for k, v in (data.get("replicas") or {}).items()},
                   served=frozenset(data.get("served") or ()))

    @classmethod
    def loads(cls, text: str | bytes) -> KeyTable:
        return cls.from_json(json.loads(text))


def table_json(keys: list[dict[str, Any]], *, tenant: str, tenant_limits: dict[str, int] | None = None,
               replicas: dict[str, int] | None = None, served: list[str] | None = None) -> dict[str, Any]:
    """The table as JSON (the operator's ConfigMap and the guard's file share it)."""
    out: dict[str, Any] = {"format": TABLE_FORMAT, "tenant": tenant, "keys": keys}
    if tenant_limits:
        out["tenantLimits"] = tenant_limits
    if replicas:
        out["replicas"] = replicas
    if served is not None:
        out["served"] = sorted(served)
    return out
