"""Keeps the guard's key table current: the key hashes the operator renders into the ConfigMap ``llmos-api-keys`` of
the pod's namespace, written atomically into the guard's directory (the guard rereads it when it changes).

Why a watch through the API, not the mounted ConfigMap: the kubelet refreshes a ConfigMap volume on its own sync
(up to a minute and more, plus its cache's TTL), and a revoked key must be refused on every replica within 10 s. A
watch delivers the change in milliseconds after the operator wrote it (docs/security.md measures the whole path:
Secret deleted → refused). The pod's token may read only that one ConfigMap (the runtime ClusterRole names it;
``list``/``watch`` with ``fieldSelector=metadata.name=…`` is how RBAC lets a name be watched). The watch is
re-opened after every error (1 s, then backing off to 10 s); while it is broken the last table stays in force.

``--api-keys-file`` reads a local file instead (every 0.25 s): for running the runtime by hand and in tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .keys import TABLE_FILE, KeyTable

log = logging.getLogger("llmos_runtime.keys")
DATA_KEY = "keys.json"
EMPTY: dict[str, Any] = {"format": 1, "keys": []}  # no ConfigMap (yet): no key is valid


class KeyTableWriter:
    """Writes the table the guard reads: the operator's JSON plus the names this pod serves (for metrics labels)."""

    def __init__(self, guard_dir: Path, served: Callable[[], list[str]]):
        self.path = guard_dir / TABLE_FILE
        self.served = served
        self.source: dict[str, Any] | None = None
        self.written: str | None = None
        self.loaded = asyncio.Event()
        self.changed_at: float | None = None
        self._served: list[str] | None = None

    def update(self, source: dict[str, Any] | None = None) -> None:
        served = sorted(set(self.served()))
        if source is not None:
            KeyTable.from_json(source)  # refuse what the guard could not read (ValueError)
            self.source = source
        elif served == self._served:
            return  # nothing new (called every 0.5 s: a table of 10,000 keys is not serialised for nothing)
        if self.source is None:
            return
        self._served = served
        text = json.dumps({**self.source, "served": served}, sort_keys=True)
        if text == self.written:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)  # the guard never sees half a file
        self.written = text
        self.changed_at = time.monotonic()
        self.loaded.set()
        log.info("API key table: %d key(s)", len(self.source.get("keys") or []))


def table_of(configmap: dict | None) -> dict[str, Any]:
    if configmap is None:
        return EMPTY
    text = (configmap.get("data") or {}).get(DATA_KEY)
    return json.loads(text) if text else EMPTY


class FileSource:
    def __init__(self, path: Path, writer: KeyTableWriter, interval: float = 0.25):
        self.path, self.writer, self.interval = path, writer, interval

    async def run(self, stop: asyncio.Event) -> None:
        seen = None
        while not stop.is_set():
            try:
                text = self.path.read_text()
                if text != seen:
                    self.writer.update(json.loads(text))
                    seen = text
                else:
                    self.writer.update()
            except FileNotFoundError:
                if seen is None:
                    self.writer.update(EMPTY)
                    seen = ""
            except (OSError, ValueError) as e:
                log.warning("API key file %s not read: %s", self.path, e)
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass


class ConfigMapSource:
    """Watches one ConfigMap through the API (kubernetes client, in a thread); each version goes to the writer on
    the event loop."""

    def __init__(self, name: str, namespace: str, writer: KeyTableWriter, core_api: Any = None):
        self.name, self.namespace, self.writer = name, namespace, writer
        self._core = core_api
        self._stop = threading.Event()
        self._response: Any = None

    def _api(self) -> Any:
        if self._core is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            self._core = client.CoreV1Api()
        return self._core

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def deliver(cm: dict | None) -> None:
            table = table_of(cm)
            loop.call_soon_threadsafe(self._apply, table)

        thread = threading.Thread(target=self._watch, args=(deliver,), name="llmos-keys", daemon=True)
        thread.start()
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    self.writer.update()  # the served names may have changed (adapters)
        finally:
            self.stop()

    def _apply(self, table: dict[str, Any]) -> None:
        try:
            self.writer.update(table)
        except (ValueError, KeyError, TypeError) as e:
            log.error("ConfigMap %s/%s holds no valid key table: %s", self.namespace, self.name, e)

    def _watch(self, deliver: Callable[[dict | None], None]) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        backoff = 1.0
        selector = f"metadata.name={self.name}"
        while not self._stop.is_set():
            try:
                core = self._api()
                listed = json.loads(core.list_namespaced_config_map(
                    self.namespace, field_selector=selector, _preload_content=False).data)
                items = listed.get("items") or []
                deliver(items[0] if items else None)
                version = listed["metadata"]["resourceVersion"]
                backoff = 1.0
                while not self._stop.is_set():  # watch from there; a 410 or an ERROR event lists again
                    self._response = core.list_namespaced_config_map(
                        self.namespace, field_selector=selector, resource_version=version, watch=True,
                        allow_watch_bookmarks=True, timeout_seconds=300, _preload_content=False)
                    for line in iter_resp_lines(self._response):
                        event = json.loads(line)
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            raise RuntimeError(obj.get("message") or "watch error")
                        version = (obj.get("metadata") or {}).get("resourceVersion") or version
                        if kind != "BOOKMARK":
                            deliver(None if kind == "DELETED" else obj)
            except Exception as e:  # noqa: BLE001 — the watch is re-opened; the last table stays in force
                if self._stop.is_set():
                    return
                log.warning("watching ConfigMap %s/%s failed (%s); retrying in %.0f s", self.namespace, self.name,
                            e, backoff)
                self._stop.wait(backoff)
                backoff = min(10.0, backoff * 2)

    def stop(self) -> None:
        """End the watch now: its socket is shut down, so a read blocked on it returns at once (closing the response
        instead would wait for the reader's buffer lock, i.e. for the next event: measured 22 s at a runtime's exit)."""
        self._stop.set()
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
