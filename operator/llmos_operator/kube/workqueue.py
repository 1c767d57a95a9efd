"""A work queue of object keys, as controllers use them: a key is never processed by two workers at once, keys added
while queued collapse into one, and a failed key comes back after an exponential back-off (so a bad object never
hot-loops the operator). Ready keys are served round-robin across groups (``group_of``: the namespace), so a burst of
one tenant's keys waits behind nobody's but its own."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable


def _one_group(key: Hashable) -> Hashable:
    return None


class WorkQueue:
    def __init__(self, base_delay: float = 0.5, max_delay: float = 60.0,
                 group_of: Callable[[Hashable], Hashable] = _one_group):
        self._cond = threading.Condition()
        self._group_of = group_of
        self._ready: dict[Hashable, deque[Hashable]] = {}  # group → FIFO of its keys ready now
        self._turns: deque[Hashable] = deque()     # groups with ready keys, in round-robin order
        self._queued: set[Hashable] = set()        # keys in _ready
        self._delayed: list[tuple[float, int, Hashable]] = []  # (due, seq, key) heap; stale entries skipped
        self._due: dict[Hashable, float] = {}      # key → when its one delayed re-queue is due (earliest wins)
        self._processing: dict[Hashable, float] = {}  # key → when a worker took it
        self._dirty: set[Hashable] = set()         # added while processing: requeue when done
        self._failures: dict[Hashable, int] = {}
        self._seq = itertools.count()
        self._closed = False
        self.base_delay, self.max_delay = base_delay, max_delay

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        with self._cond:
            if self._closed:
                return
            if delay > 0:
                self._delay(key, time.monotonic() + delay)
            elif key in self._processing:
                self._dirty.add(key)
            elif key not in self._queued:
                self._push(key)
            self._cond.notify()

    def _delay(self, key: Hashable, due: float) -> None:
        """One delayed re-queue per key: a later request for a key already due sooner changes nothing."""
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        heapq.heappush(self._delayed, (due, next(self._seq), key))

    def _push(self, key: Hashable) -> None:
        group = self._group_of(key)
        if group not in self._ready:
            self._ready[group] = deque()
            self._turns.append(group)
        self._ready[group].append(key)
        self._queued.add(key)

    def _pop(self) -> Hashable | None:
        """The next key no worker holds, taking groups in turn."""
        for _ in range(len(self._turns)):
            group = self._turns[0]
            self._turns.rotate(-1)
            keys = self._ready[group]
            for i, key in enumerate(keys):
                if key not in self._processing:
                    del keys[i]
                    if not keys:
                        del self._ready[group]
                        self._turns.remove(group)
                    self._queued.discard(key)
                    return key
        return None

    def failures(self, key: Hashable) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def next_backoff(self, key: Hashable) -> float:
        """The delay a failure of ``key`` now would get."""
        return min(self.base_delay * (2 ** self.failures(key)), self.max_delay)

    @property
    def closed(self) -> bool:
        return self._closed

    def _promote_due(self) -> float | None:
        """Move delayed keys that are due into the ready list; return seconds until the next one is due."""
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._due.get(key) != due:
                continue  # superseded by an earlier due time, already promoted
            del self._due[key]
            if key in self._processing:
                self._dirty.add(key)
            elif key not in self._queued:
                self._push(key)
        while self._delayed and self._due.get(self._delayed[0][2]) != self._delayed[0][0]:
            heapq.heappop(self._delayed)  # stale
        return (self._delayed[0][0] - now) if self._delayed else None

    def get(self, timeout: float | None = None) -> Hashable | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                wait = self._promote_due()
                key = self._pop()
                if key is not None:
                    self._processing[key] = time.monotonic()
                    return key
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                waits = [w for w in (wait, remaining) if w is not None]
                self._cond.wait(min(waits) if waits else None)

    def done(self, key: Hashable, error: bool = False) -> float | None:
        """Mark a key processed. On error it is retried after a back-off, returned here (seconds)."""
        retry_in = None
        with self._cond:
            self._processing.pop(key, None)
            if error:
                n = self._failures.get(key, 0)
                self._failures[key] = n + 1
                retry_in = min(self.base_delay * (2 ** n), self.max_delay)
                self._delay(key, time.monotonic() + retry_in)
            else:
                self._failures.pop(key, None)
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._queued:
                    self._push(key)
            self._cond.notify_all()
        return retry_in

    def longest_processing(self) -> tuple[Hashable, float] | None:
        """The key a worker has held longest, and for how many seconds (None: all workers idle)."""
        with self._cond:
            if not self._processing:
                return None
            key, since = min(self._processing.items(), key=lambda item: item[1])
        return key, time.monotonic() - since

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(keys) for keys in self._ready.values()) + len(self._due)


def run_workers(queue: WorkQueue, handle: Callable[[Hashable], None], count: int,
                on_error: Callable[[Hashable, BaseException, float | None], None]) -> list[threading.Thread]:
    """Start `count` daemon threads that process keys from `queue` with `handle` until the queue closes."""

    def loop() -> None:
        while True:
            key = queue.get()
            if key is None:
                return
            try:
                handle(key)
            except BaseException as exc:  # noqa: BLE001 — one object's failure must not stop the worker
                retry_in = queue.done(key, error=True)
                on_error(key, exc, retry_in)
            else:
                queue.done(key)

    threads = [threading.Thread(target=loop, name=f"llmos-worker-{i}", daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    return threads
