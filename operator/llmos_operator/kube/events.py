"""core/v1 Events, best effort, correlated as client-go does: the same event again bumps the first one's count."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiException

from .client import Kube

log = logging.getLogger("llmos.events")
REMEMBERED = 4096  # event series whose name is kept for correlation


class EventRecorder:
    def __init__(self, kube: Kube, component: str = "llmos-operator", reporting: str = "llmos.dev/operator"):
        self.kube = kube
        self.component, self.reporting = component, reporting
        # (namespace, uid, type, reason, message) → (event name, count)
        self._series: OrderedDict[tuple, tuple[str, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """An Event on ``obj`` (an Event that cannot be written is only logged)."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        series = (namespace, meta.get("uid") or meta["name"], type_, reason, message[:1024])
        with self._lock:
            seen = self._series.get(series)
            if seen is not None:
                self._series.move_to_end(series)
        if seen is not None and self._bump(namespace, series, seen, stamp):
            return
        # A plain dict, not the client's model classes: their serialisation cost more CPU than the request.
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {k: v for k, v in (
                ("apiVersion", obj.get("apiVersion")), ("kind", obj.get("kind")), ("name", meta["name"]),
                ("namespace", meta.get("namespace")), ("uid", meta.get("uid")),
                ("resourceVersion", meta.get("resourceVersion"))) if v is not None},
            "type": type_, "reason": reason, "message": message[:1024], "firstTimestamp": stamp,
            "lastTimestamp": stamp, "count": 1, "source": {"component": self.component},
            "reportingComponent": self.reporting, "reportingInstance": self.component,
        }
        try:
            created = self.kube.call("POST", self.kube.collection_path("Event", namespace), body=body,
                                     content_type="application/json")
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, namespace, meta["name"], exc.reason)
            return
        with self._lock:
            self._series[series] = (created["metadata"]["name"], 1)
            while len(self._series) > REMEMBERED:
                self._series.popitem(last=False)

    def _bump(self, namespace: str, series: tuple, seen: tuple[str, int], stamp: str) -> bool:
        name, count = seen
        try:
            self.kube.merge_patch("Event", name, namespace, {"count": count + 1, "lastTimestamp": stamp})
        except ApiException:
            return False  # expired or deleted: post a new one
        with self._lock:
            self._series[series] = (name, count + 1)
        return True
