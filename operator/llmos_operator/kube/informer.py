"""A watch-fed store: what the reconcilers read, kept current by one watch per kind instead of a LIST per event.

Each :class:`Informer` lists one kind (with a label selector where llmos only cares about its own objects, applied
by the API server), then watches from the list's resourceVersion; a watch that expires (410 Gone) or breaks lists
again and reports the difference as events. ``synced`` is set once the first listing is in, so nothing decides on a
half-known world. Objects are kept as the API server's JSON (dicts), optionally slimmed by a ``transform`` (the
controller keeps summaries of what it reads); a transform that returns None keeps the object out of the store (a
filter the API server cannot apply, such as "pods that request GPUs"). ``alive()`` says whether the loop still turns
(a listing, a watch request or a byte from one within ``watch_timeout`` plus a margin): the liveness probe reports a
stuck informer.

``metadata_only`` informers ask the API server for PartialObjectMetadata (names, labels, resourceVersions; no data):
the operator learns that a tenant's ConfigMap or a key Secret changed without holding every ConfigMap of the cluster.

Why not kopf's own watches: kopf shares one unfiltered watch per resource among its handlers (label filters run in
the operator, after every Pod and ConfigMap of the cluster has been sent), and its listing has no "complete" signal.
"""

from __future__ import annotations

import builtins
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes.client import ApiException
from pydantic_core import from_json

from .client import Kube

MAX_RELIST_BACKOFF = 6.0  # seconds

log = logging.getLogger("llmos.store")

EventHandler = Callable[[str, dict], None]  # (ADDED | MODIFIED | DELETED, object)


class WatchExpired(Exception):
    """The resourceVersion we watch from is too old (410 Gone): list again."""


