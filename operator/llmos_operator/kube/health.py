"""What the liveness probe asks: are the informers synced and turning, are the workers alive and not stuck on one
key? kopf serves the endpoint (controller/manager.py registers these as ``kopf.on.probe`` handlers); this module
only judges."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .informer import Store
from .workqueue import WorkQueue


@dataclass
class Health:
    store: Store
    queue: WorkQueue
    workers: Sequence[threading.Thread] = ()
    stuck_after: float = 300.0  # seconds one key may hold a worker before the process counts as stuck
    sync_within: float = 300.0  # seconds from the start the first listing of every kind may take
    started: float = field(default_factory=time.monotonic)

    def informer_problems(self) -> list[str]:
        """Informers not synced once the start-up's time is up, or no longer turning. A process still listing is
        alive: a liveness probe must not restart an operator that is slow to list 10,000 objects."""
        starting = time.monotonic() - self.started < self.sync_within
        unsynced = [] if starting else [kind for kind, i in self.store.informers.items() if not i.synced.is_set()]
        stuck = self.store.stuck()
        out = []
        if unsynced:
            out.append(f"informers not synced: {', '.join(sorted(unsynced))}")
        if stuck:
            out.append(f"informers stuck (no listing, watch or event for too long): {', '.join(sorted(stuck))}")
        return out

    def worker_problems(self) -> list[str]:
        out = []
        dead = [t.name for t in self.workers if not t.is_alive()]
        if dead:
            out.append(f"workers dead: {', '.join(dead)}")
        longest = self.queue.longest_processing()
        if longest is not None and longest[1] > self.stuck_after:
            out.append(f"a worker has been reconciling {longest[0]} for {longest[1]:.0f} s "
                       f"(more than {self.stuck_after:.0f} s)")
        return out
