"""API keys in the guard (llmos_runtime.access) as ASGI calls: 401/403/429 in OpenAI's shape, the key table reloaded
when the runtime rewrites it, streams made to report usage (and the usage event kept from clients that did not ask),
tokens metered per key and model; the limit arithmetic (limits.py) on a simulated clock; key hashing."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from llmos_runtime import access as access_mod
from llmos_runtime.access import Access
from llmos_runtime.guard import InferenceOnly
from llmos_runtime.keys import KeyEntry, KeyTable, Limits, generate_key, key_hash, table_json
from llmos_runtime.limits import LocalLimiter, gcra
from llmos_runtime.metering import scan_stream_chunk

pytestmark = pytest.mark.unit

KEY_A, KEY_B = generate_key(), generate_key()


def write_table(guard_dir, keys, **kw):
    path = guard_dir / "keys.json"
    tmp = guard_dir / "keys.tmp"
    tmp.write_text(json.dumps(table_json(keys, tenant="acme", **kw)))
    os.replace(tmp, path)


def entry(key, name, **kw):
    return {"id": f"team-a/{name}", "hash": key_hash(key), **kw}


def engine(answer: dict | None = None, stream_events: list[bytes] | None = None, seen: list | None = None):
    async def app(scope, receive, send):
        message = await receive()
        if seen is not None:
            seen.append(json.loads(message["body"]) if message["body"] else None)
        if stream_events is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
            for ev in stream_events:
                await send({"type": "http.response.body", "body": ev, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = json.dumps(answer or {}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def call(guard, app, *, key=None, body=None, method="POST", path="/v1/completions"):
    sent = []
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    raw = json.dumps(body).encode() if body is not None else b""

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(m):
        sent.append(m)

    guard.app = app
    asyncio.run(guard({"type": "http", "method": method, "path": path, "headers": headers}, receive, send))
    status = sent[0]["status"]
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, dict(sent[0]["headers"]), data


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_GUARD_KEYS", "required")
    monkeypatch.setenv("LLMOS_GUARD_SERVED", "tiny")
    monkeypatch.setattr(access_mod, "RELOAD_CHECK_SECONDS", 0.0)
    (tmp_path / "serving").touch()
    return InferenceOnly(None, guard_dir=str(tmp_path), token="secret"), tmp_path


def error(data: bytes) -> dict:
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_401_403_and_what_passes(guarded):
    guard, d = guarded
    app = engine({"usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    # no table yet: 503, not a silent pass
    assert call(guard, app, key=KEY_A, body={"model": "tiny"})[0] == 503
    write_table(d, [entry(KEY_A, "a"), entry(KEY_B, "b", models=["other-model"]),
                    entry("llmos-expired-key-000000000000000000000", "old", expires=time.time() - 1)])
    status, _, data = call(guard, app, body={"model": "tiny"})
    assert status == 401 and error(data)["code"] == "missing_api_key"
    status, _, data = call(guard, app, key="llmos-guessed", body={"model": "tiny"})
    assert status == 401 and error(data)["code"] == "invalid_api_key"
    status, _, data = call(guard, app, key="llmos-expired-key-000000000000000000000", body={"model": "tiny"})
    assert status == 401 and error(data)["code"] == "expired_api_key"
    status, _, data = call(guard, app, key=KEY_B, body={"model": "tiny"})
    assert status == 403 and error(data)["code"] == "model_not_allowed" and "team-a/b" in error(data)["message"]
    assert call(guard, app, key=KEY_B, body={"model": "other-model"})[0] == 200
    assert call(guard, app, key=KEY_A, body={"model": "tiny"})[0] == 200
    assert call(guard, app, key=KEY_A, body={"prompt": "x"})[0] == 200  # no model named: the served one
    assert call(guard, app, key=KEY_A, method="GET", path="/v1/models")[0] == 200
    assert call(guard, app, method="GET", path="/health")[0] == 200  # probes need no key
    # a scheme other than Bearer is no key
    guard.app = app
    text = guard.access.meter.exposition().decode()
    assert 'key="-",model="",code="401"} 3' in text
    assert 'key="team-a/b",model="tiny",code="403"} 1' in text
    assert 'key="team-a/a",model="tiny",kind="prompt"} 9' in text  # two completions and the (fake) model list
    assert 'key="team-a/b",model="other",kind="completion"} 5' in text  # not served here: one bounded label


def test_a_revoked_key_is_refused_once_the_table_changes(guarded):
    guard, d = guarded
    app = engine({})
    write_table(d, [entry(KEY_A, "a")])
    assert call(guard, app, key=KEY_A, body={})[0] == 200
    write_table(d, [])
    assert call(guard, app, key=KEY_A, body={})[0] == 401
    (d / "keys.json").write_text("{not json")  # a bad file keeps the table in force
    assert call(guard, app, key=KEY_A, body={})[0] == 401


def test_streams_report_usage_and_clients_that_did_not_ask_do_not_see_it(guarded):
    guard, d = guarded
    write_table(d, [entry(KEY_A, "a")])
    events = [b'data: {"choices":[{"text":"a"}]}\n\n', b'data: {"choices":[{"text":"b"}]}\n\n',
              b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n',
              b"data: [DONE]\n\n"]
    seen: list = []
    status, _, data = call(guard, engine(stream_events=events, seen=seen), key=KEY_A,
                           body={"model": "tiny", "prompt": "x", "stream": True})
    assert status == 200 and seen[-1]["stream_options"] == {"include_usage": True}
    assert b"usage" not in data and data.endswith(b"data: [DONE]\n\n") and data.count(b"data: ") == 3
    status, _, data = call(guard, engine(stream_events=events, seen=seen), key=KEY_A,
                           body={"model": "tiny", "stream": True, "stream_options": {"include_usage": True}})
    assert b'"usage"' in data  # asked for: kept
    text = guard.access.meter.exposition().decode()
    assert 'key="team-a/a",model="tiny",kind="prompt"} 14' in text
    assert 'key="team-a/a",model="tiny",kind="completion"} 4' in text


def test_limits_answer_429_with_retry_after(guarded):
    guard, d = guarded
    write_table(d, [entry(KEY_A, "a", limits={"requestsPerMinute": 60})], replicas={"tiny": 1})
    app = engine({})
    statuses = [call(guard, app, key=KEY_A, body={})[0] for _ in range(3)]
    assert statuses == [200, 429, 429]  # 60/min: a burst of one, then one a second
    status, headers, data = call(guard, app, key=KEY_A, body={})
    assert status == 429 and int(headers[b"retry-after"]) >= 1 and error(data)["code"] == "rate_limit_exceeded"
    assert 'limit="requests",scope="key"} 3' in guard.access.meter.exposition().decode()


def test_gcra_gives_the_rate_plus_one_seconds_burst():
    """Offered twice the limit evenly for two minutes, a key limited to 600/min gets 600 + its burst in the first
    minute and 600 in the second."""
    per_minute, tat, got = 600.0, 0.0, [0, 0]
    for i in range(2400):  # 1,200/min for two minutes
        now = i * 0.05
        ok, tat2, _ = gcra(tat, now, per_minute, 1)
        if ok:
            tat = tat2
            got[int(now // 60)] += 1
    assert 600 < got[0] <= 610 and got[1] == 600


def test_tokens_are_charged_after_the_answer_and_concurrency_released():
    now = [0.0]
    lim = LocalLimiter(clock=lambda: now[0])
    key = KeyEntry("ns/k", "h", limits=Limits(tokens_per_minute=600, concurrent_requests=2))

    async def go():
        assert await lim.admit(key, "", Limits(), 1) is None
        assert await lim.admit(key, "", Limits(), 1) is None
        third = await lim.admit(key, "", Limits(), 1)
        assert third is not None and third.limit == "concurrency"
        await lim.done(key, "", Limits(), 1, tokens=300)  # half a minute's tokens
        refused = await lim.admit(key, "", Limits(), 1)
        assert refused is not None and refused.limit == "tokens" and 25 < refused.retry_after <= 30
        now[0] = 30.0
        assert await lim.admit(key, "", Limits(), 1) is None

    asyncio.run(go())


def test_a_replica_enforces_its_share_without_a_store():
    now = [0.0]
    lim = LocalLimiter(clock=lambda: now[0])
    key = KeyEntry("ns/k", "h", limits=Limits(requests_per_minute=600))
    admitted = 0

    async def go():
        nonlocal admitted
        for i in range(1200):  # a minute at 1,200/min, all on this replica of 3
            now[0] = i * 0.05
            admitted += await lim.admit(key, "", Limits(), 3) is None

    asyncio.run(go())
    assert 200 <= admitted <= 205


def test_keys_hash_and_table_round_trip():
    key = generate_key()
    assert key.startswith("llmos-") and len(key) == 6 + 43
    assert key_hash(key) == key_hash(key.encode()) and key_hash(key).startswith("sha256:") and key not in key_hash(key)
    table = KeyTable.from_json(table_json([entry(key, "a", models=["m"], limits={"requestsPerMinute": 5})],
                                          tenant="t", tenant_limits={"tokensPerMinute": 9}, replicas={"m": 3}))
    e = table.keys[key_hash(key)]
    assert e.id == "team-a/a" and e.allows("m") and not e.allows("n") and e.limits.requests_per_minute == 5
    assert table.tenant_limits.tokens_per_minute == 9 and table.replicas == {"m": 3}


def test_scan_stream_chunk_costs_a_search_when_there_is_no_usage():
    chunk = b'data: {"choices":[{"text":"a"}]}\n\n'
    assert scan_stream_chunk(chunk, True) == (chunk, None)
    kept, usage = scan_stream_chunk(b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\ndata: [DONE]\n\n', True)
    assert usage == {"prompt_tokens": 1} and kept == b"data: [DONE]\n\n"


def test_access_is_off_unless_the_runtime_asks(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMOS_GUARD_KEYS", raising=False)
    assert Access.from_env(str(tmp_path)) is None


def test_the_runtime_hands_the_guard_each_new_table_and_the_names_it_serves(tmp_path):
    from llmos_runtime.keysync import FileSource, KeyTableWriter

    source_file, guard_dir = tmp_path / "table.json", tmp_path / "guard"
    guard_dir.mkdir()
    served = ["tiny"]
    writer = KeyTableWriter(guard_dir, lambda: served)

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(FileSource(source_file, writer, interval=0.02).run(stop))
        await asyncio.wait_for(writer.loaded.wait(), 2)  # no file yet: an empty table (nobody may call)
        assert KeyTable.loads((guard_dir / "keys.json").read_text()).keys == {}
        source_file.write_text(json.dumps(table_json([entry(KEY_A, "a")], tenant="acme")))
        await asyncio.sleep(0.2)
        table = KeyTable.loads((guard_dir / "keys.json").read_text())
        assert list(table.keys) == [key_hash(KEY_A)] and table.served == frozenset({"tiny"})
        served.append("lora-a")  # an adapter loaded: its name becomes a metrics label
        await asyncio.sleep(0.2)
        assert KeyTable.loads((guard_dir / "keys.json").read_text()).served == frozenset({"tiny", "lora-a"})
        stop.set()
        await task

    asyncio.run(go())
