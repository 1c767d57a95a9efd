"""Which watch event wakes which key. Informer threads call these after the store changed; they only queue keys
(and mark what the next admission pass decides again), never read the API or write.

Only what matters wakes anything: a ModelDeployment, Model or Tenant event that changes neither its generation nor
its existence (status writes, a `kubectl annotate` loop) causes no work at all.
"""

from __future__ import annotations

import threading

from ..api.names import LABEL_MODEL_DEPLOYMENT, LABEL_RELEASED, LABEL_TENANT
from ..core.autoscaling import scale_target
from ..core.workloads import gpus_requested, holds_gpus
from .state import Context


class Triggers:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._lock = threading.Lock()
        # object key → (uid, generation, deleting) of the last event acted on; dropped with the object
        self._seen: dict[tuple, tuple] = {}
        # (kind, uid) → what GPU pod accounting read of a pod or ReplicaSet at its last event
        self._fingerprints: dict[tuple, tuple] = {}
        self._gpu_resources = tuple({c.resource_name for c in ctx.config.gpu_classes.values()})
        # namespace → (tenant label, released label), for the labelled ones
        self._namespaces: dict[str | None, tuple[str | None, str | None]] = {}
        # HorizontalPodAutoscaler uid → the ModelDeployment it scales, as last seen (a change wakes both)
        self._hpa_targets: dict[str | None, tuple[str | None, str]] = {}

    def _changed(self, key: tuple, event_type: str, meta: dict, extra: object = None) -> bool:
        """Is this event more than a status write or a metadata edit of an object llmos already acted on?
        (``extra``: a part of the status that is an input, the autoscaler's recorded count.)"""
        with self._lock:
            if event_type == "DELETED":
                self._seen.pop(key, None)
                return True
            seen = (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")), extra)
            if self._seen.get(key) == seen:
                return False
            self._seen[key] = seen
            return True

    # The three kinds ------------------------------------------------------------------------------------------------

    def model_deployment(self, event_type: str, body: dict) -> None:
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        if event_type == "DELETED":
            self.ctx.cache.forget("ModelDeployment", ns, name)
        # The autoscaler's count is recorded in the status: a new one is a new demand for admission.
        recorded = ((body.get("status") or {}).get("autoscaling") or {}).get("desiredReplicas")
        if self._changed(("ModelDeployment", ns, name), event_type, meta, recorded):
            self.ctx.admit_again(namespace=ns)
            self.ctx.wake("ModelDeployment", ns, name)
            self.ctx.wake("ApiKeys", ns)  # its replicas: the share of a limit one replica enforces alone

    def model(self, event_type: str, body: dict) -> None:
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        if event_type == "DELETED":
            self.ctx.cache.forget("Model", ns, name)
            self.ctx.state.forget_model(ns or "", name or "")
        if self._changed(("Model", ns, name), event_type, meta):
            self.ctx.wake("Model", ns, name)

    def tenant(self, event_type: str, body: dict) -> None:
        meta = body.get("metadata") or {}
        if event_type == "DELETED":
            self.ctx.cache.forget("Tenant", None, meta.get("name"))
        if self._changed(("Tenant", meta.get("name")), event_type, meta):
            self.ctx.wake("Tenant", meta.get("name"))

    def namespace(self, event_type: str, body: dict) -> None:
        """A namespace gained, lost or changed its tenant (or released) label: ownership, and so admission, may
        differ. Other namespaces' events (every namespace is watched) cause no work."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        marks = None if event_type == "DELETED" else (labels.get(LABEL_TENANT), labels.get(LABEL_RELEASED))
        with self._lock:
            before = self._namespaces.pop(meta.get("name"), None)
            if marks is not None and marks != (None, None):
                self._namespaces[meta.get("name")] = marks
        if (before or (None, None)) == (marks or (None, None)):
            return
        owner = (marks or before or (None, None))[0]
        if event_type != "MODIFIED" and owner:
            self.ctx.wake("Tenant", owner)
        if meta.get("name"):
            self.ctx.wake("ApiKeys", meta["name"])
        self.ctx.admit_again(everything=True)  # ownership may have moved

    def autoscaler(self, event_type: str, body: dict) -> None:
        """A HorizontalPodAutoscaler came, went or changed target: the ModelDeployments it scaled and scales say
        so (ScalingActive) and the autoscaler holds their count."""
        meta = body.get("metadata") or {}
        target = None if event_type == "DELETED" else scale_target(body)
        now = (meta.get("namespace"), target) if target else None
        with self._lock:
            before = self._hpa_targets.pop(meta.get("uid"), None)
            if now is not None:
                self._hpa_targets[meta.get("uid")] = now
        for found in {before, now} - {None}:
            self.ctx.wake("ModelDeployment", *found)  # type: ignore[misc]

    # Children -------------------------------------------------------------------------------------------------------

    def child(self, event_type: str, body: dict) -> None:
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(LABEL_MODEL_DEPLOYMENT)
        if owner and meta.get("namespace"):
            self.ctx.wake("ModelDeployment", meta["namespace"], owner)

    def pod(self, event_type: str, pod: dict) -> None:
        self.child(event_type, pod)
        if gpus_requested(pod, self._gpu_resources):
            self._gpu_pods_changed(event_type, pod, ((pod.get("spec") or {}).get("nodeName"),
                                                     (pod.get("status") or {}).get("phase")))
        releasing = self.ctx.state.releasing
        if releasing and (event_type == "DELETED" or not holds_gpus(pod)):
            meta = pod.get("metadata") or {}
            key = f"{meta.get('namespace')}/{(meta.get('labels') or {}).get(LABEL_MODEL_DEPLOYMENT)}"
            if key in releasing:
                self.ctx.admit_again(namespace=meta.get("namespace"))

    def replica_set(self, event_type: str, rs: dict) -> None:
        self.child(event_type, rs)
        self._gpu_pods_changed(event_type, rs, ())

    def _gpu_pods_changed(self, event_type: str, obj: dict, extra: tuple) -> None:
        """Judge a tenant or released namespace's GPU pods again when a pod or ReplicaSet changed what its
        accounting reads: existence, owners, deletion, node, phase (not every status write)."""
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace")
        labels = ((self.ctx.cache["Namespace"].get(ns or "") or {}).get("metadata") or {}).get("labels") or {}
        if LABEL_TENANT not in labels and LABEL_RELEASED not in labels:
            return
        key = (obj.get("kind"), meta.get("uid"))
        seen = None if event_type == "DELETED" else (
            repr(meta.get("ownerReferences")), bool(meta.get("deletionTimestamp")), *extra)
        with self._lock:
            before = self._fingerprints.pop(key, None)
            if seen is not None:
                self._fingerprints[key] = seen
        if before != seen:
            self.ctx.wake("GPUPods", ns)

    # What Models are verified with ----------------------------------------------------------------------------------

    def bundle_configmap(self, event_type: str, meta_obj: dict) -> None:
        """A ConfigMap changed: re-verify the Models whose bundle (or an adapter's) it holds, and refresh the
        deployments serving those adapters."""
        meta = meta_obj["metadata"]
        ns, name = meta.get("namespace"), meta.get("name")
        if not self.ctx.cache.content_changed("ConfigMap", ns, name, meta.get("resourceVersion")):
            return  # the version llmos already read
        for raw in self.ctx.cache["Model"].list(ns):
            spec = raw.get("spec") or {}
            model_bundle = ((spec.get("signature") or {}).get("bundleRef") or {}).get("name") == name
            adapter_bundle = any(((a.get("signature") or {}).get("bundleRef") or {}).get("name") == name
                                 for a in spec.get("adapters") or [])
            if model_bundle:
                self.ctx.wake("Model", ns, raw["metadata"]["name"])
            if adapter_bundle:
                self.deployments_of_model(ns or "", raw["metadata"]["name"])

    def key_secret(self, event_type: str, meta_obj: dict) -> None:
        """A Secret of the operator's namespace changed: re-verify the Models of every tenant trusting a key in it."""
        meta = meta_obj["metadata"]
        name = meta.get("name")
        if not self.ctx.cache.content_changed("Secret", meta.get("namespace"), name, meta.get("resourceVersion")):
            return
        labelled = self.ctx.cache.labelled_namespaces()
        for raw in self.ctx.cache["Tenant"].list():
            keys = (raw.get("spec") or {}).get("trustedKeys") or []
            if any((k.get("secretRef") or {}).get("name") == name for k in keys):
                for ns, owner in labelled.items():
                    if owner == raw["metadata"]["name"]:
                        self.models_in(ns)

    def api_key_secret(self, event_type: str, secret: dict) -> None:
        """A key Secret (type llmos.dev/api-key) was made, changed or deleted: its namespace's key table."""
        ns = (secret.get("metadata") or {}).get("namespace")
        if ns:
            self.ctx.wake("ApiKeys", ns)

    # Fan-out helpers the reconcilers use too ------------------------------------------------------------------------

    def deployments_of_model(self, namespace: str, model_name: str) -> None:
        for mdep in self.ctx.cache["ModelDeployment"].list(namespace):
            if (mdep.get("spec") or {}).get("model") == model_name:
                self.ctx.wake("ModelDeployment", namespace, mdep["metadata"]["name"])

    def models_in(self, namespace: str) -> None:
        for model in self.ctx.cache["Model"].list(namespace):
            self.ctx.wake("Model", namespace, model["metadata"]["name"])
