"""``llmos usage --prometheus URL [--tenant T] [--from F] [--to T] [--csv]``: a bill from what Prometheus scraped —
GPU-hours reserved and serving per tenant and GPU class (the operator's ``llmos_tenant_gpu_seconds_*_total``), and
requests, prompt and completion tokens and errors per key and model (the runtimes' ``llmos_runtime_key_*_total``).

How a counter's growth over [from, to] is computed (``increase_between``, pure): from its raw samples, the value at
each end — interpolated for the GPU counters, which grow linearly between ledger changes (exact unless the ledger
changed within the scrape interval at that end); the last sample's for token and request counts (steps: a request
between the last scrape and an end is counted in the window after) — and the samples in between added up with
resets (a restarted pod, a new period) counted from zero. That needs the raw samples of the window, so windows
longer than ``RAW_WINDOW_SECONDS`` use Prometheus' ``increase()`` instead (it extrapolates at the ends: off by at
most the growth of one scrape interval at each end).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .core.api_keys import parse_duration
from .core.usage import period_of, period_start

RAW_WINDOW_SECONDS = 86400.0
PAD_SECONDS = 120.0  # samples fetched beyond each end, to interpolate there
GPU_SERIES = ("llmos_tenant_gpu_seconds_reserved_total", "llmos_tenant_gpu_seconds_serving_total")
TOKEN_SERIES = "llmos_runtime_key_tokens_total"
REQUEST_SERIES = "llmos_runtime_key_requests_total"

Sample = tuple[float, float]


def value_at(samples: Sequence[Sample], t: float, extrapolate: bool = False) -> float:
    """A counter's value at ``t`` from its sorted samples, 0 before the first. A count of events is a step: the
    last sample's value (what happened since is counted in the next window). With ``extrapolate`` (a counter of
    time, growing at a steady rate between changes: GPU-seconds) it is interpolated between the samples around
    ``t``, and carried at the last slope for at most one interval past the last."""
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] > t]
    if not before:
        return 0.0
    t0, v0 = before[-1]
    if not extrapolate:
        return v0  # a count of events (tokens, requests) is a step: what the last sample saw
    if after:
        t1, v1 = after[0]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if v1 >= v0 else v0
    if len(before) >= 2:
        tp, vp = before[-2]
        if v0 >= vp and t - t0 <= t0 - tp:
            return v0 + (v0 - vp) * (t - t0) / (t0 - tp)
    return v0


def increase_between(samples: Sequence[Sample], start: float, end: float, extrapolate: bool = False) -> float:
    """How much a counter grew over [start, end], resets counted from zero."""
    samples = sorted(samples)
    prev = value_at(samples, start, extrapolate)
    total = 0.0
    for _, v in (s for s in samples if start < s[0] < end):
        total += v if v < prev else v - prev
        prev = v
    last = value_at(samples, end, extrapolate)
    total += last if last < prev else last - prev
    return total


class Prometheus:
    def __init__(self, url: str, timeout: float = 30):
        self.url, self.timeout = url.rstrip("/"), timeout

    def query(self, promql: str, at: float) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql, "time": f"{at:.3f}"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=self.timeout) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {body.get('error')}")
        return body["data"]["result"]


def _selector(name: str, tenant: str | None) -> str:
    return f'{name}{{tenant="{tenant}"}}' if tenant else name


def growth(prom: Prometheus, name: str, tenant: str | None, start: float, end: float,
           by: Sequence[str], extrapolate: bool = False) -> dict[tuple[str, ...], float]:
    """Each series' growth over [start, end], summed by the labels ``by``."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    if end - start <= RAW_WINDOW_SECONDS:
        window = int(end - start + 2 * PAD_SECONDS)
        for series in prom.query(f"{_selector(name, tenant)}[{window}s]", min(end + PAD_SECONDS, time.time())):
            samples = [(float(t), float(v)) for t, v in series["values"]]
            out[tuple(series["metric"].get(k, "") for k in by)] += increase_between(samples, start, end, extrapolate)
    else:
        for series in prom.query(f"sum by ({', '.join(by)}) (increase({_selector(name, tenant)}"
                                 f"[{int(end - start)}s]))", end):
            out[tuple(series["metric"].get(k, "") for k in by)] += float(series["value"][1])
    return out


