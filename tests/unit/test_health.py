"""What the liveness probe judges (kube/health.py): informers synced and turning, workers alive and not stuck."""

from __future__ import annotations

import threading
import time

import pytest

from llmos_operator.kube.health import Health
from llmos_operator.kube.informer import Informer, Store
from llmos_operator.kube.workqueue import WorkQueue

pytestmark = pytest.mark.unit


def test_a_starting_operator_is_alive_and_an_unsynced_one_is_not_once_its_time_is_up():
    store = Store({"Tenant": Informer(None, "Tenant")})
    health = Health(store, WorkQueue(), sync_within=60)
    assert health.informer_problems() == []  # still listing: alive
    health.started -= 61
    assert health.informer_problems() == ["informers not synced: Tenant"]
    store["Tenant"].synced.set()
    assert health.informer_problems() == []


def test_a_worker_holding_one_key_too_long_is_stuck():
    queue = WorkQueue()
    worker = threading.Thread(target=lambda: None)
    worker.start()
    worker.join()
    health = Health(Store({}), queue, [worker], stuck_after=0.05)
    assert health.worker_problems() == [f"workers dead: {worker.name}"]
    health = Health(Store({}), queue, [], stuck_after=0.05)
    queue.add(("Tenant", "t"))
    assert queue.get(timeout=1) == ("Tenant", "t")
    assert health.worker_problems() == []
    time.sleep(0.1)
    (problem,) = health.worker_problems()
    assert "('Tenant', 't')" in problem and "more than 0 s" in problem
    queue.done(("Tenant", "t"))
    assert health.worker_problems() == []
