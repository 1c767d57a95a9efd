"""Zero failed requests while the weights are replaced.

Two runtimes serving revision 1 sit behind a small local round-robin load balancer that routes only to replicas whose
/readyz is 200 and retries a request elsewhere only when a replica refused it without doing any work (connection
refused or 503, what a draining runtime answers). Under a steady stream of completions, chat completions and
streaming completions, the first is replaced by a runtime serving revision 2: start one more (surge; the stream is
lighter while its engine starts), wait until it is ready, SIGTERM the old one (which drains) while a long stream sent
straight to it is in flight; then the second old one drains the same way while the new one serves. Every request
must succeed. (One surge, not two: each engine start under load costs 3-4 minutes of the CI budget on 2 cores, and
tests/engine/test_rolling_update.py rolls replicas through the operator and the Deployment controller too.)
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

from tests.engine.conftest import Launcher, record
from tests.support.lb import RoundRobinLB
from tests.support.load import LoadGenerator, sse_lines
from tests.support.tiny_model import TestModels

pytestmark = pytest.mark.engine

# The runtime's production default (it fits the pod's 120 s grace period). With 60 s a 400-token stream pinned to a
# replica failed to finish once while a new engine compiled beside it on 2 cores (1.8-17 tokens/s).
DRAIN_TIMEOUT = 100.0
STEADY_PAUSE = 0.1  # s between one worker's requests
STARTUP_PAUSE = 1.0  # while a new engine starts


class PinnedStream(threading.Thread):
    """A long streaming completion sent straight to one replica — a client whose connection is already open when
    that replica is told to stop. It must complete in full."""

    def __init__(self, api: str, max_tokens: int = 200):
        super().__init__(daemon=True)
        self.api, self.max_tokens = api, max_tokens
        self.first = threading.Event()
        self.error: str | None = "not finished"
        self.tokens = 0

    def run(self) -> None:
        try:
            with httpx.Client(timeout=300) as c, c.stream("POST", self.api + "/v1/completions", json={
                "model": "tiny", "prompt": "stay", "max_tokens": self.max_tokens, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True},
            }) as r:
                if r.status_code != 200:
                    self.error = f"HTTP {r.status_code}"
                    return
                done = False
                for line in sse_lines(r):
                    self.first.set()
                    if line == "data: [DONE]":
                        done = True
                        break
                    if line.startswith("data: "):
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            self.tokens = usage["completion_tokens"]
                self.error = None if done and self.tokens == self.max_tokens else f"incomplete: {self.tokens} tokens"
        except httpx.HTTPError as e:
            self.error = repr(e)
        finally:
            self.first.set()


def _wait(cond, timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.timeout(2400)
def test_replace_revision_with_zero_failed_requests(test_models: TestModels, launcher: Launcher):
    def start(name: str, model):
        return launcher.start(
            name,
            source=f"file://{model}",
            signature=model / "model.sig",
            trusted_keys=[test_models.public_key],
            drain_timeout=DRAIN_TIMEOUT,
        )

    lb = RoundRobinLB(check_interval=1.0).start()  # a readiness period, coarser than the drain
    load: LoadGenerator | None = None
    try:
        old = [start(f"old-{i}", test_models.model_v1) for i in range(2)]
        for rp in old:
            lb.add(rp.name, rp.api, rp.health)
        starts = [rp.wait_ready(timeout=900) for rp in old]
        record("replace: 2 runtimes started together, ready after (s)", [round(s, 1) for s in starts])
        _wait(lambda: len(lb.ready_names()) == 2, 10, "the load balancer to see both replicas")

        root_v1 = httpx.get(lb.url + "/v1/models", timeout=30).json()["data"][0]["root"]
        assert root_v1 == str(test_models.model_v1)

        load = LoadGenerator(lb.url, "tiny", workers=2, pause=STEADY_PAUSE, max_seconds=2000).start()
        _wait(lambda: load.stats.ok >= 30, 120, "steady traffic")

        new_starts, inflight_at_sigterm, drains, pinned_ok = [], [], [], 0
        new = None
        for o in old:
            if new is None:
                # A lighter stream while the new engine starts (at full rate its start-up took 235-338 s instead of
                # about 90 on the 2 shared cores); the full rate again before and through the SIGTERM and the drain.
                load.pause = STARTUP_PAUSE
                new = start("new-0", test_models.model_v2)  # surge one
                lb.add(new.name, new.api, new.health)
                new_starts.append(round(new.wait_ready(timeout=900), 1))  # under load
                load.pause = STEADY_PAUSE
                _wait(lambda: new.name in lb.ready_names(), 10, f"the load balancer to see {new.name}")
            sent = load.stats.sent
            _wait(lambda: load.stats.sent >= sent + 10, 60, "full-rate traffic again")
            pinned = PinnedStream(o.api)
            pinned.start()
            assert pinned.first.wait(120), "the pinned stream did not start"
            t = time.monotonic()
            o.terminate()  # what the kubelet does (after the 5 s preStop sleep, which is not needed here)
            code = o.wait(timeout=DRAIN_TIMEOUT + 60)
            drains.append(round(time.monotonic() - t, 2))
            pinned.join(timeout=60)
            assert pinned.error is None, f"stream in flight on {o.name} at SIGTERM: {pinned.error}"
            pinned_ok += 1
            assert code == 0, o.log_tail()
            assert o.group_alive() == [], "vLLM outlived its runtime"
            lb.remove(o.name)
            m = re.search(r"SIGTERM: draining \(.*; (\d+) in flight\)", o.log_path.read_text())
            inflight_at_sigterm.append(int(m.group(1)) if m else None)
            # traffic keeps flowing, now also to the new replica
            _wait(lambda: load.stats.backends.get(new.name, 0) > 0, 120, f"{new.name} to answer requests")
        # a little steady state on revision 2 only
        sent = load.stats.sent
        _wait(lambda: load.stats.sent >= sent + 20, 120, "traffic on the new revision")
        stats = load.stop()
        load = None

        record("replace: new runtime ready after, under load (s)", new_starts)
        record("replace: old runtime drain+stop (s)", drains)
        record("replace: requests in flight at each SIGTERM", inflight_at_sigterm)
        record("replace: requests sent / ok / failed (streams)",
               f"{stats.sent} / {stats.ok} / {stats.failed} ({stats.streams})")
        record("replace: answered by replica", stats.backends)
        record("replace: load balancer retries after a refusal", lb.stats.retried)
        record("replace: 200-token streams in flight on the old replica at SIGTERM, completed", pinned_ok)

        assert stats.failed == 0, f"{stats.failed} of {stats.sent} requests failed: {stats.failures}"
        assert stats.sent == stats.ok
        assert stats.sent >= 100
        assert {"new-0", "old-0", "old-1"} <= set(stats.backends), stats.backends
        root = httpx.get(lb.url + "/v1/models", timeout=30).json()["data"][0]["root"]
        assert root == str(test_models.model_v2)  # every replica now serves revision 2
    finally:
        if load is not None:
            load.stop()
        lb.stop()
