"""The operator's few ways of talking to the API server: server-side apply, create, delete guarded by uid, status
patches guarded by resourceVersion, reads. Synchronous (the kubernetes client's connection pool); workers call them
from threads. Knows no llmos kind: the caller names the extra kinds it needs (``Kube(api, kinds=...)``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client
from kubernetes.client import ApiException
from kubernetes.client.rest import RESTResponse
from prometheus_client import Counter
from pydantic_core import from_json

log = logging.getLogger("llmos.kube")
REQUEST_TIMEOUT = 30.0  # seconds, per request
AUTH_REFRESH_SECONDS = 60.0

# What the operator asks the API server, besides its long-lived watches: an idle operator asks nothing.
API_REQUESTS = Counter("llmos_api_requests_total",
                       "API requests (reconcilers, informer listings; not watch streams), by HTTP method and kind",
                       ["method", "kind"])

KindPath = tuple[str, str, bool]  # (API path prefix, plural, namespaced)

CORE_KINDS: dict[str, KindPath] = {
    "Namespace": ("/api/v1", "namespaces", False),
    "Event": ("/api/v1", "events", True),
    "Node": ("/api/v1", "nodes", False),
    "Pod": ("/api/v1", "pods", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "LimitRange": ("/api/v1", "limitranges", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ReplicationController": ("/api/v1", "replicationcontrollers", True),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "ReplicaSet": ("/apis/apps/v1", "replicasets", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),
    "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes", True),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers", True),
}


class NotOwned(Exception):
    """An object of the name a write needs exists and is not the writer's: nothing was written to it."""

    def __init__(self, obj: Mapping[str, Any], owner_uid: str):
        meta = obj.get("metadata") or {}
        self.kind, self.name, self.namespace = str(obj.get("kind")), str(meta.get("name")), meta.get("namespace")
        holder = controller_uid(obj)
        managers = sorted({m.get("manager", "?") for m in meta.get("managedFields") or []})
        who = (f"controlled by uid {holder}" if holder else "controlled by nothing") + (
            f", written by {', '.join(managers)}" if managers else "")
        super().__init__(f"{self.kind} {self.name} exists and is not llmos's ({who}; llmos would own it as "
                         f"{owner_uid}): llmos writes nothing into it; delete or rename it")


class Gone(Exception):
    """The object a write was meant for was deleted or replaced meanwhile: read again and decide again."""