class Informer:
    def __init__(self, kube: Kube, kind: str, *, label_selector: str | None = None,
                 on_event: EventHandler | None = None, transform: Callable[[dict], dict | None] | None = None,
                 watch_timeout: int = 300, namespace: str | None = None, metadata_only: bool = False,
                 field_selector: str | None = None):
        self.kube, self.kind, self.label_selector = kube, kind, label_selector
        self.field_selector = field_selector
        self.namespace, self.metadata_only = namespace, metadata_only
        self.on_event, self.transform = on_event, transform
        self.watch_timeout = watch_timeout
        self.synced = threading.Event()
        self.version = 0  # bumped on every change: lets readers memoize what they compute from the whole kind
        self._objects: dict[tuple[str | None, str], dict] = {}
        # namespace → {name: object}: a reconcile lists one namespace's objects without scanning every namespace's
        self._by_namespace: dict[str | None, dict[str, dict]] = {}
        self._namespace_versions: dict[str | None, int] = {}  # namespace → bumped on every change of its objects
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.relists = 0
        self.last_heard = time.monotonic()  # the loop's heartbeat: a listing, a watch request, a chunk of one

    def alive(self, now: float | None = None) -> bool:
        """Is the loop running and has it heard from the API server (or retried) recently? A watch ends after
        ``watch_timeout`` at the latest and its read times out 30 s after that, so silence beyond that plus a
        margin means the thread is stuck (in an event handler, say)."""
        if self._thread is None:
            return True  # not started yet: starting is not being stuck
        if not self._thread.is_alive():
            return False
        return (now if now is not None else time.monotonic()) - self.last_heard < self.watch_timeout + 90

    # Reads -----------------------------------------------------------------------------------------------------------

    def get(self, name: str, namespace: str | None = None) -> dict | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def list(self, namespace: str | None = None, where: Callable[[dict], bool] | None = None) -> builtins.list[dict]:
        with self._lock:
            if namespace is None:
                objs = list(self._objects.values())
            else:
                objs = list(self._by_namespace.get(namespace, {}).values())
        return objs if where is None else [o for o in objs if where(o)]

    def namespace_version(self, namespace: str | None) -> int:
        """Bumped on every change of the namespace's objects: lets readers memoize what they compute per namespace
        (``version`` changes with every namespace's)."""
        with self._lock:
            return self._namespace_versions.get(namespace, 0)

    def namespaces(self) -> builtins.list[str | None]:
        """The namespaces that hold at least one object."""
        with self._lock:
            return list(self._by_namespace)

    def __len__(self) -> int:
        return len(self._objects)

    # Writes from the watch --------------------------------------------------------------------------------------------

    def _key(self, obj: dict) -> tuple[str | None, str]:
        meta = obj["metadata"]
        return meta.get("namespace"), meta["name"]

    def _apply(self, event_type: str, obj: dict) -> None:
        key = self._key(obj)
        filtered = False  # the transform no longer keeps an object the store has
        if self.transform is not None and event_type != "DELETED":
            kept = self.transform(obj)
            if kept is None:
                with self._lock:
                    if key not in self._objects:
                        return
                event_type, filtered = "DELETED", True
            else:
                obj = kept
        with self._lock:
            if event_type == "DELETED":
                stored = self._objects.pop(key, None)
                if filtered and stored is not None:
                    obj = stored  # what the store kept is what goes
                in_namespace = self._by_namespace.get(key[0])
                if in_namespace is not None:
                    in_namespace.pop(key[1], None)
                    if not in_namespace:
                        del self._by_namespace[key[0]]
            else:
                self._objects[key] = obj
                self._by_namespace.setdefault(key[0], {})[key[1]] = obj
            self.version += 1
            self._namespace_versions[key[0]] = self._namespace_versions.get(key[0], 0) + 1
        if self.on_event is not None:
            try:
                self.on_event(event_type, obj)
            except Exception:  # noqa: BLE001 — a handler's bug must not stop the watch
                log.exception("%s event handler failed", self.kind)

    def _replace(self, items: builtins.list[dict]) -> None:
        """A fresh listing: report what appeared, changed or vanished since the last one."""
        fresh = {}
        for obj in items:
            fresh[self._key(obj)] = obj
        with self._lock:
            gone = [o for k, o in self._objects.items() if k not in fresh]
            old_versions = {k: o["metadata"].get("resourceVersion") for k, o in self._objects.items()}
        for obj in gone:
            self._apply("DELETED", obj)
        for key, obj in fresh.items():
            before = old_versions.get(key)
            if before != obj["metadata"].get("resourceVersion"):
                self._apply("ADDED" if before is None else "MODIFIED", obj)

    # The loop -------------------------------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._run, name=f"llmos-informer-{self.kind}", daemon=True)
        self.last_heard = time.monotonic()
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()

    def _accept(self, kind: str) -> str:
        if not self.metadata_only:
            return "application/json"
        return f"application/json;as={kind};g=meta.k8s.io;v=v1,application/json"

    def _selector(self) -> builtins.list[tuple[str, str]]:
        out = [("labelSelector", self.label_selector)] if self.label_selector else []
        return out + ([("fieldSelector", self.field_selector)] if self.field_selector else [])

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self.last_heard = time.monotonic()
            try:
                data = self.kube.call("GET", self.kube.collection_path(self.kind, self.namespace),
                                      query=self._selector(),
                                       accept=self._accept("PartialObjectMetadataList"))
                kind = self.kind
                items = [dict(item, kind=kind) for item in data.get("items") or []]
                self._replace(items)
                self.synced.set()
                version = data["metadata"]["resourceVersion"]
                backoff = 0.5
                while not self._stop.is_set():
                    self.last_heard = time.monotonic()
                    version = self._watch(version)
            except WatchExpired:
                self.relists += 1
                log.info("%s watch expired; listing again", self.kind)
            except Exception as exc:  # noqa: BLE001 — API server restarts, network: list again after a pause
                self.relists += 1
                # Jittered, capped at a few seconds: after an API server restart every informer of every replica
                # lists again, spread out, and the operator notices changes within seconds of the API's return.
                pause = backoff * random.uniform(0.5, 1.0)
                log.warning("%s watch failed (%s); listing again in %.1f s", self.kind, exc, pause)
                self._stop.wait(pause)
                backoff = min(backoff * 2, MAX_RELIST_BACKOFF)

    def _watch(self, version: str) -> str:
        """Watch from ``version`` until the server ends the request; return the last version seen."""
        for event in self._stream(version):
            event_type, obj = event.get("type"), event.get("object") or {}
            if event_type == "ERROR":
                if obj.get("code") == 410:
                    raise WatchExpired()
                raise RuntimeError(f"watch error: {obj.get('message')}")
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if event_type == "BOOKMARK":
                continue
            obj["kind"] = self.kind  # also for PartialObjectMetadata
            self._apply(str(event_type), obj)
        return version

    def _stream(self, version: str) -> Iterator[dict]:
        query = [("watch", "1"), ("resourceVersion", version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(self.watch_timeout)), *self._selector()]
        api = self.kube.api
        method, url, headers, body, post = api.param_serialize(
            "GET", self.kube.collection_path(self.kind, self.namespace), query_params=query,
            header_params={"Accept": self._accept("PartialObjectMetadata")},
            auth_settings=["BearerToken"],
        )
        response = api.call_api(method, url, headers, body, post, _request_timeout=(10, self.watch_timeout + 30))
        if response.status == 410:
            raise WatchExpired()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        raw = response.response
        try:
            buffer = b""
            for chunk in raw.stream(65536, decode_content=True):
                if self._stop.is_set():
                    return
                self.last_heard = time.monotonic()
                buffer += chunk
                if b"\n" not in buffer:
                    continue
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield from_json(line)  # pydantic's (Rust) parser: decoding events was a fifth of the CPU
        finally:
            raw.release_conn()


class Store:
    """The informers the controller reads from, by kind."""

    def __init__(self, informers: dict[str, Informer]):
        self.informers = informers

    def __getitem__(self, kind: str) -> Informer:
        return self.informers[kind]

    def start(self) -> builtins.list[threading.Thread]:
        return [i.start() for i in self.informers.values()]

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for informer in self.informers.values():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not informer.synced.wait(remaining):
                return False
        return True

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def stuck(self) -> builtins.list[str]:
        """The kinds whose informer stopped turning (see ``Informer.alive``)."""
        now = time.monotonic()
        return [kind for kind, i in self.informers.items() if not i.alive(now)]

    def stats(self) -> dict[str, Any]:
        return {kind: len(i) for kind, i in self.informers.items()}
