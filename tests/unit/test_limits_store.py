"""Limits in a shared store (llmos_runtime.store) on a real Redis/Valkey (Debian's package, started here): three
replicas' limiters together give what one key is allowed, not three times it; concurrency slots are shared and
given back; tokens are charged after the answer; a store that stops answering makes each replica fall back to its
share, and the store is used again once it is back; AUTH."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmos_runtime.keys import KeyEntry, Limits
from llmos_runtime.store import StoreLimiter
from tests.support.valkey import Valkey

pytestmark = pytest.mark.unit
NO = Limits()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    v = Valkey(tmp_path_factory.mktemp("valkey"), password="s3cret").start()
    yield v
    v.stop()


def _url(store: Valkey) -> str:
    return f"redis://:{store.password}@127.0.0.1:{store.port}"


def test_three_replicas_share_one_keys_rate(store):
    key = KeyEntry("ns/rate", "h", limits=Limits(requests_per_minute=6000))  # 100/s, a burst of 100

    async def go():
        replicas = [StoreLimiter(_url(store)) for _ in range(3)]
        admitted, start = 0, time.monotonic()
        for i in range(400):  # 200/s for 2 s, round-robin over the replicas
            await asyncio.sleep(max(0.0, start + i * 0.005 - time.monotonic()))
            admitted += await replicas[i % 3].admit(key, "acme", NO, 3, f"r{i}") is None
        assert all(r.fallbacks == 0 for r in replicas)
        return admitted, time.monotonic() - start

    admitted, took = asyncio.run(go())
    expected = 100 + 100 * took  # the burst, then the rate, over the time it really took
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, took)


def test_concurrency_is_shared_and_given_back_tokens_are_charged(store):
    key = KeyEntry("ns/conc", "h", limits=Limits(concurrent_requests=2, tokens_per_minute=600))

    async def go():
        a, b = StoreLimiter(_url(store)), StoreLimiter(_url(store))
        assert await a.admit(key, "acme", NO, 2, "1") is None
        assert await b.admit(key, "acme", NO, 2, "2") is None
        third = await a.admit(key, "acme", NO, 2, "3")
        assert third is not None and third.limit == "concurrency" and third.scope == "key"
        await b.done(key, "acme", NO, 2, 300, "2")  # half a minute's tokens
        refused = await b.admit(key, "acme", NO, 2, "4")
        assert refused is not None and refused.limit == "tokens" and 25 < refused.retry_after <= 31
        await a.done(key, "acme", NO, 2, 0, "1")

    asyncio.run(go())


def test_tenant_limits_span_keys(store):
    one, two = KeyEntry("ns/one", "h1"), KeyEntry("ns/two", "h2")
    tenant = Limits(requests_per_minute=60)

    async def go():
        limiter = StoreLimiter(_url(store))
        assert await limiter.admit(one, "team", tenant, 1, "a") is None
        refused = await limiter.admit(two, "team", tenant, 1, "b")
        assert refused is not None and refused.scope == "tenant" and refused.limit == "requests"

    asyncio.run(go())


def test_a_store_outage_falls_back_to_each_replicas_share(tmp_path):
    v = Valkey(tmp_path / "v").start()
    key = KeyEntry("ns/outage", "h", limits=Limits(requests_per_minute=60))

    async def go():
        limiter = StoreLimiter(v.url)
        assert await limiter.admit(key, "t", NO, 1, "1") is None
        assert await limiter.admit(key, "t", NO, 1, "2") is not None  # the store's count
        v.stop()
        t = time.monotonic()
        await limiter.admit(key, "t", NO, 1, "3")  # answered by the fallback (its own, fresh share)
        assert limiter.fallbacks == 1 and time.monotonic() - t < 1.0

    asyncio.run(go())
