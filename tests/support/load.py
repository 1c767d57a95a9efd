"""A steady stream of OpenAI requests (completions, chat, streaming completions) with strict success checks.

Bounded in time and count; every request that does not end in a complete, well-formed answer is a failure.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    streams: int = 0
    failures: list[str] = field(default_factory=list)
    backends: dict[str, int] = field(default_factory=dict)


def check_completion(r: httpx.Response) -> str | None:
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:200]}"
    try:
        body = r.json()
        body["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"malformed body: {r.text[:200]}"
    return None


def sse_lines(r: httpx.Response):
    """The lines of a server-sent event stream, split where SSE splits them (LF, CRLF). Not ``iter_lines()``: httpx
    splits like ``str.splitlines`` (U+2028, U+0085, ...), and a token of the tests' random-weight model that decodes
    to one of those, sent raw inside a JSON string, cut an event in two ("malformed chunk" in a rolling update)."""
    buffer = b""
    for chunk in r.iter_bytes():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8")
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8")


def sse_data(r: httpx.Response):
    """The `data:` payloads of an OpenAI server-sent event stream, then None for its `[DONE]`."""
    for line in sse_lines(r):
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            yield None
            return
        yield data


def read_stream(r: httpx.Response) -> tuple[str | None, int]:
    """Consume an SSE stream; returns (error or None, number of data chunks)."""
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.read()[:200]!r}", 0
    chunks, done, finish = 0, False, None
    for data in sse_data(r):
        if data is None:
            done = True
            break
        chunks += 1
        try:
            ev = json.loads(data)
        except ValueError:
            return f"malformed chunk: {data[:200]}", chunks
        if "error" in ev:
            return f"error event: {data[:200]}", chunks
        for c in ev.get("choices", []):
            finish = c.get("finish_reason") or finish
    if not done:
        return "stream ended without [DONE]", chunks
    if finish is None:
        return "stream without finish_reason", chunks
    return None, chunks


class LoadGenerator:
    def __init__(self, base_url: str, model: str, *, workers: int = 2, pause: float = 0.02,
                 max_seconds: float = 1800.0, max_requests: int = 200_000, timeout: float = 120.0):
        self.base_url = base_url
        self.model = model
        self.workers = workers
        self.pause = pause
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.timeout = timeout
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 10)
        return self.stats

    def _one(self, client: httpx.Client, n: int) -> tuple[str | None, str]:
        kind = n % 3
        if kind == 0:
            r = client.post("/v1/completions", json={"model": self.model, "prompt": f"hello {n}", "max_tokens": 8})
            return check_completion(r), r.headers.get("x-test-backend", "?")
        if kind == 1:
            r = client.post("/v1/chat/completions", json={
                "model": self.model, "messages": [{"role": "user", "content": f"hi {n}"}], "max_tokens": 8})
            return check_completion(r), r.headers.get("x-test-backend", "?")
        with client.stream("POST", "/v1/completions", json={
            "model": self.model, "prompt": f"stream {n}", "max_tokens": 48, "ignore_eos": True, "stream": True,
        }) as r:
            err, _ = read_stream(r)
            with self._lock:
                self.stats.streams += 1
            return err, r.headers.get("x-test-backend", "?")

    def _worker(self, idx: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        n = idx
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if self.stats.sent >= self.max_requests:
                        return
                    self.stats.sent += 1
                try:
                    err, backend = self._one(client, n)
                except httpx.HTTPError as e:
                    err, backend = f"{type(e).__name__}: {e}", "?"
                with self._lock:
                    if err is None:
                        self.stats.ok += 1
                        self.stats.backends[backend] = self.stats.backends.get(backend, 0) + 1
                    else:
                        self.stats.failed += 1
                        if len(self.stats.failures) < 20:
                            self.stats.failures.append(f"#{n} via {backend}: {err}")
                n += self.workers
                time.sleep(self.pause)
