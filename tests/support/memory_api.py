"""An in-memory API server for unit tests of the controller: the calls of ``kube.client.Kube`` (apply, create,
replace, get, list, delete with a uid precondition, merge patches, status patches with a resourceVersion
precondition, Events) on a dict of objects, each change reported to the informers of a real ``Store`` as the watch
would report it. The controller under test is the real one (``controller.manager.Manager``), driven through its
public interface: ``manager.handle(key)`` and the objects it wrote.

What it is not: an API server. Server-side apply is approximated by a deep merge of the applied fields over the
stored object (lists replaced), no admission, no field validation; ownerReferences are followed on delete
(background cascade) but nothing else of the garbage collector. Tests of those live in tests/integration against
the real control plane."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from kubernetes.client import ApiException

from llmos_operator.controller.cache import LLMOS_KINDS
from llmos_operator.kube.client import CORE_KINDS, Kube
from llmos_operator.kube.informer import Store

T0 = "2026-01-01T00:00:00Z"


def _merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch."""
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _error(status: int, reason: str, message: str = "") -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = '{"message": %r}' % (message or reason)
    return exc


class MemoryAPI:
    """The API calls the operator makes, on objects in memory; ``writes`` lists (verb, kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict] = {}
        self.events: list[dict] = []
        self.writes: list[tuple] = []
        self.store: Store | None = None
        self._versions = itertools.count(1000)
        self._uids = itertools.count(1)
        # the paths the EventRecorder asks for; the kinds a Kube knows
        self.kinds = {**CORE_KINDS, **LLMOS_KINDS}
        self.collection_path = Kube.collection_path.__get__(self)  # type: ignore[attr-defined]
        self.object_path = Kube.object_path.__get__(self)  # type: ignore[attr-defined]
        self.write_owned = Kube.write_owned.__get__(self)  # type: ignore[attr-defined]  # the real logic, on this API

    # Watch ---------------------------------------------------------------------------------------------------------

    def attach(self, store: Store) -> None:
        """Report every change to ``store``'s informers, and list what exists into them now."""
        self.store = store
        for (kind, _, _), obj in self.objects.items():
            self._notify(kind, "ADDED", obj)
        for informer in store.informers.values():
            informer.synced.set()

    def _notify(self, kind: str, event: str, obj: dict) -> None:
        if self.store is None:
            return
        labels = obj["metadata"].get("labels") or {}
        for informer in self.store.informers.values():
            if informer.kind != kind:
                continue
            if informer.namespace and informer.namespace != obj["metadata"].get("namespace"):
                continue
            if informer.label_selector and not selects(informer.label_selector, labels):
                continue
            informer._apply(event, copy.deepcopy(obj))

    # Writes --------------------------------------------------------------------------------------------------------

    def _key(self, obj: dict) -> tuple[str, str | None, str]:
        return obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]

    def _store(self, obj: dict, event: str, old: dict | None) -> dict:
        meta = obj["metadata"]
        meta["resourceVersion"] = str(next(self._versions))
        if old is None:
            meta.setdefault("uid", f"uid-{next(self._uids)}")
            meta.setdefault("creationTimestamp", T0)
            meta["generation"] = 1
        elif (old.get("spec") != obj.get("spec")) or (old.get("data") != obj.get("data")):
            meta["generation"] = (old["metadata"].get("generation") or 1) + 1
        self.objects[self._key(obj)] = obj
        self._notify(obj["kind"], event, obj)
        return copy.deepcopy(obj)

    def put(self, obj: dict) -> dict:
        """Create or replace an object as a user would (no precondition)."""
        obj = copy.deepcopy(obj)
        old = self.objects.get(self._key(obj))
        if old is not None:
            obj["metadata"] = {**old["metadata"], **obj["metadata"]}
        return self._store(obj, "MODIFIED" if old else "ADDED", old)

    def apply(self, obj: dict, force: bool = True) -> dict:
        self.writes.append(("apply", obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]))
        old = self.objects.get(self._key(obj))
        new = _merge(old, copy.deepcopy(obj)) if old is not None else copy.deepcopy(obj)
        return self._store(new, "MODIFIED" if old else "ADDED", old)

    def create(self, obj: dict) -> dict:
        self.writes.append(("create", obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]))
        if self._key(obj) in self.objects:
            raise _error(409, "AlreadyExists", f"{obj['kind']} {obj['metadata']['name']} already exists")
        return self._store(copy.deepcopy(obj), "ADDED", None)

    def replace(self, obj: dict) -> dict:
        self.writes.append(("replace", obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]))
        old = self.objects.get(self._key(obj))
        if old is None:
            raise _error(404, "NotFound")
        if obj["metadata"].get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]):
            raise _error(409, "Conflict", "the object has been modified")
        if obj["metadata"].get("uid") not in (None, old["metadata"]["uid"]):
            raise _error(409, "Conflict", "Precondition failed: UID in precondition")
        new = copy.deepcopy(obj)
        new["metadata"] = {**new["metadata"], "uid": old["metadata"]["uid"]}
        new.setdefault("status", old.get("status"))
        return self._store(new, "MODIFIED", old)

    def merge_patch(self, kind: str, name: str, namespace: str | None, patch: dict,
                    subresource: str | None = None) -> dict:
        if kind == "Event":
            return {}
        self.writes.append(("status" if subresource == "status" else "patch", kind, namespace, name))
        old = self.objects.get((kind, namespace, name))
        if old is None:
            raise _error(404, "NotFound")
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", "the object has been modified")
        if subresource == "status":
            patch = {"status": patch.get("status") or {}}
        new = _merge(old, patch)
        new["metadata"] = dict(new["metadata"], uid=old["metadata"]["uid"])
        return self._store(new, "MODIFIED", old)

    def patch_status(self, kind: str, name: str, namespace: str | None, status: dict,
                     resource_version: str | None = None) -> dict:
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self.merge_patch(kind, name, namespace, body, "status")

    def delete(self, kind: str, name: str, namespace: str | None = None, *, uid: str | None = None,
               propagation: str = "Background") -> bool:
        old = self.objects.get((kind, namespace, name))
        if old is None or (uid and old["metadata"].get("uid") != uid):
            return False
        self.writes.append(("delete", kind, namespace, name))
        if old["metadata"].get("finalizers"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = T0
            self._store(new, "MODIFIED", old)
            return True
        del self.objects[(kind, namespace, name)]
        self._notify(kind, "DELETED", old)
        if propagation != "Orphan":
            gone = old["metadata"]["uid"]
            for key, obj in list(self.objects.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == gone for r in refs):
                    self.delete(key[0], key[2], key[1])
        return True

    def call(self, method: str, path: str, *, body: Any = None, **_: Any) -> Any:
        """Only Events are posted through ``call``."""
        if method == "POST" and path.endswith("/events"):
            self.events.append(body)
            return {"metadata": {"name": f"event-{len(self.events)}"}}
        raise NotImplementedError(f"{method} {path}")

    # Reads ---------------------------------------------------------------------------------------------------------

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        out = []
        for (k, ns, _), obj in self.objects.items():
            if k != kind or (namespace is not None and ns != namespace):
                continue
            if label_selector and not selects(label_selector, obj["metadata"].get("labels") or {}):
                continue
            out.append(copy.deepcopy(obj))
        return out

    def reasons(self, name: str | None = None) -> list[str]:
        """The reasons of the Events posted (about ``name`` only, if given)."""
        return [e["reason"] for e in self.events
                if name is None or e["involvedObject"].get("name") == name]


def selects(label_selector: str, labels: dict) -> bool:
    """The selectors the operator uses: comma-separated ``key`` (exists) and ``key=value`` terms."""
    wanted = dict(part.split("=", 1) if "=" in part else (part, None) for part in label_selector.split(","))
    return all(k in labels and (v is None or labels[k] == v) for k, v in wanted.items())
