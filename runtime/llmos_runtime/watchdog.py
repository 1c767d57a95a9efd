"""The engine watchdog's judgement, pure (the monitor feeds it what it polled; tests/unit/test_runtime_watchdog.py).

Inputs, all vLLM's own signals:

- ``health(now, ok)``: an answer of vLLM's ``/health`` (200 or not; a refused connection is "not"). A poll that
  does not answer is no input at all: under load ``/health`` shares vLLM's saturated event loop and may take
  seconds, which is not a fault.
- ``progress(now, pending, counters)``: the work waiting on the engine (vLLM's ``num_requests_running`` +
  ``num_requests_waiting``, or the guard's count of requests whose body is in and whose answer is not being written,
  whichever is larger: the guard sees a request the engine core has not reported yet) and the engine's progress
  counters (generation and prompt tokens, finished requests, KV-cache usage; ``None`` when the engine exports none,
  e.g. ``--disable-log-stats``).

Verdicts:

- hung: work pending and no counter moved for ``unready_after`` s → not ready; for ``dead_after`` s → not live. The
  clock starts when work appears; an idle engine is never judged hung.
- silent: no ``/health`` answer at all for ``unready_after`` s → not ready; ``dead_after`` s → not live.
- unhealthy: ``/health`` answered non-200 → not ready at once (vLLM says its engine is dead); not live once that
  lasted ``dead_after`` s (vLLM normally exits first, and the runtime with it).
"""

from __future__ import annotations

from dataclasses import dataclass

OK, UNREADY, DEAD = "ok", "unready", "dead"


@dataclass(frozen=True)
class Verdict:
    level: str  # ok, unready, dead
    state: str  # ok, hung, silent, unhealthy (the metric's state)
    reason: str = ""


class Watchdog:
    def __init__(self, unready_after: float, dead_after: float, now: float):
        if not 0 < unready_after <= dead_after:
            raise ValueError("need 0 < unready_after <= dead_after")
        self.unready_after, self.dead_after = unready_after, dead_after
        self.last_ok = now  # the last 200 from /health
        self.last_answer = now  # the last answer of /health, whatever it said
        self.unhealthy: str | None = None  # what the last non-200 answer said
        self.pending = 0
        self.stalled_since: float | None = None  # when work was last seen pending without progress
        self.counters: tuple[float, ...] | None = None
        self.blind = False  # the engine exports no progress counters: only /health is judged

    def health(self, now: float, ok: bool, detail: str = "") -> None:
        self.last_answer = now
        if ok:
            self.last_ok, self.unhealthy = now, None
        else:
            self.unhealthy = detail or "not healthy"

    def progress(self, now: float, pending: int, counters: tuple[float, ...] | None) -> None:
        self.blind = counters is None
        moved = counters != self.counters
        self.counters, self.pending = counters, pending
        if pending <= 0 or counters is None:
            self.stalled_since = None  # idle (or nothing to judge by)
        elif moved or self.stalled_since is None:
            self.stalled_since = now

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.stalled_since is None else now - self.stalled_since

    def verdict(self, now: float) -> Verdict:
        stalled, silent, bad = self.stalled_for(now), now - self.last_answer, now - self.last_ok
        # Silence first: an engine that answers nothing gives no progress samples either, so its stall clock only
        # repeats what was last seen before it went quiet.
        if silent >= self.unready_after:
            level = DEAD if silent >= self.dead_after else UNREADY
            return Verdict(level, "silent", f"engine did not answer /health for {silent:.0f}s")
        if stalled >= self.unready_after:
            level = DEAD if stalled >= self.dead_after else UNREADY
            return Verdict(level, "hung", f"engine hung: {self.pending} request(s) in flight and no token "
                           f"generated for {stalled:.0f}s")
        if self.unhealthy is not None:
            level = DEAD if bad >= self.dead_after else UNREADY
            return Verdict(level, "unhealthy", f"engine reports unhealthy for {bad:.0f}s: {self.unhealthy}")
        return Verdict(OK, "ok")


# vLLM's metrics the watchdog reads (summed over their labels: model, engine index, finish reason).
PENDING_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
PROGRESS_SERIES = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total",
                   "vllm:num_preemptions_total", "vllm:kv_cache_usage_perc")


def read_engine_metrics(text: str) -> tuple[int | None, tuple[float, ...] | None]:
    """(requests running + waiting, progress counters) from vLLM's Prometheus exposition; None for what is absent.

    Only the few lines of these series are handed to prometheus_client's parser (a whole exposition is tens of KB
    of histograms, read every few seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = PENDING_GAUGES + PROGRESS_SERIES
    lines = [ln for ln in text.splitlines() if ln.startswith(wanted) and _name(ln) in wanted]
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for s in family.samples:
            if s.name in wanted:
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    pending = None
    if all(g in sums for g in PENDING_GAUGES):
        pending = int(sum(sums[g] for g in PENDING_GAUGES))
    counters = tuple(sums.get(s, 0.0) for s in PROGRESS_SERIES) if "vllm:generation_tokens_total" in sums else None
    return pending, counters


def _name(sample_line: str) -> str:
    return sample_line.split("{", 1)[0].split(" ", 1)[0]