def bill(prom: Prometheus, tenant: str | None, start: float, end: float) -> dict[str, list[dict[str, Any]]]:
    gpu_by = ("tenant", "gpu_class")
    reserved = growth(prom, GPU_SERIES[0], tenant, start, end, gpu_by, extrapolate=True)
    serving = growth(prom, GPU_SERIES[1], tenant, start, end, gpu_by, extrapolate=True)
    gpu_rows = [{"tenant": k[0], "gpu_class": k[1], "gpu_hours_reserved": reserved.get(k, 0.0) / 3600,
                 "gpu_hours_serving": serving.get(k, 0.0) / 3600} for k in sorted(set(reserved) | set(serving))]
    tok_by = ("tenant", "key", "model", "kind")
    tokens = growth(prom, TOKEN_SERIES, tenant, start, end, tok_by)
    requests = growth(prom, REQUEST_SERIES, tenant, start, end, ("tenant", "key", "model", "code"))
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}

    def row(t: str, k: str, m: str) -> dict[str, Any]:
        return rows.setdefault((t, k, m), {"tenant": t, "key": k, "model": m, "requests": 0, "prompt_tokens": 0,
                                           "completion_tokens": 0, "errors": 0})

    for (t, k, m, kind), n in tokens.items():
        row(t, k, m)[f"{kind}_tokens"] += round(n)
    for (t, k, m, code), n in requests.items():
        r = row(t, k, m)
        r["requests"] += round(n)
        if not code.startswith("2"):
            r["errors"] += round(n)
    key_rows = [r for _, r in sorted(rows.items()) if any(r[c] for c in ("requests", "prompt_tokens",
                                                                            "completion_tokens"))]
    return {"gpu": gpu_rows, "keys": key_rows}


def parse_when(text: str | None, default: float, now: float) -> float:
    if not text or text == "now":
        return default if not text else now
    try:
        return now - parse_duration(text).total_seconds()
    except ValueError:
        pass
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def print_bill(b: dict[str, list[dict[str, Any]]], start: float, end: float, as_csv: bool) -> None:
    if as_csv:
        w = csv.writer(sys.stdout)
        w.writerow(["section", "tenant", "gpu_class", "key", "model", "gpu_hours_reserved", "gpu_hours_serving",
                    "requests", "prompt_tokens", "completion_tokens", "errors", "from", "to"])
        for r in b["gpu"]:
            w.writerow(["gpu", r["tenant"], r["gpu_class"], "", "", f"{r['gpu_hours_reserved']:.6f}",
                        f"{r['gpu_hours_serving']:.6f}", "", "", "", "", _iso(start), _iso(end)])
        for r in b["keys"]:
            w.writerow(["tokens", r["tenant"], "", r["key"], r["model"], "", "", r["requests"], r["prompt_tokens"],
                        r["completion_tokens"], r["errors"], _iso(start), _iso(end)])
        return
    print(f"usage from {_iso(start)} to {_iso(end)}")
    _table(["TENANT", "GPU CLASS", "GPU-HOURS RESERVED", "GPU-HOURS SERVING"],
           [[r["tenant"], r["gpu_class"], f"{r['gpu_hours_reserved']:.3f}", f"{r['gpu_hours_serving']:.3f}"]
            for r in b["gpu"]])
    print()
    _table(["TENANT", "KEY", "MODEL", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS", "ERRORS"],
           [[r["tenant"], r["key"], r["model"], str(r["requests"]), str(r["prompt_tokens"]),
             str(r["completion_tokens"]), str(r["errors"])] for r in b["keys"]])


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _usage(args: argparse.Namespace) -> int:
    now = time.time()
    end = parse_when(args.to, now, now)
    start = parse_when(args.from_, period_start(period_of(end)), now)
    if start >= end:
        print("llmos: --from must be before --to", file=sys.stderr)
        return 2
    print_bill(bill(Prometheus(args.prometheus), args.tenant, start, end), start, end, args.csv)
    return 0


def add_usage_command(sub: Any) -> None:
    p = sub.add_parser("usage", help="who used what: GPU-hours per tenant and class, tokens per key and model")
    p.add_argument("--prometheus", required=True, help="Prometheus' URL (it scrapes the operator and the runtimes)")
    p.add_argument("--tenant", help="one tenant only")
    p.add_argument("--from", dest="from_", help="start: RFC 3339, or a duration ago (24h, 7d); default: this "
                   "month's start (UTC)")
    p.add_argument("--to", help="end: RFC 3339, a duration ago, or now (default)")
    p.add_argument("--csv", action="store_true", help="CSV instead of tables")
    p.set_defaults(func=_usage)
