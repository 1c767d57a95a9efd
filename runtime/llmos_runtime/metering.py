"""Who used what: per key and model, requests by status code and prompt/completion tokens, counted from vLLM's own
``usage`` of each answer (streams report it because the guard asks for it: ``stream_options.include_usage``).

The counters live in the engine's process (the guard); the runtime's ``/metrics`` appends their exposition, which
the guard serves to the runtime's token only. Label values are bounded: ``key`` is ``<namespace>/<secret>`` of a
known key (or ``-`` for a request without a valid one), ``model`` a name this pod serves (or ``other``).

Standard library only: it runs inside the engine's process.
"""

from __future__ import annotations

import json
from collections import defaultdict

NO_KEY = "-"
OTHER_MODEL = "other"
USAGE_MARK = b'"usage"'
REQUESTS_METRIC = "llmos_runtime_key_requests"  # _total: by tenant, key, model, code
TOKENS_METRIC = "llmos_runtime_key_tokens"  # _total: by tenant, key, model, kind (prompt, completion)
REFUSALS_METRIC = "llmos_runtime_limit_refusals"  # _total: 429s by tenant, limit, scope


def usage_tokens(usage: object) -> tuple[int, int]:
    """(prompt, completion) tokens of an OpenAI ``usage`` object (or the Responses/Anthropic spelling)."""
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0
    completion = usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0
    return int(prompt), int(completion)


def usage_of(document: object) -> dict | None:
    """The ``usage`` of an answer or stream event (top level, or under ``response`` for the Responses API)."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if isinstance(usage, dict):
        return usage
    inner = document.get("response")
    return inner.get("usage") if isinstance(inner, dict) and isinstance(inner.get("usage"), dict) else None


def scan_stream_chunk(chunk: bytes, strip_usage_event: bool) -> tuple[bytes, dict | None]:
    """Find the usage of a server-sent-events chunk (vLLM writes one or a few events per chunk). Returns the chunk
    to send on — without the usage-only event (``choices: []``) when the client did not ask for usage — and the
    usage found. Costs one substring search when the chunk has no usage (every event but the last)."""
    if USAGE_MARK not in chunk:
        return chunk, None
    found = None
    kept = []
    for event in chunk.split(b"\n\n"):
        if USAGE_MARK in event and event.startswith(b"data: {"):
            try:
                doc = json.loads(event[6:])
            except ValueError:
                kept.append(event)
                continue
            usage = usage_of(doc)
            if usage is not None:
                found = usage
                if strip_usage_event and isinstance(doc, dict) and doc.get("choices") == []:
                    continue
        kept.append(event)
    return b"\n\n".join(kept), found


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Meter:
    """Counters per (tenant, key, model); exposition in Prometheus' text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int], int] = defaultdict(int)  # (tenant, key, model, code)
        self.tokens: dict[tuple[str, str, str, str], int] = defaultdict(int)  # (tenant, key, model, kind)
        self.refusals: dict[tuple[str, str, str], int] = defaultdict(int)  # (tenant, limit, scope) of 429s

    def known(self, tenant: str, key: str, model: str) -> None:
        """Make a key's series exist at 0 before its first request, so that a rate or increase() over a window
        sees its first request too."""
        for kind in ("prompt", "completion"):
            self.tokens[(tenant, key, model, kind)] += 0

    def record(self, tenant: str, key: str, model: str, code: int, prompt: int = 0, completion: int = 0) -> None:
        self.requests[(tenant, key, model, code)] += 1
        if prompt or completion or code < 400:
            self.tokens[(tenant, key, model, "prompt")] += prompt
            self.tokens[(tenant, key, model, "completion")] += completion

    def refused(self, tenant: str, limit: str, scope: str) -> None:
        self.refusals[(tenant, limit, scope)] += 1

    def exposition(self) -> bytes:
        lines = ["# HELP llmos_runtime_key_requests_total requests by API key, model and status code",
                 "# TYPE llmos_runtime_key_requests_total counter"]
        for (tenant, key, model, code), n in sorted(self.requests.items()):
            lines.append(f'llmos_runtime_key_requests_total{{tenant="{_escape(tenant)}",key="{_escape(key)}",'
                         f'model="{_escape(model)}",code="{code}"}} {n}')
        lines += ["# HELP llmos_runtime_key_tokens_total tokens by API key and model (kind: prompt, completion), "
                  "from the engine's usage of each answer",
                  "# TYPE llmos_runtime_key_tokens_total counter"]
        for (tenant, key, model, kind), n in sorted(self.tokens.items()):
            lines.append(f'llmos_runtime_key_tokens_total{{tenant="{_escape(tenant)}",key="{_escape(key)}",'
                         f'model="{_escape(model)}",kind="{kind}"}} {n}')
        lines += ["# HELP llmos_runtime_limit_refusals_total requests refused with 429, by limit and scope",
                  "# TYPE llmos_runtime_limit_refusals_total counter"]
        for (tenant, limit, scope), n in sorted(self.refusals.items()):
            lines.append(f'llmos_runtime_limit_refusals_total{{tenant="{_escape(tenant)}",limit="{limit}",'
                         f'scope="{scope}"}} {n}')
        return ("\n".join(lines) + "\n").encode()
