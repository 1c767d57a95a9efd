"""API keys (pure): a Secret of type ``llmos.dev/api-key`` read into what a model pod enforces — its hash, models,
limits and expiry, never its plain text — and the namespace's key table rendered from them.

A key Secret (``llmos key create`` writes one; one applied by hand works the same)::

    apiVersion: v1
    kind: Secret
    type: llmos.dev/api-key
    metadata: {name: ci-bot, namespace: team-a}
    stringData:
      key: llmos-…                 # required: at least 32 characters
      models: chat,embed           # optional: served model names it may call (default: all of the namespace's)
      requestsPerMinute: "600"     # optional limits
      tokensPerMinute: "100000"
      concurrentRequests: "8"
      expires: "2027-01-01T00:00:00Z"   # optional, RFC 3339

A Secret that breaks these rules grants nothing; why is said in an Event on it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from llmos_runtime.keys import MIN_KEY_LENGTH, key_hash, table_json

from ..api.names import API_KEY_SECRET_TYPE, API_KEYS_CONFIGMAP, LABEL_MANAGED_BY, MANAGED_BY

KEY_FIELD = "key"
LIMIT_FIELDS = {"requestsPerMinute": 10_000_000, "tokensPerMinute": 10_000_000_000, "concurrentRequests": 1_000_000}
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
DURATION = re.compile(r"^([0-9]+)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class KeyRefused(ValueError):
    """A key Secret that grants nothing, and why (names the field)."""


@dataclass(frozen=True)
class ParsedKey:
    """A key as the operator keeps it: no plain text."""

    id: str
    hash: str
    models: tuple[str, ...] | None
    limits: dict[str, int]
    expires: float | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "hash": self.hash}
        if self.models is not None:
            out["models"] = list(self.models)
        if self.limits:
            out["limits"] = self.limits
        if self.expires is not None:
            out["expires"] = self.expires
        return out


def _field(data: Mapping[str, str], name: str) -> str | None:
    raw = data.get(name)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise KeyRefused(f"data.{name} is not base64 of UTF-8 text") from exc


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``2w``, ``45s``."""
    m = DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h, 30m, 2w")
    return timedelta(seconds=int(m.group(1)) * UNITS[m.group(2)])


def parse_expiry(text: str) -> float:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise KeyRefused(f"data.expires {text!r} is not an RFC 3339 time like 2027-01-01T00:00:00Z") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def parse_key_secret(secret: Mapping[str, Any]) -> ParsedKey:
    """The key a Secret of type llmos.dev/api-key holds (``data`` base64, as the API returns it). Raises
    KeyRefused."""
    meta = secret.get("metadata") or {}
    if secret.get("type") != API_KEY_SECRET_TYPE:
        raise KeyRefused(f"type is {secret.get('type')!r}, not {API_KEY_SECRET_TYPE}")
    data = secret.get("data") or {}
    key = _field(data, KEY_FIELD)
    if not key:
        raise KeyRefused("data.key is missing: the Secret must hold the key (llmos key create makes one)")
    if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
        raise KeyRefused(f"data.key must be at least {MIN_KEY_LENGTH} characters without spaces (a random key "
                         "cannot be guessed; `llmos key create` makes one of 256 bits)")
    models_text = _field(data, "models")
    models = None
    if models_text:
        models = tuple(sorted({m.strip() for m in models_text.split(",") if m.strip()}))
        bad = [m for m in models if not MODEL_NAME.match(m)]
        if bad:
            raise KeyRefused(f"data.models: {bad[0]!r} is not a model name")
    limits = {}
    for name, most in LIMIT_FIELDS.items():
        text = _field(data, name)
        if text:
            if not text.isdigit() or not 1 <= int(text) <= most:
                raise KeyRefused(f"data.{name} must be a whole number from 1 to {most}, not {text!r}")
            limits[name] = int(text)
    expires_text = _field(data, "expires")
    expires = parse_expiry(expires_text) if expires_text else None
    return ParsedKey(id=f"{meta.get('namespace')}/{meta.get('name')}", hash=key_hash(key), models=models,
                     limits=limits, expires=expires)


def summarize_key_secret(secret: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator's store keeps of a key Secret: its metadata and the parsed key (hash, not plain text),
    or why it grants nothing."""
    meta = secret.get("metadata") or {}
    kept = {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")}
    out: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": kept}
    try:
        out["parsed"] = parse_key_secret(secret).to_json()
    except KeyRefused as exc:
        out["refused"] = str(exc)
    return out


def render_key_table(namespace: str, tenant: str, summaries: Sequence[Mapping[str, Any]],
                     tenant_limits: Mapping[str, int] | None, replicas: Mapping[str, int]) -> dict[str, Any]:
    """The ConfigMap ``llmos-api-keys`` of a tenant namespace: every valid key's hash, models, limits and expiry,
    the tenant's limits and each deployment's replicas (the share a replica enforces without a shared store)."""
    import json

    keys = sorted((s["parsed"] for s in summaries if s.get("parsed")), key=lambda k: str(k["id"]))
    table = table_json(keys, tenant=tenant, tenant_limits=dict(tenant_limits or {}) or None,
                       replicas=dict(sorted(replicas.items())))
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": API_KEYS_CONFIGMAP, "namespace": namespace,
                     "labels": {LABEL_MANAGED_BY: MANAGED_BY, "llmos.dev/tenant": tenant}},
        "data": {"keys.json": json.dumps(table, sort_keys=True, separators=(",", ":"))},
    }
