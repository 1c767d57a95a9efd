"""The operator's few ways of talking to the API server: server-side apply, status patches guarded by
resourceVersion, reads, and Events. Synchronous (the kubernetes client); workers call them from threads."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from .. import metrics
from ..api.types import GROUP, VERSION

log = logging.getLogger("llmos.kube")
FIELD_MANAGER = "llmos"

# kind → (API path prefix, plural, namespaced)
_PATHS = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Event": ("/api/v1", "events", True),
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "ReplicaSet": ("/apis/apps/v1", "replicasets", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Tenant": (f"/apis/{GROUP}/{VERSION}", "tenants", False),
    "Model": (f"/apis/{GROUP}/{VERSION}", "models", True),
    "ModelDeployment": (f"/apis/{GROUP}/{VERSION}", "modeldeployments", True),
}


_KIND_OF_PLURAL = {plural: kind for kind, (_, plural, _) in _PATHS.items()}


def _kind_of(path: str) -> str:
    """The kind a request path is about (for metrics): the last plural in it."""
    for part in reversed(path.split("?")[0].split("/")):
        if part in _KIND_OF_PLURAL:
            return _KIND_OF_PLURAL[part]
    return "other"


def object_path(kind: str, name: str, namespace: str | None = None, subresource: str | None = None) -> str:
    prefix, plural, namespaced = _PATHS[kind]
    path = f"{prefix}/namespaces/{namespace}/{plural}/{name}" if namespaced else f"{prefix}/{plural}/{name}"
    return f"{path}/{subresource}" if subresource else path


def collection_path(kind: str, namespace: str | None = None) -> str:
    prefix, plural, namespaced = _PATHS[kind]
    return f"{prefix}/namespaces/{namespace}/{plural}" if (namespaced and namespace) else f"{prefix}/{plural}"


class Kube:
    """Thin wrapper over one ApiClient."""

    def __init__(self, api: client.ApiClient):
        self.api = api
        self.core = client.CoreV1Api(api)
        # (namespace, uid, type, reason, message) → (event name, count): a repeat of the same event bumps its count
        # and lastTimestamp, as client-go's event correlator does, instead of making another Event object.
        self._events: OrderedDict[tuple, tuple[str, int]] = OrderedDict()
        self._events_lock = threading.Lock()

    def _call(self, method: str, path: str, *, body: Any = None, query: list | None = None,
              content_type: str | None = None, accept: str = "application/json") -> Any:
        metrics.API_REQUESTS.labels(method, _kind_of(path)).inc()
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body, post = self.api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, headers, body, post, _request_timeout=30)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None

    def apply(self, obj: dict, force: bool = True) -> dict:
        """Server-side apply: idempotent, and puts back any field llmos owns that someone edited by hand."""
        meta = obj["metadata"]
        path = object_path(obj["kind"], meta["name"], meta.get("namespace"))
        query = [("fieldManager", FIELD_MANAGER), ("force", "true" if force else "false")]
        return self._call("PATCH", path, body=obj, query=query, content_type="application/apply-patch+yaml")

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self._call("GET", object_path(kind, name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return self._call("GET", collection_path(kind, namespace), query=query).get("items", [])

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            self._call("DELETE", object_path(kind, name, namespace), query=[("propagationPolicy", "Background")])
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_status(self, kind: str, name: str, namespace: str | None, status: dict,
                     resource_version: str | None = None) -> dict:
        """JSON merge patch of .status; with resource_version the API server refuses it (409) if the object
        changed since it was read — the optimistic concurrency admission relies on."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._call("PATCH", object_path(kind, name, namespace, "status"), body=body,
                          content_type="application/merge-patch+json")

    def patch(self, kind: str, name: str, namespace: str | None, patch: dict) -> dict:
        return self._call("PATCH", object_path(kind, name, namespace), body=patch,
                          content_type="application/merge-patch+json")

    def read_secret_key(self, namespace: str, name: str, key: str) -> bytes | None:
        import base64

        try:
            metrics.API_REQUESTS.labels("GET", "Secret").inc()
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        value = (secret.data or {}).get(key)
        return base64.b64decode(value) if value is not None else None

    def event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on `obj` (best effort: an Event that cannot be written is only logged). The same event
        again (same object, type, reason and message) updates the first one's count instead."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = datetime.now(timezone.utc)
        series = (namespace, meta.get("uid") or meta["name"], type_, reason, message[:1024])
        with self._events_lock:
            seen = self._events.get(series)
            if seen is not None:
                self._events.move_to_end(series)
        if seen is not None:
            name, count = seen
            try:
                self._call("PATCH", object_path("Event", name, namespace), content_type="application/merge-patch+json",
                           body={"count": count + 1, "lastTimestamp": now.isoformat().replace("+00:00", "Z")})
                with self._events_lock:
                    self._events[series] = (name, count + 1)
                return
            except ApiException:
                pass  # expired or deleted: post a new one
        stamp = now.isoformat().replace("+00:00", "Z")
        # A plain dict, not the client's model classes: their serialisation cost more CPU than the request.
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {k: v for k, v in (
                ("apiVersion", obj.get("apiVersion")), ("kind", obj.get("kind")), ("name", meta["name"]),
                ("namespace", meta.get("namespace")), ("uid", meta.get("uid")),
                ("resourceVersion", meta.get("resourceVersion"))) if v is not None},
            "type": type_, "reason": reason, "message": message[:1024], "firstTimestamp": stamp,
            "lastTimestamp": stamp, "count": 1, "source": {"component": "llmos-operator"},
            "reportingComponent": "llmos.dev/operator", "reportingInstance": "llmos-operator",
        }
        try:
            created = self._call("POST", collection_path("Event", namespace), body=body,
                                 content_type="application/json")
            with self._events_lock:
                self._events[series] = (created["metadata"]["name"], 1)
                while len(self._events) > 4096:
                    self._events.popitem(last=False)
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, namespace, meta["name"], exc.reason)


def owner_reference(obj: dict, controller: bool = True) -> dict:
    return {
        "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"], "controller": controller, "blockOwnerDeletion": True,
    }


def with_owner(child: dict, owner: dict) -> dict:
    child = dict(child)
    child["metadata"] = dict(child["metadata"], ownerReferences=[owner_reference(owner)])
    return child
