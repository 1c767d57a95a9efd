"""The informer (kube/informer.py) without a cluster: a fake API that lists and streams watch events as the API
server does, including a 410 Gone; the informer must list again and report exactly what changed meanwhile. (The
same against the real API server: tests/integration/test_resilience_chaos.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from llmos_operator.kube.informer import Informer, Store

pytestmark = pytest.mark.unit


def cm(name: str, version: str, **labels: str) -> dict:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns", "resourceVersion": version,
                                              "labels": labels}}


class FakeAPI:
    """Listings and watch streams, served in the order given."""

    def __init__(self, listings: list[list[dict]], watches: list[list[dict]]):
        self.listings, self.watches = listings, watches
        self.lists = 0

    def collection_path(self, kind: str, namespace: str | None = None) -> str:
        return f"/api/v1/{kind.lower()}s"

    def call(self, method: str, path: str, **_: object) -> dict:
        items = self.listings[min(self.lists, len(self.listings) - 1)]
        self.lists += 1
        return {"items": items, "metadata": {"resourceVersion": str(100 * self.lists)}}


class ScriptedInformer(Informer):
    def _stream(self, version: str) -> Iterator[dict]:
        api: FakeAPI = self.kube  # type: ignore[assignment]
        if api.watches:
            yield from api.watches.pop(0)
        else:
            time.sleep(0.05)  # a quiet watch


def run(informer: Informer, until, timeout: float = 5) -> None:
    informer.start()
    try:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert until(), "the informer did not get there"
    finally:
        informer.stop()


def test_a_410_lists_again_and_reports_the_difference():
    events: list[tuple[str, str]] = []
    api = FakeAPI(
        listings=[[cm("a", "1"), cm("b", "1")], [cm("b", "2"), cm("c", "3")]],
        watches=[[{"type": "ADDED", "object": cm("x", "5")}],
                 [{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}]],
    )
    informer = ScriptedInformer(api, "ConfigMap", on_event=lambda t, o: events.append((t, o["metadata"]["name"])))
    run(informer, lambda: api.lists >= 2 and len(events) >= 6)
    assert events[:3] == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "x")]
    # After the 410: a (and x) vanished, b changed, c appeared — and nothing else is reported.
    assert sorted(events[3:]) == [("ADDED", "c"), ("DELETED", "a"), ("DELETED", "x"), ("MODIFIED", "b")]
    assert informer.relists == 1 and informer.synced.is_set()
    assert {o["metadata"]["name"] for o in informer.list()} == {"b", "c"}


def test_a_relist_with_nothing_changed_reports_nothing():
    events: list[tuple[str, str]] = []
    same = [cm("a", "1")]
    api = FakeAPI(listings=[same, same], watches=[[{"type": "ERROR", "object": {"code": 410}}]])
    informer = ScriptedInformer(api, "ConfigMap", on_event=lambda t, o: events.append((t, o["metadata"]["name"])))
    run(informer, lambda: api.lists >= 2)
    assert events == [("ADDED", "a")]


def test_a_filtering_transform_keeps_objects_out_and_drops_those_that_stop_matching():
    events: list[tuple[str, str]] = []
    api = FakeAPI(listings=[[cm("a", "1", keep="yes"), cm("b", "1")]],
                  watches=[[{"type": "MODIFIED", "object": cm("a", "2")}]])
    keep = lambda o: o if (o["metadata"].get("labels") or {}).get("keep") else None  # noqa: E731
    informer = ScriptedInformer(api, "ConfigMap", transform=keep,
                                on_event=lambda t, o: events.append((t, o["metadata"]["name"])))
    run(informer, lambda: len(events) >= 2)
    assert events == [("ADDED", "a"), ("DELETED", "a")]  # b never kept; a dropped once it stopped matching
    assert informer.list() == []


def test_a_stuck_informer_is_reported_by_the_store():
    api = FakeAPI(listings=[[cm("a", "1")]], watches=[])
    release = threading.Event()
    informer = ScriptedInformer(api, "ConfigMap", on_event=lambda t, o: release.wait(5), watch_timeout=1)
    store = Store({"ConfigMap": informer})
    informer.start()
    try:
        time.sleep(0.2)
        assert store.stuck() == []
        informer.last_heard -= 200  # as if its handler had held the thread for longer than a watch can last
        assert store.stuck() == ["ConfigMap"]
    finally:
        release.set()
        informer.stop()