class Kube:
    """Thin wrapper over one ApiClient."""

    def __init__(self, api: client.ApiClient, kinds: Mapping[str, KindPath] | None = None,
                 field_manager: str = "llmos"):
        self.api = api
        self.field_manager = field_manager
        self.kinds: dict[str, KindPath] = {**CORE_KINDS, **(kinds or {})}
        self._kind_of_plural = {plural: kind for kind, (_, plural, _) in self.kinds.items()}
        self._auth: tuple[float, dict[str, str]] | None = None  # (when, the auth headers) — see _auth_headers

    # Paths ----------------------------------------------------------------------------------------------------------

    def object_path(self, kind: str, name: str, namespace: str | None = None, subresource: str | None = None) -> str:
        prefix, plural, namespaced = self.kinds[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}/{name}" if namespaced else f"{prefix}/{plural}/{name}"
        return f"{path}/{subresource}" if subresource else path

    def collection_path(self, kind: str, namespace: str | None = None) -> str:
        prefix, plural, namespaced = self.kinds[kind]
        return f"{prefix}/namespaces/{namespace}/{plural}" if (namespaced and namespace) else f"{prefix}/{plural}"

    def kind_of(self, path: str) -> str:
        """The kind a request path is about (for metrics): the last plural in it."""
        for part in reversed(path.split("?")[0].split("/")):
            if part in self._kind_of_plural:
                return self._kind_of_plural[part]
        return "other"

    # Requests -------------------------------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        """The client's auth headers, asked again every AUTH_REFRESH_SECONDS (its hook re-reads a rotated
        ServiceAccount token): asking on every request was a few % of the operator's CPU."""
        now = time.monotonic()
        if self._auth is None or now - self._auth[0] > AUTH_REFRESH_SECONDS:
            settings = self.api.configuration.auth_settings()
            self._auth = (now, {s["key"]: s["value"] for s in settings.values() if s["in"] == "header" and s["value"]})
        return self._auth[1]

    def call(self, method: str, path: str, *, body: Any = None, query: list[tuple[str, str]] | None = None,
             content_type: str | None = None, accept: str = "application/json") -> Any:
        """One request on the client's connection pool, without the generated client's per-request work
        (parameter sanitising, proxy lookups, auth refresh): the operator's hot path."""
        API_REQUESTS.labels(method, self.kind_of(path)).inc()
        url = self.api.configuration.host + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": accept, "User-Agent": self.api.user_agent, **self._auth_headers()}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            data = json.dumps(body, separators=(",", ":"))  # JSON is YAML: an apply patch too
        response = self.api.rest_client.pool_manager.request(
            method, url, body=data, headers=headers, timeout=urllib3.Timeout(total=REQUEST_TIMEOUT),
            preload_content=True, retries=False)
        if not 200 <= response.status <= 299:
            exc = ApiException(http_resp=RESTResponse(response))
            exc.body = response.data.decode(errors="replace")
            exc.reason = f"{exc.reason} ({method} {path.split('?')[0]})"  # the log says which request was refused
            raise exc
        return from_json(response.data) if response.data else None

    def apply(self, obj: dict, force: bool = True) -> dict:
        """Server-side apply: idempotent, and puts back any field llmos owns that someone edited by hand."""
        meta = obj["metadata"]
        path = self.object_path(obj["kind"], meta["name"], meta.get("namespace"))
        query = [("fieldManager", self.field_manager), ("force", "true" if force else "false")]
        return self.call("PATCH", path, body=obj, query=query, content_type="application/apply-patch+yaml")

    def write_owned(self, obj: dict, owner_uid: str, stored: Mapping[str, Any] | None = None, *,
                    absent: bool = False) -> dict:
        """Write ``obj`` only as an object ``owner_uid`` controls: created if absent, else replaced whole (PUT) with
        the stored object's uid as a precondition — never merged into an object someone else made, nor into one that
        replaced ours meanwhile, and no field another writer added survives (annotations others keep on it, such as
        the Deployment controller's revision, stay). ``stored``: the object as the caller last saw it (None: not
        known to exist). ``absent``: a watch-fed cache says there is none; otherwise an unknown object is read
        before it is created, because a create refused as AlreadyExists is still charged to the namespace's object
        count quota until the quota controller's next full count (minutes): after a few operator restarts every
        create in a tenant namespace would be refused as over quota. Raises NotOwned when an object of that name is
        someone else's (nothing is written), Gone when ours vanished or was replaced between the read and the
        write."""
        meta = obj["metadata"]
        if stored is None and not absent:
            stored = self.get(obj["kind"], meta["name"], meta.get("namespace"))
        if stored is None:
            try:
                return self.create(obj)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            stored = self.get(obj["kind"], meta["name"], meta.get("namespace"))
            if stored is None:
                raise Gone(f"{obj['kind']} {meta['name']} was deleted while llmos created it") from None
        if controller_uid(stored) != owner_uid:
            raise NotOwned(dict(stored, kind=obj["kind"]), owner_uid)
        theirs = {k: v for k, v in ((stored.get("metadata") or {}).get("annotations") or {}).items()
                  if k not in (meta.get("annotations") or {})}
        whole = dict(obj, metadata=dict(meta, uid=stored["metadata"]["uid"],
                                        annotations={**theirs, **(meta.get("annotations") or {})}))
        try:
            return self.replace(whole)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Gone(f"{obj['kind']} {meta['name']} was deleted or replaced meanwhile") from None
            raise

    def create(self, obj: dict) -> dict:
        """POST: refused with 409 AlreadyExists when an object of that name is there (whoever made it)."""
        meta = obj["metadata"]
        return self.call("POST", self.collection_path(obj["kind"], meta.get("namespace")), body=obj,
                         query=[("fieldManager", self.field_manager)], content_type="application/json")

    def replace(self, obj: dict) -> dict:
        """PUT: the whole object is what we send (no field of another manager survives); a uid or resourceVersion
        in its metadata is a precondition (409 when the stored object is another one, or changed)."""
        meta = obj["metadata"]
        return self.call("PUT", self.object_path(obj["kind"], meta["name"], meta.get("namespace")), body=obj,
                         query=[("fieldManager", self.field_manager)], content_type="application/json")

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            return self.call("GET", self.object_path(kind, name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        items = self.call("GET", self.collection_path(kind, namespace), query=query).get("items", [])
        return [dict(item, kind=kind) for item in items]

    def delete(self, kind: str, name: str, namespace: str | None = None, *, uid: str | None = None,
               propagation: str = "Background") -> bool:
        """Delete; with ``uid`` only that very object (a precondition: another object of the same name stays).
        False when there was nothing to delete or the uid did not match."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.call("DELETE", self.object_path(kind, name, namespace), body=body, content_type="application/json")
        except ApiException as exc:
            if exc.status == 404 or (uid and exc.status == 409):
                return False
            raise
        return True

    def merge_patch(self, kind: str, name: str, namespace: str | None, patch: dict,
                    subresource: str | None = None) -> dict:
        return self.call("PATCH", self.object_path(kind, name, namespace, subresource), body=patch,
                         content_type="application/merge-patch+json")

    def patch_status(self, kind: str, name: str, namespace: str | None, status: dict,
                     resource_version: str | None = None) -> dict:
        """JSON merge patch of .status; with resource_version the API server refuses it (409) if the object
        changed since it was read — the optimistic concurrency admission relies on."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self.merge_patch(kind, name, namespace, body, "status")


def owner_reference(obj: Mapping[str, Any], controller: bool = True) -> dict:
    return {
        "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"], "controller": controller, "blockOwnerDeletion": True,
    }


def with_owner(child: dict, owner: Mapping[str, Any]) -> dict:
    child = dict(child)
    child["metadata"] = dict(child["metadata"], ownerReferences=[owner_reference(owner)])
    return child


def later_version(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Is ``a`` a later version of the object than ``b`` (same uid, higher resourceVersion)? resourceVersions are
    opaque, but the API server's are etcd revisions, and only ours are compared here: what the operator wrote against
    what its watch-fed store holds."""
    ma, mb = a.get("metadata") or {}, b.get("metadata") or {}
    if ma.get("uid") != mb.get("uid"):
        return False
    try:
        return int(ma.get("resourceVersion") or 0) > int(mb.get("resourceVersion") or 0)
    except ValueError:
        return False


def controller_uid(obj: Mapping[str, Any] | None) -> str | None:
    """The uid of the object's controller (the ownerReference with ``controller: true``), if any."""
    for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None
