"""Reading a replica's load out of vLLM's Prometheus text: three gauges, fed chunk by chunk. Pure.

The operator reads ``/metrics`` of every ready replica of every autoscaled deployment every few seconds, so reading
must cost little and hold little, whatever a (possibly hostile) pod answers: the text is scanned as it arrives, only
lines that start with one of the three names are parsed, at most one incomplete line is kept (``MAX_LINE`` bytes;
a longer one is skipped), and the values must be finite numbers. Series of several engines of one pod (data
parallel: label ``engine``) are summed for the request counts and averaged for the KV-cache use.

The names are vLLM's (``vllm/v1/metrics/loggers.py`` of the installed vLLM): ``vllm:num_requests_waiting``,
``vllm:num_requests_running`` and ``vllm:kv_cache_usage_perc`` (a fraction: 1 is 100 %).
"""

from __future__ import annotations

import math

from .autoscaling import Load

WAITING = b"vllm:num_requests_waiting"
RUNNING = b"vllm:num_requests_running"
KV_CACHE = b"vllm:kv_cache_usage_perc"
NAMES = (WAITING, RUNNING, KV_CACHE)
MAX_LINE = 64 * 1024
MAX_SERIES = 256  # series of one name kept (an engine per GPU at most, in practice)
# What the operator asks for: vLLM's /metrics (prometheus_client) serves only these families when named; a runtime
# that does not pass the names on answers everything, which the scanner reads all the same.
QUERY = "&".join(f"name[]={n.decode()}" for n in NAMES)


class MetricsScanner:
    """Feed the body of a ``/metrics`` answer in chunks; ``load()`` is the replica's load."""

    def __init__(self) -> None:
        self._pending = b""
        self._skipping = False  # inside a line longer than MAX_LINE: drop it up to its end
        self._values: dict[bytes, list[float]] = {n: [] for n in NAMES}

    def feed(self, chunk: bytes) -> None:
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                return
            self._skipping = False
            chunk = chunk[end + 1:]
        data = self._pending + chunk
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        if len(self._pending) > MAX_LINE:
            self._pending, self._skipping = b"", True
        if cut:
            self._scan(data[:cut])

    def _scan(self, lines: bytes) -> None:
        """``lines``: complete lines (each ends with a newline), the first starting at offset 0."""
        for name in NAMES:
            start = 0 if lines.startswith(name) else _next_line(lines, name, 0)
            while start >= 0:
                end = lines.find(b"\n", start)
                self._line(name, lines[start:end])
                start = _next_line(lines, name, end)

    def _line(self, name: bytes, line: bytes) -> None:
        rest = line[len(name):]
        if rest[:1] == b"{":
            close = rest.rfind(b"}")  # label values may hold spaces; nothing after the labels holds a brace
            if close < 0:
                return
            rest = rest[close + 1:]
        elif rest[:1] != b" ":
            return  # another name that starts with this one (vllm:num_requests_waiting_by_reason)
        fields = rest.split()
        if not fields:
            return
        try:
            value = float(fields[0])
        except ValueError:
            return
        if math.isfinite(value) and value >= 0 and len(self._values[name]) < MAX_SERIES:
            self._values[name].append(value)

    def load(self) -> Load:
        if self._pending and not self._skipping:
            self._scan(self._pending + b"\n")  # a last line without its newline
            self._pending = b""

        def total(name: bytes) -> float | None:
            return sum(self._values[name]) if self._values[name] else None

        kv = self._values[KV_CACHE]
        return Load(waiting=total(WAITING), running=total(RUNNING), kv_cache=sum(kv) / len(kv) if kv else None)


def _next_line(lines: bytes, name: bytes, after: int) -> int:
    """Offset of the next line at or after ``after`` that starts with ``name``, or -1."""
    found = lines.find(b"\n" + name, after)
    return found + 1 if found >= 0 else -1


def scan(text: bytes) -> Load:
    """The load in a whole ``/metrics`` body."""
    scanner = MetricsScanner()
    scanner.feed(text)
    return scanner.load()
