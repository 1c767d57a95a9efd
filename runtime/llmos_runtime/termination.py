"""How long a model pod takes to stop, in one place: the runtime's drain uses these figures and the operator renders
``terminationGracePeriodSeconds`` from ``TerminationBudget.grace_period_seconds()``, so the kubelet never SIGKILLs a
pod that is still doing what it promised. Pure (no I/O); imported by the operator.

The timeline of a pod deletion (docs/runtime.md, "Drain"):

1. ``pre_stop``: the container's preStop sleep; the pod is already terminating, so endpoints start dropping it.
2. SIGTERM. ``drain_grace``: ``/readyz`` is 503 at once, but new requests are still served (each answer with
   ``Connection: close``), because load balancers keep sending for as long as the endpoint removal takes to reach
   them (kube-proxy, gateways), and most of them do not retry a POST.
3. ``drain_timeout``: new requests are refused (503); the ones in flight finish.
4. ``flush``: the last bytes of the last responses reach their sockets.
5. ``engine_stop``: vLLM gets SIGTERM and this long to exit, then SIGKILL; ``kill_wait``: until its processes are gone.
6. ``close``: the runtime's own servers close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

DEFAULT_PRE_STOP = 5.0
DEFAULT_DRAIN_GRACE = 10.0
DEFAULT_DRAIN_TIMEOUT = 100.0
FLUSH_SECONDS = 1.0
DEFAULT_ENGINE_STOP = 15.0
KILL_WAIT_SECONDS = 5.0
CLOSE_SECONDS = 2.0


@dataclass(frozen=True)
class TerminationBudget:
    pre_stop: float = DEFAULT_PRE_STOP
    drain_grace: float = DEFAULT_DRAIN_GRACE
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    flush: float = FLUSH_SECONDS
    engine_stop: float = DEFAULT_ENGINE_STOP
    kill_wait: float = KILL_WAIT_SECONDS
    close: float = CLOSE_SECONDS

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0")

    def total(self) -> float:
        """Seconds from the pod's deletion to the runtime's exit, at worst."""
        return sum(getattr(self, f.name) for f in fields(self))

    def grace_period_seconds(self) -> int:
        """The pod's ``terminationGracePeriodSeconds``: the whole budget (the kubelet counts the preStop hook in)."""
        return math.ceil(self.total())

    def describe(self) -> str:
        parts = " + ".join(f"{f.name.replace('_', ' ')} {getattr(self, f.name):g}" for f in fields(self))
        return f"{parts} = {self.total():g} s"
