"""Before the replica turns ready: is the guard in force in front of this engine?

vLLM's SageMaker bootstrap rebuilds the middleware stack around ``--middleware`` and can add middlewares and routes
of its own; another engine image may order them differently. So the runtime asks the engine itself, once it is up:

- without the token, management routes (vLLM's adapter API, SageMaker's ``/invocations`` and ``/adapters``,
  ``/metrics``) must get the guard's own refusal (404 with ``X-LLMOS-Guard: refused``), not an engine's answer;
- with the token, the runtime's own routes answer (the guard's in-flight count, vLLM's ``/metrics`` that the
  watchdog reads).

Otherwise the runtime refuses to serve (exit 5, the termination message names the route).
"""

from __future__ import annotations

import aiohttp

from .guard import GUARD_HEADER, GUARD_REFUSED, INFLIGHT_PATH

# Routes a tenant's client must never reach; each answer must be the guard's.
PROBES: tuple[tuple[str, str, dict | None], ...] = (
    ("POST", "/v1/load_lora_adapter", {"lora_name": "llmos-self-test", "lora_path": "/nonexistent"}),
    ("POST", "/invocations", {}),
    ("POST", "/adapters", {"name": "llmos-self-test", "src": "/nonexistent"}),
    ("GET", "/metrics", None),
)


async def guard_problem(url: str, headers: dict[str, str], timeout: float = 30.0) -> str | None:
    """One line naming what is wrong with the guard in front of the engine at ``url``, or None.

    ``headers`` carry the runtime's token (and the engine's API key, if any)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            for method, path, body in PROBES:
                async with s.request(method, url + path, json=body) as r:
                    if r.status != 404 or r.headers.get(GUARD_HEADER, "").encode() != GUARD_REFUSED:
                        return (f"{method} {path} without the runtime's token answered HTTP {r.status} "
                                f"from the engine, not the guard's refusal")
            for path in (INFLIGHT_PATH, "/metrics"):
                async with s.get(url + path, headers=headers) as r:
                    if r.status != 200:
                        return f"GET {path} with the runtime's token answered HTTP {r.status}"
                    if path == INFLIGHT_PATH and "inflight" not in await r.json(content_type=None):
                        return f"GET {path} with the runtime's token did not reach the guard"
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        return f"the engine did not answer the guard's self-test: {type(e).__name__}: {e}"
    return None
