"""The controller's work queue: collapse, one worker per key, back-off, and fairness across namespaces."""

import pytest

from llmos_operator.kube.workqueue import WorkQueue

pytestmark = pytest.mark.unit


def by_namespace(key):
    return key[1] if len(key) == 3 else ""


def drain(q):
    out = []
    while (key := q.get(timeout=0)) is not None:
        out.append(key)
        q.done(key)
    return out


def test_repeated_adds_collapse_and_a_key_is_never_held_twice():
    q = WorkQueue()
    q.add("a")
    q.add("a")
    assert len(q) == 1
    assert q.get(timeout=0) == "a"
    q.add("a")  # added while processing: comes back once done, not before
    assert q.get(timeout=0) is None
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_failures_back_off():
    q = WorkQueue(base_delay=0.05)
    q.add("a")
    q.get(timeout=0)
    assert q.done("a", error=True) == pytest.approx(0.05)
    assert q.get(timeout=0) is None
    assert q.get(timeout=1) == "a"
    assert q.done("a", error=True) == pytest.approx(0.1)


def test_a_burst_of_one_namespace_does_not_delay_another():
    q = WorkQueue(group_of=by_namespace)
    for i in range(50):
        q.add(("ModelDeployment", "noisy", f"d{i}"))
    q.add(("ModelDeployment", "quiet", "x"))
    q.add(("admission",))
    order = drain(q)
    # The quiet namespace's key and the cluster-wide key are served within the first round, not after 50 others.
    assert order.index(("ModelDeployment", "quiet", "x")) < 3
    assert order.index(("admission",)) < 3
    assert len(order) == 52


def test_one_delayed_requeue_per_key_earliest_wins():
    q = WorkQueue()
    for _ in range(8):  # eight events on a not-ready deployment asking for a look in 15 s
        q.add("d", delay=15)
    q.add("d", delay=0.05)  # an earlier request wins
    q.add("d", delay=30)  # a later one changes nothing
    assert len(q) == 1
    assert q.get(timeout=1) == "d"
    q.done("d")
    assert len(q) == 0 and q.get(timeout=0.2) is None
