"""``Kube.write_owned`` on the in-memory API: what it sends for an object it does not know about."""

from __future__ import annotations

import pytest

from llmos_operator.kube.client import NotOwned
from tests.support.memory_api import MemoryAPI


def _quota(owner_uid: str, gpus: str = "4") -> dict:
    return {"apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "llmos-tenant-quota", "namespace": "team-a",
                         "ownerReferences": [{"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "name": "a",
                                              "uid": owner_uid, "controller": True}]},
            "spec": {"hard": {"requests.nvidia.com/gpu": gpus}}}


def test_an_object_not_known_to_exist_is_read_before_any_create():
    # A create refused as AlreadyExists is charged to the namespace's object-count quota until the quota controller
    # counts again: a restarted operator must not POST what is already there.
    api = MemoryAPI()
    api.create(_quota("tenant-uid"))
    api.writes.clear()
    written = api.write_owned(_quota("tenant-uid", "8"), "tenant-uid")
    assert [w[0] for w in api.writes] == ["replace"]
    assert written["spec"]["hard"]["requests.nvidia.com/gpu"] == "8"


def test_a_cache_that_says_absent_creates_at_once():
    api = MemoryAPI()
    api.write_owned(_quota("tenant-uid"), "tenant-uid", absent=True)
    assert [w[0] for w in api.writes] == ["create"]


def test_someone_elses_object_is_left_alone():
    api = MemoryAPI()
    api.create(_quota("someone-else"))
    api.writes.clear()
    with pytest.raises(NotOwned):
        api.write_owned(_quota("tenant-uid"), "tenant-uid")
    assert api.writes == []
