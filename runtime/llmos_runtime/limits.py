"""Rate and concurrency limits of API keys and tenants: the arithmetic (GCRA, pure), and a limiter kept in this
process's memory that enforces a share of each limit (1 / the deployment's replicas).

GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a limit of N per minute spaces units
``T = 60 / N`` seconds apart and lets ``burst`` units through at once; its whole state is the theoretical arrival
time ``tat``. A request costs one unit of the requests-per-minute limit when it is admitted. Tokens are known only
once the answer is complete, so a tokens-per-minute limit admits while the bucket is not in debt beyond its burst
and is charged afterwards with the prompt and completion tokens (a key that spent a minute's tokens in one answer
waits about a minute). Bursts are one second's worth of the limit (at least one unit): a key limited to 600/min and
offered twice that gets 600 + 10 in its first minute, then 600.

The store-backed limiter (store.py) runs the same arithmetic in Valkey/Redis, exact across replicas.

Standard library only: it runs inside the engine's process.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .keys import KeyEntry, Limits

BURST_SECONDS = 1.0
MINUTE = 60.0


@dataclass(frozen=True)
class Refused:
    """Over a limit: which one (for the error message and metrics), and when to retry."""

    limit: str  # requests | tokens | concurrency
    scope: str  # key | tenant
    retry_after: float

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


def interval(per_minute: float) -> float:
    return MINUTE / per_minute


def burst_units(per_minute: float) -> float:
    return max(1.0, per_minute * BURST_SECONDS / MINUTE)


def gcra(tat: float, now: float, per_minute: float, cost: float) -> tuple[bool, float, float]:
    """One GCRA step: (allowed, the new tat, seconds until it would be allowed). ``cost`` 0 only asks whether the
    bucket is in debt beyond its burst (tokens, charged later with :func:`charge`)."""
    t = interval(per_minute)
    base = max(tat, now)
    allow_until = now + burst_units(per_minute) * t
    if cost == 0:  # not in debt beyond the burst?
        return (True, tat, 0.0) if base < allow_until else (False, tat, base - allow_until + t)
    new_tat = base + cost * t
    if new_tat <= allow_until + 1e-9:
        return True, new_tat, 0.0
    return False, tat, new_tat - allow_until


def charge(tat: float, now: float, per_minute: float, cost: float) -> float:
    """Add ``cost`` units after the fact (tokens of a finished answer)."""
    return max(tat, now) + cost * interval(per_minute)


def share(limit: int | None, replicas: int) -> float | None:
    """The part of a limit one of ``replicas`` replicas enforces on its own."""
    return None if limit is None else limit / max(1, replicas)


class _Bucket:
    __slots__ = ("requests", "tokens", "inflight")

    def __init__(self) -> None:
        self.requests = 0.0  # GCRA tat of the requests-per-minute limit
        self.tokens = 0.0  # ... of the tokens-per-minute limit
        self.inflight = 0


def check(b: _Bucket, lim: Limits, scope: str, now: float, replicas: int) -> tuple[Refused | None, float]:
    """Would one more request fit this bucket's share of ``lim``? (refusal or None, the requests tat if admitted)"""
    conc = share(lim.concurrent_requests, replicas)
    if conc is not None and b.inflight + 1 > max(1.0, conc):
        return Refused("concurrency", scope, 1.0), b.requests
    tpm = share(lim.tokens_per_minute, replicas)
    if tpm:
        ok, _, wait = gcra(b.tokens, now, tpm, 0)
        if not ok:
            return Refused("tokens", scope, wait), b.requests
    rpm = share(lim.requests_per_minute, replicas)
    if rpm:
        ok, tat, wait = gcra(b.requests, now, rpm, 1)
        if not ok:
            return Refused("requests", scope, wait), b.requests
        return None, tat
    return None, b.requests


class LocalLimiter:
    """Limits enforced in this replica alone, each scaled to its share (1 / replicas). Approximate: exact only when
    the load balancer spreads a key's requests evenly — kube-proxy balances connections, so one pooled client lands
    on one replica and gets only that replica's share (bench/limits_bench.py measures it)."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, scope: str, ident: str) -> _Bucket:
        b = self._buckets.get((scope, ident))
        if b is None:
            b = self._buckets[(scope, ident)] = _Bucket()
        return b

    def _subjects(self, key: KeyEntry, tenant: str, tenant_limits: Limits) -> list[tuple[str, _Bucket, Limits]]:
        out = []
        if not key.limits.empty:
            out.append(("key", self._bucket("key", key.id), key.limits))
        if tenant and not tenant_limits.empty:
            out.append(("tenant", self._bucket("tenant", tenant), tenant_limits))
        return out

    async def admit(self, key: KeyEntry, tenant: str, tenant_limits: Limits, replicas: int,
                    request_id: str = "") -> Refused | None:
        now = self.clock()
        subjects = self._subjects(key, tenant, tenant_limits)
        admitted = []
        for scope, b, lim in subjects:  # every limit is checked before any is charged: a refusal changes nothing
            refused, tat = check(b, lim, scope, now, replicas)
            if refused is not None:
                return refused
            admitted.append((b, tat))
        for b, tat in admitted:
            b.requests = tat
            b.inflight += 1
        return None

    async def done(self, key: KeyEntry, tenant: str, tenant_limits: Limits, replicas: int, tokens: int,
                   request_id: str = "") -> None:
        now = self.clock()
        for _, b, lim in self._subjects(key, tenant, tenant_limits):
            b.inflight = max(0, b.inflight - 1)
            tpm = share(lim.tokens_per_minute, replicas)
            if tpm and tokens:
                b.tokens = charge(b.tokens, now, tpm, tokens)
