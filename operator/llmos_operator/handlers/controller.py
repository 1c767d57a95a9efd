"""The reconcilers: read what is, call the pure parts (quota, placement, render, signing), apply, write status.

Level-triggered. kopf's watch events only put keys on a work queue (handlers/main.py); worker threads take them:

- ``ADMISSION`` — an admission pass over the tenants whose deployments, Models or Tenant changed since the last
  one (``AdmissionScope``; all of them after a start, a resync or a namespace relabelled): ``quota.admit``, then
  each changed Tenant ledger is written to ``status.reservations`` with its resourceVersion (a 409 means someone
  else wrote first: read again and decide again). Only after the ledger is stored are decisions published to the
  other reconcilers, so no pod ever runs on GPUs that are not recorded, whatever the operator's restarts.
- ``("Tenant", name)`` — namespaces, ResourceQuota backstop, NetworkPolicy (re-applied only when what it renders
  changed, or after ``REAPPLY_SECONDS``); then Models of its namespaces when its keys or namespaces changed, and an
  admission pass.
- ``("Model", ns, name)`` — verify the signature bundle against the tenant's keys; status and events. Re-verified
  when its bundle ConfigMap, a trusted-key Secret or its Tenant changes (watched, metadata only).
- ``("ModelDeployment", ns, name)`` — children (when admitted), status from the children, pods and nodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client import ApiException

from .. import metrics
from .. import policy
from ..api.types import InvalidObject, Model, ModelDeployment, SignatureSpec, Tenant, parse_as
from ..config import OperatorConfig
from ..placement import can_ever_fit, summarize_scheduling_failures
from ..quota import Decision, Request, TenantInfo, admit, deployment_key, ledger_key, merge_ledgers, parse_ledger
from ..quota import is_releasing, namespace_owners
from ..render import (
    RenderError,
    desired_status,
    model_status,
    pod_requests,
    render_children,
    render_released_namespace,
    render_resource_quota,
    render_tenant_children,
    tenant_status,
    transitions,
)
from ..render.status import (
    DEGRADED,
    MODEL_VERIFIED,
    OVER_QUOTA,
    PROGRESSING,
    READY,
    RECONCILING,
    STALLED,
    condition,
    merge_conditions,
    now_rfc3339,
)
from ..render.common import (
    ANNOTATION_ADAPTERS,
    LABEL_MANAGED_BY,
    LABEL_MODEL_DEPLOYMENT,
    MANAGED_BY,
    trust_configmap_name,
)
from ..render.rollout import (
    COMPLETE,
    ROLLED_BACK,
    ROLLING_OUT,
    ROLLOUT_STOPPED,
    RolloutFacts,
    plan_rollout,
    template_digest,
    template_hash,
)
from ..render.tenant import RELEASED_CHILDREN, TENANT_CHILDREN
from .kube import Kube, with_owner
from .store import (
    SUMMARY,
    Informer,
    Store,
    child_summary,
    deployment_summary,
    metadata_summary,
    node_summary,
    pod_summary,
    replica_set_summary,
    without_managed_fields,
)
from .workqueue import WorkQueue

log = logging.getLogger("llmos.controller")

ADMISSION = ("admission",)
TENANT_LABEL = policy.LABEL_TENANT
RUNTIME_CONTAINER = "runtime"
# Test knob (docs/testing.md): seconds each Model verification waits first, so a test can act in the window between a
# Model edit and its verification ("a paused verifier").
VERIFY_DELAY_SECONDS = float(os.environ.get("LLMOS_VERIFY_DELAY_SECONDS", "0"))
# What a Tenant renders is applied again, unchanged, this often at most (a safety net for hand edits of its children);
# in between a reconcile whose rendering did not change writes nothing.
REAPPLY_SECONDS = float(os.environ.get("LLMOS_REAPPLY_SECONDS", "3600"))
# A generation admission has not decided after this long gets `Reconciling=True, AdmissionPending` in its status;
# one decided sooner (nearly all) skips that status write: the decision's own status follows at once.
ADMISSION_PENDING_GRACE_SECONDS = 5.0


class Conflict(Exception):
    """Another writer changed an object between our read and our write; the pass starts again."""


class ChildWriteFailed(Exception):
    """The API server refused a child; the status says so and the key backs off."""


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a Model's signature, plus what the pods need to check it again themselves."""

    verified: bool
    reason: str
    message: str
    digest: str | None = None
    signer: str | None = None
    key_hint: str | None = None
    file_count: int | None = None
    bundle: bytes | None = None
    signer_pem: bytes | None = None
    keys: dict[str, bytes] | None = None  # every key trusted for the Model's namespace (adapters may use any)

    @property
    def servable(self) -> bool:
        return self.verified or self.reason == "SignatureDisabled"


@dataclass(frozen=True)
class Ownership:
    """Who owns which namespace, as the stores say now (``Controller._ownership``)."""

    tenants: list[Tenant]
    by_name: dict[str, Tenant]
    labelled: dict[str, str]  # namespace → the tenant its label names
    claimed: dict[str, str]  # namespace → the tenant namespace_owners gives it (labelled for it or not yet)
    owners: dict[str, str]  # namespace → its owner: claimed and labelled for it
    conflicts: dict[str, dict[str, str]]  # tenant → {namespace it claims: the owner}


class AdmissionScope:
    """What the next admission pass must decide again, as events report it (thread-safe): tenants by name (None:
    the namespaces no tenant owns), namespaces (whichever tenant owns them when the pass runs), or everything (the
    first pass, a resync, a namespace relabelled, a Tenant deleted)."""

    @dataclass(frozen=True)
    class Taken:
        everything: bool
        tenants: frozenset
        namespaces: frozenset

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._everything = True  # nothing is decided yet
        self._tenants: set[str | None] = set()
        self._namespaces: set[str] = set()

    def mark(self, *, namespace: str | None = None, tenants: tuple[str | None, ...] = (),
             everything: bool = False) -> None:
        with self._lock:
            self._everything |= everything
            self._tenants.update(tenants)
            if namespace is not None:
                self._namespaces.add(namespace)

    def take(self) -> Taken:
        with self._lock:
            taken = self.Taken(self._everything, frozenset(self._tenants), frozenset(self._namespaces))
            self._everything, self._tenants, self._namespaces = False, set(), set()
        return taken

    def give_back(self, taken: Taken) -> None:
        """A pass that failed: what it should have decided is still to decide."""
        with self._lock:
            self._everything |= taken.everything
            self._tenants |= taken.tenants
            self._namespaces |= taken.namespaces


class Controller:
    def __init__(self, kube: Kube, config: OperatorConfig, store: Store | None = None):
        self.kube = kube
        self.config = config
        self.queue = WorkQueue(group_of=_fairness_group)
        self.store = store if store is not None else self._make_store()
        self._parsed: dict[tuple, tuple[str | None, Any]] = {}  # (kind, ns, name) → (resourceVersion, parsed)
        self._fit_memo: dict[tuple, Any] = {}
        self._series = metrics.TenantSeries()
        self._admission_lock = threading.Lock()
        self._admission_scope = AdmissionScope()  # what the next admission pass decides again
        # the tenant gauges as last published: admitted, queued (by tenant), GPUs used, allowed (by tenant and class)
        self._series_values: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
        self._decisions: dict[str, Decision] = {}
        self._decision_uids: dict[str, str] = {}
        # ModelDeployment key → surge GPUs its rollout wants (render/rollout.py); absent: not known since a restart
        # (admission then keeps whatever surge the ledger holds)
        self._surge_asks: dict[str, int] = {}
        # (Tenant store version, Namespace store version) → who owns which namespace (see _ownership)
        self._ownership_memo: tuple[tuple[int, int], Ownership] | None = None
        # tenant → what its last reconcile asked admission to decide on (see reconcile_tenant)
        self._tenant_admission_inputs: dict[str, tuple] = {}
        # ModelDeployment key → ((uid, generation), when it was first found waiting for admission)
        self._waiting_since: dict[str, tuple[tuple[str | None, int | None], float]] = {}
        # Deployments whose departing pods still hold GPUs in a ledger (#releasing): a pod of theirs that goes runs an
        # admission pass of its namespace, which frees them.
        self._releasing: set[str] = set()
        # (namespace, model) → (uid, generation, outcome) of the last verification; reconcile_model renews it
        self._verified: dict[tuple[str, str], tuple[str | None, int | None, Verification]] = {}
        self._specs: dict[tuple[str, str], tuple[str, int | None]] = {}  # mdep key → (uid, generation)
        self._seen: dict[tuple, tuple] = {}  # Model/Tenant key → (uid, generation, deleting) of the last event acted on
        # tenant → {namespace: why it may not be taken}, from the tenant's last reconcile (shown in its status)
        self._refused_namespaces: dict[str, dict[str, str]] = {}
        self._refused_keys: dict[str, list[str]] = {}  # tenant → trusted keys refused, with why
        # namespace → {GPU resource: GPUs} its ResourceQuota backstop allows, as last written
        self._backstops: dict[str, dict[str, int]] = {}
        # tenant → (digest of what was applied, when, (generation, owned namespaces) its Models were queued for)
        self._tenant_applied: dict[str, tuple[str, float, tuple]] = {}
        # ("ConfigMap" | "Secret", namespace, name) → (resourceVersion, data, binaryData) of the last live read: read
        # again only when the metadata-only informer reports another resourceVersion
        self._contents: dict[tuple[str, str | None, str], tuple[str | None, dict, dict]] = {}
        self._verify_memo: dict[str, Any] = {}  # digest of (bundle, keys) → verify_bundle's result (or its error)
        # (namespace, ModelDeployment) → {(kind, name) of a child: (digest of what was applied, the stored version it
        # produced, when)}; dropped with the deployment (a fixed cap, once 50,000, re-applied every child of a
        # 10,000-deployment fleet whenever it was reached)
        self._child_applied: dict[tuple[str, str], dict[tuple[str, str], tuple[str, Any, float]]] = {}

    # ---------------------------------------------------------------------------------------------------------------
    # Routing

    def handle(self, key: Hashable) -> None:
        kind = key[0]  # type: ignore[index]
        start = time.monotonic()
        result = "error"
        try:
            if key == ADMISSION:
                self.reconcile_admission()
            elif kind == "Tenant":
                self.reconcile_tenant(key[1])  # type: ignore[index]
            elif kind == "Model":
                self.reconcile_model(key[1], key[2])  # type: ignore[index]
            elif kind == "ModelDeployment":
                self.reconcile_model_deployment(key[1], key[2])  # type: ignore[index]
            result = "ok"
        finally:
            metrics.RECONCILES.labels(kind, result).inc()
            metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - start)

    def on_error(self, key: Hashable, exc: BaseException, retry_in: float | None) -> None:
        if isinstance(exc, (Conflict, ChildWriteFailed)):
            log.info("%s: %s; retrying in %.1f s", key, exc, retry_in or 0)
        elif isinstance(exc, ApiException):
            log.warning("%s: API error %s %s; retrying in %.1f s", key, exc.status, exc.reason, retry_in or 0)
        else:
            log.exception("%s failed; retrying in %.1f s", key, retry_in or 0, exc_info=exc)

    def model_deployment_event(self, event_type: str | None, body: dict) -> None:
        """A ModelDeployment changed. Only a new spec (generation), a new object or its deletion matter: status writes
        (ours) and metadata edits (a tenant's `kubectl annotate` loop) cause no work at all."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        spec_key = (ns, name)
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self._specs.pop(spec_key, None)
            self._admit_again(namespace=ns)
            return
        seen = (meta.get("uid"), meta.get("generation"))
        if self._specs.get(spec_key) != seen:
            self._specs[spec_key] = seen
            self._admit_again(namespace=ns)
            self.queue.add(("ModelDeployment", ns, name))

    def model_event(self, event_type: str | None, body: dict) -> None:
        meta = body.get("metadata") or {}
        key = ("Model", meta.get("namespace"), meta.get("name"))
        if self._changed(key, event_type, meta):
            self.queue.add(key)

    def tenant_event(self, event_type: str | None, body: dict) -> None:
        meta = body.get("metadata") or {}
        key = ("Tenant", meta.get("name"))
        if self._changed(key, event_type, meta):
            self.queue.add(key)

    def _changed(self, key: tuple, event_type: str | None, meta: dict) -> bool:
        """Is this event more than a status write or a metadata edit of an object llmos already acted on?"""
        if event_type == "DELETED":
            self._seen.pop(key, None)
            return True
        seen = (meta.get("uid"), meta.get("generation"), bool(meta.get("deletionTimestamp")))
        if self._seen.get(key) == seen:
            return False
        self._seen[key] = seen
        return True

    def start_resync(self, interval: float) -> threading.Thread:
        """A safety net for a missed event: every Tenant and Model and an admission pass, once per ``interval``,
        spread over it (not all keys at once). Keys come from the store; a reconcile whose inputs did not change
        reads nothing live and writes nothing."""

        def loop() -> None:
            while not self.queue.closed:
                time.sleep(interval)
                try:
                    keys: list[Hashable] = [("Tenant", t["metadata"]["name"]) for t in self.store["Tenant"].list()]
                    keys += [("Model", m["metadata"].get("namespace"), m["metadata"]["name"])
                             for m in self.store["Model"].list()]
                    keys.append(ADMISSION)
                    self._admission_scope.mark(everything=True)
                    for i, key in enumerate(keys):
                        self.queue.add(key, delay=interval * i / len(keys) + 0.01)
                except Exception:  # noqa: BLE001 — the next round tries again
                    log.warning("resync failed", exc_info=True)

        thread = threading.Thread(target=loop, name="llmos-resync", daemon=True)
        thread.start()
        return thread

    def child_event(self, body: dict) -> None:
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(LABEL_MODEL_DEPLOYMENT)
        if owner and meta.get("namespace"):
            self.queue.add(("ModelDeployment", meta["namespace"], owner))

    def pod_event(self, event_type: str, pod: dict) -> None:
        self.child_event(pod)
        if self._releasing and (event_type == "DELETED" or not _holds_gpus(pod)):
            meta = pod.get("metadata") or {}
            key = f"{meta.get('namespace')}/{(meta.get('labels') or {}).get(LABEL_MODEL_DEPLOYMENT)}"
            if key in self._releasing:
                self._admit_again(namespace=meta.get("namespace"))

    def _held_by_pods(self, owners: Mapping[str, str]) -> dict[str, tuple[str, int]]:
        """Deployment key → (tenant, GPUs its unfinished pods request, terminating ones included), in ``owners``'
        namespaces: what admission keeps reserved while a departing pod still holds it."""
        resources = {c.resource_name for c in self.config.gpu_classes.values()}
        held: dict[str, tuple[str, int]] = {}
        for ns, owner in owners.items():
            for pod in self.store["Pod"].list(ns):
                gpus = _gpus_requested(pod, resources) if _holds_gpus(pod) else 0
                if gpus:
                    key = f"{ns}/{(pod['metadata'].get('labels') or {}).get(LABEL_MODEL_DEPLOYMENT)}"
                    held[key] = (owner, held.get(key, (owner, 0))[1] + gpus)
        return held

    # ---------------------------------------------------------------------------------------------------------------
    # Reads: everything from the watch-fed store (handlers/store.py); live GETs only where a stale answer could hand a
    # tenant something (a namespace it may not take)

    def _make_store(self) -> Store:
        kube = self.kube
        child_selector = LABEL_MODEL_DEPLOYMENT  # llmos's children only, selected by the API server

        def child(_type: str, obj: dict) -> None:
            self.child_event(obj)

        return Store({
            "Tenant": Informer(kube, "Tenant", on_event=self.tenant_event, transform=without_managed_fields),
            "Model": Informer(kube, "Model", on_event=self.model_event, transform=without_managed_fields),
            "ModelDeployment": Informer(kube, "ModelDeployment", on_event=self.model_deployment_event,
                                        transform=without_managed_fields),
            "Namespace": Informer(kube, "Namespace", label_selector=TENANT_LABEL, on_event=self.namespace_event,
                                  transform=without_managed_fields),
            "Node": Informer(kube, "Node", transform=node_summary),
            "Pod": Informer(kube, "Pod", label_selector=child_selector, on_event=self.pod_event, transform=pod_summary),
            "Deployment": Informer(kube, "Deployment", label_selector=child_selector, on_event=child,
                                   transform=deployment_summary),
            # A rollback applies the template of the last complete rollout, which its ReplicaSet keeps.
            "ReplicaSet": Informer(kube, "ReplicaSet", label_selector=child_selector, on_event=child,
                                   transform=replica_set_summary),
            "Service": Informer(kube, "Service", label_selector=child_selector, on_event=child,
                                transform=child_summary),
            "ConfigMap": Informer(kube, "ConfigMap", label_selector=child_selector, on_event=child,
                                  transform=child_summary),
            "PodDisruptionBudget": Informer(kube, "PodDisruptionBudget", label_selector=child_selector,
                                            on_event=child, transform=child_summary),
            # What Models are verified with, watched so a change re-verifies them: bundle ConfigMaps (any, as tenants
            # name them; metadata only: ~100 bytes each) and trusted-key Secrets of the operator's namespace only.
            "BundleConfigMap": Informer(kube, "ConfigMap", metadata_only=True, on_event=self.configmap_event,
                                        transform=metadata_summary),
            "KeySecret": Informer(kube, "Secret", namespace=self.config.operator_namespace, metadata_only=True,
                                  on_event=self.secret_event, transform=metadata_summary),
        })

    def configmap_event(self, event_type: str, meta_obj: dict) -> None:
        """A ConfigMap changed: re-verify the Models whose bundle (or an adapter's) it holds, and refresh the
        deployments serving those adapters."""
        meta = meta_obj["metadata"]
        ns, name = meta.get("namespace"), meta.get("name")
        cached = self._contents.get(("ConfigMap", ns, name))
        if cached is None and event_type == "ADDED":
            pass  # nothing read yet: Models that name it are queued below all the same (it may have just appeared)
        elif cached is not None and cached[0] == meta.get("resourceVersion"):
            return  # the version llmos already read
        self._contents.pop(("ConfigMap", ns, name), None)
        for raw in self.store["Model"].list(ns):
            spec = raw.get("spec") or {}
            model_bundle = ((spec.get("signature") or {}).get("bundleRef") or {}).get("name") == name
            adapter_bundle = any(((a.get("signature") or {}).get("bundleRef") or {}).get("name") == name
                                 for a in spec.get("adapters") or [])
            if model_bundle:
                self.queue.add(("Model", ns, raw["metadata"]["name"]))
            if adapter_bundle:
                self._wake_deployments_of(ns, raw["metadata"]["name"])

    def secret_event(self, event_type: str, meta_obj: dict) -> None:
        """A Secret of the operator's namespace changed: re-verify the Models of every tenant trusting a key in it."""
        name = meta_obj["metadata"].get("name")
        cached = self._contents.get(("Secret", meta_obj["metadata"].get("namespace"), name))
        if cached is not None and cached[0] == meta_obj["metadata"].get("resourceVersion"):
            return
        self._contents.pop(("Secret", meta_obj["metadata"].get("namespace"), name), None)
        labelled = self._labelled_namespaces()
        for raw in self.store["Tenant"].list():
            keys = (raw.get("spec") or {}).get("trustedKeys") or []
            if any((k.get("secretRef") or {}).get("name") == name for k in keys):
                for ns, owner in labelled.items():
                    if owner == raw["metadata"]["name"]:
                        for model in self.store["Model"].list(ns):
                            self.queue.add(("Model", ns, model["metadata"]["name"]))

    def _read_watched(self, kind: str, store_name: str, name: str, namespace: str) -> tuple[dict, dict] | None:
        """(data, binaryData) of a ConfigMap or Secret the store watches (metadata only): read live only when its
        resourceVersion differs from the last read, or when the store has not heard of it (it may be new)."""
        meta = self.store[store_name].get(name, namespace)
        cached = self._contents.get((kind, namespace, name))
        if meta is not None and cached is not None and cached[0] == meta["metadata"].get("resourceVersion"):
            return cached[1], cached[2]
        live = self.kube.get(kind, name, namespace)
        if live is None:
            self._contents.pop((kind, namespace, name), None)
            return None
        data, binary = live.get("data") or {}, live.get("binaryData") or {}
        if len(self._contents) > 10000:
            self._contents.clear()
        self._contents[(kind, namespace, name)] = (live["metadata"].get("resourceVersion"), data, binary)
        return data, binary

    def namespace_event(self, event_type: str, body: dict) -> None:
        """A namespace gained, lost or changed its tenant label: ownership (and so admission) may differ."""
        owner = ((body.get("metadata") or {}).get("labels") or {}).get(TENANT_LABEL)
        if event_type != "MODIFIED" and owner:
            self.queue.add(("Tenant", owner))
        self._admit_again(everything=True)  # ownership may have moved

    def _parse(self, cls: type, raw: dict | None) -> Any:
        """The typed form of a stored object, parsed once per resourceVersion."""
        if raw is None:
            return None
        meta = raw["metadata"]
        key = (cls.__name__, meta.get("namespace"), meta["name"])
        version = meta.get("resourceVersion")
        cached = self._parsed.get(key)
        if cached is not None and cached[0] == version and version is not None:
            return cached[1]
        parsed = parse_as(cls, raw)
        self._parsed[key] = (version, parsed)
        return parsed

    def _stored(self, cls: type, kind: str, name: str, namespace: str | None = None) -> Any:
        raw = self.store[kind].get(name, namespace)
        if raw is None:
            self._parsed.pop((cls.__name__, namespace, name), None)
            return None
        try:
            return self._parse(cls, raw)
        except InvalidObject as exc:
            log.warning("invalid %s %s/%s: %s", kind, namespace, name, exc)
            return None

    def _tenants(self) -> list[Tenant]:
        out = []
        for raw in self.store["Tenant"].list():
            try:
                out.append(self._parse(Tenant, raw))
            except InvalidObject as exc:  # the CRD schema should make this impossible; never crash on it
                log.warning("ignoring invalid Tenant: %s", exc)
        return out

    def _ownership(self) -> Ownership:
        """The Tenants, the namespaces labelled for them and who owns which, computed once per change of the Tenant
        or Namespace store: every admission pass and Tenant reconcile reads them, and recomputing them each time
        (O(tenants)) made an idle operator with 1,000 tenants busy."""
        version = (self.store["Tenant"].version, self.store["Namespace"].version)
        memo = self._ownership_memo
        if memo is not None and memo[0] == version:
            return memo[1]
        tenants = self._tenants()
        labelled = self._labelled_namespaces()
        claimed, conflicts = namespace_owners(tenants, labelled)
        ownership = Ownership(
            tenants=tenants, by_name={t.metadata.name: t for t in tenants}, labelled=labelled, claimed=claimed,
            owners={ns: t for ns, t in claimed.items() if labelled.get(ns) == t}, conflicts=conflicts)
        self._ownership_memo = (version, ownership)
        return ownership

    def _labelled_namespaces(self) -> dict[str, str]:
        labelled = self.store["Namespace"].list()
        return {n["metadata"]["name"]: n["metadata"]["labels"][TENANT_LABEL] for n in labelled
                if TENANT_LABEL in (n["metadata"].get("labels") or {})}

    def _get_model(self, namespace: str, name: str) -> Model | None:
        return self._stored(Model, "Model", name, namespace)

    # ---------------------------------------------------------------------------------------------------------------
    # Admission

    def reconcile_admission(self) -> None:
        with self._admission_lock:
            scope = self._admission_scope.take()
            try:
                for attempt in range(5):
                    try:
                        self._admission_pass(scope)
                        return
                    except Conflict:
                        if attempt == 4:
                            raise
                        time.sleep(0.05 * (attempt + 1))
            except BaseException:
                self._admission_scope.give_back(scope)  # the queue's retry decides it all the same
                raise

    def _admit_again(self, *, namespace: str | None = None, tenants: tuple[str | None, ...] = (),
                     everything: bool = False) -> None:
        """Queue an admission pass that decides again what an event touched: the tenant owning ``namespace``, the
        ``tenants`` named (None: namespaces no tenant owns), or ``everything``."""
        self._admission_scope.mark(namespace=namespace, tenants=tenants, everything=everything)
        self.queue.add(ADMISSION)

    def _admission_pass(self, scope: AdmissionScope.Taken) -> None:
        """Decide the tenants in ``scope`` again (admission never couples tenants: the operator gives ``admit`` no
        cluster capacity), write their ledgers and backstops, and publish their decisions; every other tenant's
        decisions stand. Its cost grows with what changed, not with every deployment of the cluster."""
        ownership = self._ownership()
        tenants, by_name, labelled = ownership.tenants, ownership.by_name, ownership.labelled
        owners, conflicts = ownership.owners, ownership.conflicts
        for tenant_name in set(labelled.values()) - set(by_name):
            self.queue.add(("Tenant", tenant_name))  # its namespaces are still labelled: release them
        previous = self._decisions
        if scope.everything:
            deciding: set[str | None] = {*by_name, None}
        else:
            deciding = set(scope.tenants) | {owners.get(ns) for ns in scope.namespaces}
            # A decision made under another owner than its namespace's now (ownership moved): both decide again.
            for key, decision in previous.items():
                owner = owners.get(key.split("/", 1)[0])
                if decision.tenant != owner:
                    deciding |= {decision.tenant, owner}
        deciding_tenants = [t for t in tenants if t.metadata.name in deciding]
        ledger = merge_ledgers([parse_ledger({k: v.to_dict() for k, v in t.status.reservations.items()})
                                for t in deciding_tenants])
        # The deciding tenants' namespaces, and with None those no tenant owns: never every deployment's.
        namespaces = (self.store["ModelDeployment"].namespaces() if None in deciding
                      else [ns for ns, owner in owners.items() if owner in deciding])
        raws = [raw for ns in namespaces if owners.get(ns) in deciding
                for raw in self.store["ModelDeployment"].list(ns)]
        requests, mdeps, refused = [], {}, {}
        for raw in raws:
            owner = owners.get(raw["metadata"].get("namespace") or "")
            if owner not in deciding or raw["metadata"].get("deletionTimestamp"):
                continue
            try:
                mdep = self._parse(ModelDeployment, raw)
            except InvalidObject:
                continue
            mdeps[mdep.key] = mdep
            tenant = by_name.get(owner) if owner else None
            refusal = policy.deployment_refusal(mdep, tenant, self.config) if tenant else None
            if refusal is not None:
                # What the platform does not allow reserves no GPU: not even a candidate.
                refused[mdep.key] = _refused(mdep, owner, *refusal)
                continue
            model = self._model_for_admission(mdep.metadata.namespace or "", mdep.spec.model)
            surge = self._surge_asks.get(mdep.key)
            if tenant is not None and (model is None or not _model_servable(model)):
                holds = (ledger.get(mdep.key) or {}).get("uid") == mdep.metadata.uid
                if holds and model is not None and _model_serving(model):
                    # The Model's new revision is being verified, or was rejected: the previous one keeps serving
                    # on the GPUs it holds; nothing changes until the newest revision is verified.
                    frozen = ("ModelNotVerified", f"Model {model.metadata.name}'s newest revision is not verified")
                    requests.append(Request.from_model_deployment(mdep, owner, surge=surge, frozen=frozen))
                else:
                    # An unverified model reserves no GPU: its deployments are not even candidates.
                    refused[mdep.key] = _not_servable(mdep, model, owner)
                continue
            requests.append(Request.from_model_deployment(mdep, owner, surge=surge))
        deciding_owners = {ns: t for ns, t in owners.items() if t in deciding}
        result = admit(
            requests, ledger, {t.metadata.name: TenantInfo.from_tenant(t) for t in deciding_tenants},
            self.config.gpu_classes.keys(), held_by_pods=self._held_by_pods(deciding_owners),
        )
        self._releasing = {k for k in self._releasing if owners.get(k.split("/", 1)[0]) not in deciding} | {
            deployment_key(k) for k in result.ledger if is_releasing(k)}
        for tenant in deciding_tenants:
            name = tenant.metadata.name
            status = tenant_status(tenant, self.config, result=result, conflicts=conflicts.get(name),
                                   refused_namespaces=self._refused_namespaces.get(name),
                                   refused_keys=self._refused_keys.get(name))
            if _status_changed(tenant.status.to_dict(), status):
                try:
                    self.kube.patch_status("Tenant", name, None, status, tenant.metadata.resource_version)
                except ApiException as exc:
                    if exc.status == 409:
                        raise Conflict(f"Tenant {name} changed during admission") from None
                    raise
                self._tenant_events(tenant, status)
        self._publish_series(by_name, deciding_tenants, result)
        # The ledger is stored. Each namespace's GPU backstop follows it before any pod may use the decisions.
        self._write_backstops(deciding_tenants, deciding_owners, result)
        # Publish the decisions and wake the deployments whose decision changed.
        fresh = {**result.decisions, **refused}
        # A full pass decided every deployment there is: none of the previous decisions stands (those of a deleted
        # Tenant or deployment would linger otherwise).
        decisions = {} if scope.everything else {k: d for k, d in previous.items()
                                                  if d.tenant not in deciding and k not in fresh}
        decisions.update(fresh)
        self._decision_uids = {k: self._decision_uids.get(k, "") for k in decisions}
        self._decision_uids.update({k: mdeps[k].metadata.uid or "" for k in fresh})
        self._decisions = decisions
        for key in {*fresh, *(set(previous) - set(decisions))}:
            if previous.get(key) != decisions.get(key):
                ns, name = key.split("/", 1)
                self.queue.add(("ModelDeployment", ns, name))

    def _model_for_admission(self, namespace: str, name: str) -> Model | None:
        raw = self.store["Model"].get(name, namespace)
        try:
            return self._parse(Model, raw)
        except InvalidObject:
            return None  # admission says "not verified"; reconcile_model reports why

    def _publish_series(self, by_name: dict[str, Tenant], decided: list[Tenant], result: Any) -> None:
        """The per-tenant gauges: those of the tenants just decided, the others' as last decided (a Tenant that is
        gone loses its series)."""
        values = self._series_values
        for series in values:
            for key in [k for k in series if (k[0] if isinstance(k, tuple) else k) not in by_name]:
                del series[key]
        admitted, queued, used_gpus, allowed_gpus = values
        names = {t.metadata.name for t in decided}
        for key in [k for k in used_gpus if k[0] in names]:
            del used_gpus[key], allowed_gpus[key]
        for tenant in decided:
            name = tenant.metadata.name
            used = result.usage(name)
            admitted[name] = result.admitted_count(name)
            queued[name] = result.queued_count(name)
            for gpu_class in {*used, *tenant.spec.quota.gpus}:
                used_gpus[(name, gpu_class)] = used.get(gpu_class, 0)
                allowed_gpus[(name, gpu_class)] = tenant.spec.quota.gpus.get(gpu_class, 0)
        self._series.publish(admitted, queued, used_gpus, allowed_gpus, changed=names)

    def _write_backstops(self, tenants: list[Tenant], owners: dict[str, str], result: Any) -> None:
        """Each owned namespace's ResourceQuota allows exactly the GPUs the ledger reserves there (rollout surge and
        GPUs of departing pods included, as reserved): never the tenant's total copied into every namespace."""
        wanted: dict[str, dict[str, int]] = {ns: {} for ns in owners}
        for key, entry in result.ledger.items():
            ns = key.split("/", 1)[0]
            gpu_class = self.config.gpu_class(entry["class"])
            dk = deployment_key(key)
            if ns not in wanted or gpu_class is None or (result.decisions.get(dk) is None
                                                         and dk not in result.releasing_owners):
                continue
            gpus = entry["gpus"]
            wanted[ns][gpu_class.resource_name] = wanted[ns].get(gpu_class.resource_name, 0) + gpus
        by_name = {t.metadata.name: t for t in tenants}
        for ns, reserved in sorted(wanted.items()):
            if self._backstops.get(ns) == reserved:
                continue
            tenant = by_name[owners[ns]]
            quota = render_resource_quota(tenant, ns, self.config, reserved)
            self.kube.apply(with_owner(quota, _tenant_ref(tenant)))
            self._backstops[ns] = reserved

    def _tenant_events(self, tenant: Tenant, status: dict) -> None:
        raw = {"apiVersion": tenant.api_version, "kind": "Tenant",
               "metadata": {"name": tenant.metadata.name, "uid": tenant.metadata.uid, "namespace": None}}
        for t in transitions([c.to_dict() for c in tenant.status.conditions], status.get("conditions", [])):
            good = (t.status == "True") != (t.type == OVER_QUOTA)
            self.kube.event(raw, "Normal" if good else "Warning", t.reason, t.message)

    # ---------------------------------------------------------------------------------------------------------------
    # Tenant

    def reconcile_tenant(self, name: str) -> None:
        raw = self.store["Tenant"].get(name)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            for ns, owner in self._labelled_namespaces().items():
                if owner == name:
                    self._release_namespace(ns, name, "was deleted")
            self._refused_namespaces.pop(name, None)
            self._refused_keys.pop(name, None)
            self._tenant_applied.pop(name, None)
            self._tenant_admission_inputs.pop(name, None)
            self._admit_again(everything=True)  # its namespaces fall to no tenant, or to another
            return
        try:
            tenant = self._parse(Tenant, raw)
        except InvalidObject as exc:
            log.warning("invalid Tenant %s: %s", name, exc)
            return
        ownership = self._ownership()
        labelled, owners = ownership.labelled, ownership.claimed
        owned, refused, reclaimed = [], {}, []
        for ns in tenant.spec.namespaces:
            if owners.get(ns) != name:
                continue  # another tenant holds it: NamespaceConflict in the status
            if labelled.get(ns) == name and not policy.protected_namespace(ns, self.config):
                owned.append(ns)
                continue
            existing = self.kube.get("Namespace", ns)
            why = policy.namespace_refusal(ns, name, existing, self.config)
            if why is not None:
                refused[ns] = why  # nothing is written to it
                continue
            owned.append(ns)
            if existing is not None and ((existing["metadata"].get("labels") or {}).get(policy.LABEL_RELEASED)):
                reclaimed.append(ns)
        self._refused_namespaces[name] = refused
        self._refused_keys[name] = list(policy.refused_keys(tenant, self.config).values())
        children = []
        for child in render_tenant_children(tenant, self.config, namespaces=owned):
            if child["kind"] == "Namespace":
                children.append(child)  # namespaces are not owned: deleting a tenant must not delete workloads
            elif child["kind"] != "ResourceQuota":  # the admission pass writes it, from the ledger
                children.append(with_owner(child, raw))
        digest = hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()
        last_digest, applied_at, models_for = self._tenant_applied.get(name, (None, 0.0, None))
        if digest != last_digest or reclaimed or time.monotonic() - applied_at > REAPPLY_SECONDS:
            for child in children:
                self.kube.apply(child)
            applied_at = time.monotonic()
        for ns in reclaimed:
            for kind, child_name in RELEASED_CHILDREN:
                self.kube.delete(kind, child_name, ns)
        for ns, owner in labelled.items():
            if owner != name:
                continue
            if policy.protected_namespace(ns, self.config):
                self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})  # drop labels
            elif ns not in owned:
                self._release_namespace(ns, name, "no longer lists it")
        # The Models of its namespaces are verified with its keys: again when those (its generation) or the namespaces
        # changed, not on every reconcile.
        verified_for = (tenant.metadata.uid, tenant.metadata.generation, tuple(sorted(owned)))
        if verified_for != models_for:
            same_keys = models_for is not None and models_for[:2] == verified_for[:2]
            before = set(models_for[2]) if models_for is not None else set()
            # all of them if its keys changed; else those of namespaces it took or gave up
            for ns in (set(owned) | before) if not same_keys else (set(owned) ^ before):
                for model in self.store["Model"].list(ns):
                    self.queue.add(("Model", ns, model["metadata"]["name"]))
        self._tenant_applied[name] = (digest, applied_at, verified_for)
        # Admission decides again when what it reads of this tenant changed (spec, namespaces, refusals shown in its
        # status), not on every reconcile: a resync reconciles every Tenant, and its own full pass covers them.
        inputs = (*verified_for, tuple(sorted(refused.items())), tuple(self._refused_keys[name]))
        if self._tenant_admission_inputs.get(name) != inputs:
            self._tenant_admission_inputs[name] = inputs
            self._admit_again(tenants=(name, None))  # None: namespaces it gave up

    def _release_namespace(self, namespace: str, tenant: str, why: str) -> None:
        """The tenant is gone from this namespace: no GPUs, no ingress, no llmos pods; its users and data stay."""
        stored = self.store["Namespace"].get(namespace)
        if stored is not None and (stored.get("status") or {}).get("phase") == "Terminating":
            return  # being deleted: nothing to keep safe, and nothing may be created in it
        try:
            for child in render_released_namespace(namespace, tenant, self.config):
                self.kube.apply(child)  # first: the zero quota holds before anything else changes
        except ApiException as exc:
            live = self.kube.get("Namespace", namespace)
            if live is None or (live.get("status") or {}).get("phase") == "Terminating":
                return  # deleted meanwhile (the store had not heard yet)
            raise
        for dep in self.kube.list("Deployment", namespace, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}"):
            # A live read: the store holds only deployments labelled with their ModelDeployment.
            self.kube.delete("Deployment", dep["metadata"]["name"], namespace)
        for kind, child_name in TENANT_CHILDREN:
            self.kube.delete(kind, child_name, namespace)
        self._backstops.pop(namespace, None)
        self.kube.event({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace,
                                                                              "namespace": namespace}},
                        "Warning", "TenantReleased",
                        f"tenant {tenant} {why}: llmos Deployments removed, GPUs limited to 0 and ingress denied "
                        f"in namespace {namespace} (the platform may give it to another tenant with the "
                        f"{policy.ANNOTATION_ADOPT} annotation)")
        log.info("released namespace %s of tenant %s (%s)", namespace, tenant, why)

    # ---------------------------------------------------------------------------------------------------------------
    # Model

    def _tenant_of(self, namespace: str) -> Tenant | None:
        """The tenant owning ``namespace`` (a namespace belongs to a tenant only once llmos labelled it for that
        tenant, i.e. after the namespace checks passed)."""
        ownership = self._ownership()
        owner = ownership.owners.get(namespace)
        return ownership.by_name.get(owner) if owner is not None else None

    def _trusted_keys(self, tenant: Tenant | None) -> dict[str, bytes]:
        """The cluster's keys and the tenant's. Keys in Secrets are read only from the operator's own namespace: a
        tenant must not make the operator read another namespace's Secret."""
        keys = {name: pem.encode() for name, pem in self.config.trusted_keys.items()}
        if tenant is None:
            return keys
        refused = policy.refused_keys(tenant, self.config)
        for key in tenant.spec.trusted_keys:
            if key.public_key:
                keys[key.name] = key.public_key.encode()
            elif key.secret_ref and key.name not in refused:
                ref = key.secret_ref
                namespace = self.config.operator_namespace
                secret = self._read_watched("Secret", "KeySecret", ref.name, namespace)
                value = None
                if secret is not None and ref.key in secret[0]:
                    import base64

                    value = base64.b64decode(secret[0][ref.key])
                if value is not None:
                    keys[key.name] = value
                else:
                    log.warning("trusted key %s of tenant %s: Secret %s/%s has no key %s",
                                key.name, tenant.metadata.name, namespace, ref.name, ref.key)
        return keys

    def _read_bundle(self, namespace: str, sig: SignatureSpec, field: str = "spec.signature") -> bytes | str:
        """The bundle bytes from a ConfigMap of the object's own namespace, or a sentence saying why there are none.
        The operator never reads a path or URL a tenant named."""
        if sig.bundle_ref is not None:
            ref = sig.bundle_ref
            cm = self._read_watched("ConfigMap", "BundleConfigMap", ref.name, namespace)
            if cm is None:
                return f"ConfigMap {ref.name} ({field}.bundleRef) does not exist"
            data, binary = cm
            if ref.key in binary:
                import base64

                return base64.b64decode(binary[ref.key])
            if ref.key in data:
                return data[ref.key].encode()
            return f"ConfigMap {ref.name} has no key {ref.key!r} ({field}.bundleRef.key)"
        if sig.uri:
            return (f"{field}.uri {sig.uri} is not read by the operator: put the bundle in a ConfigMap of this "
                    f"namespace and name it in {field}.bundleRef")
        return f"no signature given: set {field}.bundleRef (or policy: Disabled)"

    def verify(self, model: Model) -> Verification:
        from llmos_signing import VerificationError, verify_bundle

        tenant = self._tenant_of(model.metadata.namespace or "")
        refusal = policy.model_refusal(model, tenant)
        if refusal is not None:
            return Verification(False, *refusal)
        keys = self._trusted_keys(tenant)
        if model.spec.signature.policy == "Disabled":
            return Verification(False, "SignatureDisabled",
                                "spec.signature.policy is Disabled: the weights are served without verification "
                                "(the tenant's policy allows unsigned models)", keys=keys)
        bundle = self._read_bundle(model.metadata.namespace or "", model.spec.signature)
        if isinstance(bundle, str):
            return Verification(False, "BundleUnavailable", bundle, keys=keys)
        if not keys:
            return Verification(False, "NoTrustedKeys", "the tenant trusts no key (spec.trustedKeys of its Tenant) "
                                "and the operator configuration names none", bundle=bundle)
        # Same bundle, same keys: same answer (a resync re-checks every Model; this keeps it cheap).
        memo_key = hashlib.sha256(json.dumps([bundle.hex(), sorted((k, v.hex()) for k, v in keys.items())])
                                  .encode()).hexdigest()
        signed = self._verify_memo.get(memo_key)
        if signed is None:
            try:
                signed = verify_bundle(bundle, keys)
            except VerificationError as exc:
                signed = exc
            if len(self._verify_memo) > 4096:
                self._verify_memo.clear()
            self._verify_memo[memo_key] = signed
        if isinstance(signed, VerificationError):
            return Verification(False, signed.reason, str(signed), bundle=bundle, keys=keys)
        return Verification(
            True, "Verified", f"signed by {signed.signer} ({signed.file_count} files)",
            digest=f"sha256:{signed.root_digest}", signer=signed.signer, key_hint=signed.key_hint,
            file_count=signed.file_count, bundle=bundle, signer_pem=keys[signed.signer], keys=keys,
        )

    def reconcile_model(self, namespace: str, name: str) -> None:
        raw = self.store["Model"].get(name, namespace)
        if raw is None:
            self._wake_deployments_of(namespace, name)
            return
        try:
            model = self._parse(Model, raw)
        except InvalidObject as exc:
            log.warning("invalid Model %s/%s: %s", namespace, name, exc)
            return
        if VERIFY_DELAY_SECONDS:
            time.sleep(VERIFY_DELAY_SECONDS)
        outcome = self.verify(model)
        self._verified[(namespace, name)] = (model.metadata.uid, model.metadata.generation, outcome)
        revision = model.spec.source.revision
        old = model.status
        if outcome.servable:
            status = model_status(model, verified=outcome.verified, reason=outcome.reason, message=outcome.message,
                                  digest=outcome.digest, signer=outcome.signer, serving_revision=revision)
            status.update({"keyHint": outcome.key_hint, "fileCount": outcome.file_count})
        elif self._previous_revision_serves(model, outcome):
            # A new revision that does not verify never reaches a pod: the one before keeps serving.
            message = (f"revision {revision or '(unpinned)'} (generation {model.metadata.generation}) rejected: "
                       f"{outcome.reason}: {outcome.message}; {old.digest} (revision "
                       f"{old.serving_revision or '(unpinned)'}, signed by {old.signer}) keeps serving")
            status = model_status(model, verified=False, reason="RevisionRejected", message=message,
                                  digest=old.digest, signer=old.signer, serving_revision=old.serving_revision,
                                  pending_revision=revision)
            status.update({"keyHint": old.key_hint, "fileCount": old.file_count})
        else:
            status = model_status(model, verified=False, reason=outcome.reason, message=outcome.message,
                                  pending_revision=revision)
            status.update({"keyHint": None, "fileCount": None})
        old_dict = old.to_dict()
        if _status_changed(old_dict, status):
            self.kube.patch_status("Model", name, namespace, status)
            for t in transitions(old_dict.get("conditions", []), status["conditions"]):
                warn = t.status != "True" or outcome.reason == "SignatureDisabled"
                self.kube.event(raw, "Warning" if warn else "Normal", t.reason, t.message)
            self._admit_again(namespace=namespace)
            self._wake_deployments_of(namespace, name)

    def _previous_revision_serves(self, model: Model, outcome: Verification) -> bool:
        """The newest spec failed verification. Its previous revision keeps serving if it was verified (signed), the
        failure is of a newer spec (not the served one losing its signature), and its signer is still trusted."""
        from llmos_signing import key_hint, load_public_key

        old = model.status
        cond = next((c for c in old.conditions if c.type == "Verified"), None)
        if not old.digest or not old.key_hint or cond is None:
            return False
        newer_spec = old.observed_generation != model.metadata.generation
        if not (cond.reason == "RevisionRejected" or (cond.status == "True" and newer_spec)):
            return False
        keys = outcome.keys if outcome.keys is not None else self._trusted_keys(
            self._tenant_of(model.metadata.namespace or ""))
        for pem in keys.values():
            try:
                if key_hint(load_public_key(pem)) == old.key_hint:
                    return True
            except Exception:  # noqa: BLE001 — an unreadable key trusts nothing
                continue
        return False

    def _wake_deployments_of(self, namespace: str, model_name: str) -> None:
        for mdep in self.store["ModelDeployment"].list(namespace):
            if (mdep.get("spec") or {}).get("model") == model_name:
                self.queue.add(("ModelDeployment", namespace, mdep["metadata"]["name"]))

    # ---------------------------------------------------------------------------------------------------------------
    # ModelDeployment

    def reconcile_model_deployment(self, namespace: str, name: str) -> None:
        raw = self.store["ModelDeployment"].get(name, namespace)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            self._surge_asks.pop(ledger_key(namespace, name), None)
            self._waiting_since.pop(ledger_key(namespace, name), None)
            self._child_applied.pop((namespace, name), None)
            return  # children go with it (owner references); the admission pass frees its GPUs
        try:
            mdep = self._parse(ModelDeployment, raw)
        except InvalidObject as exc:
            log.warning("invalid ModelDeployment %s/%s: %s", namespace, name, exc)
            return
        key = ledger_key(namespace, name)
        decision = self._decisions.get(key)
        if decision is not None and self._decision_uids.get(key) != mdep.metadata.uid:
            decision = None  # a deployment of the same name that was deleted and created again
        if decision is None or decision.generation != mdep.metadata.generation:
            # Nothing is rendered, and no status claims this generation, before admission has decided it.
            self._admit_again(namespace=namespace)
            self._admission_pending(mdep)
            return
        self._waiting_since.pop(key, None)
        model = self._get_model(namespace, mdep.spec.model)
        gpu_class = self.config.gpu_class(mdep.spec.gpu.class_)
        render_error: RenderError | None = None
        write_failure: RenderError | None = None
        deployment = self.store["Deployment"].get(name, namespace)
        replica_sets = self.store["ReplicaSet"].list(namespace, _owned_by(name))
        pods = self._pods_of(namespace, name)
        plan = hold = None
        fit = scheduling = None
        termination_messages: list[str] = []
        adapter_reports: list[dict] = []

        if not decision.admitted:
            # Not admitted (or no longer: its model lost its signature): no pods run.
            if deployment is not None:
                self.kube.delete("Deployment", name, namespace)
            deployment = None
            self._ask_surge(key, 0)
        elif model is None or gpu_class is None:
            pass  # admission refuses it on its next pass (ModelNotVerified, UnknownGPUClass)
        elif not _model_servable(model):
            # The Model's newest revision is being verified, or was rejected: the Deployment is left as it is, on
            # the revision that was verified, and keeps its GPUs (admission froze its reservation).
            cond = next((c for c in model.status.conditions if c.type == "Verified"), None)
            if cond is not None and cond.reason == "RevisionRejected":
                hold = ("RevisionRejected", f"Model {model.metadata.name}: {cond.message}")
            else:
                hold = ("VerificationPending", f"Model {model.metadata.name}'s new revision is being verified")
        elif deployment is not None and not decision.complete and _pod_gpus(deployment) != mdep.spec.gpu.count:
            # A new pod shape (gpu.count) that quota does not cover yet: the old pods keep running as they are.
            hold = (decision.reason, f"the change to {mdep.spec.replicas} × {mdep.spec.gpu.count} GPUs waits: "
                                     f"{decision.message}")
        else:
            outcome = self._verification(model)
            if outcome.servable:
                try:
                    children = render_children(
                        mdep, model, gpu_class, self.config, replicas=decision.replicas,
                        bundle=outcome.bundle if outcome.verified else None,
                        signer_pem=outcome.signer_pem if outcome.verified else None,
                        adapter_bundles=self._adapter_bundles(mdep, model),
                        tenant_keys=outcome.keys,
                    )
                except RenderError as exc:
                    render_error = exc
                else:
                    desired = next(c for c in children if c["kind"] == "Deployment")
                    facts = RolloutFacts(
                        deployment=deployment, pods=pods,
                        replica_sets=replica_sets,
                        serving_template=mdep.status.serving_template,
                        serving_checksum=mdep.status.serving_template_checksum,
                        failed_template=mdep.status.failed_template,
                        surge_granted=decision.surge, surge_asked=decision.surge_wanted,
                        surge_message=decision.surge_message,
                    )
                    plan = plan_rollout(mdep, desired, facts)
                    if plan.phase == ROLLED_BACK:
                        # The store keeps ReplicaSets without their pod spec: plan again with the one rolled back
                        # to read whole.
                        facts = replace(facts, replica_sets=self._whole_replica_set(replica_sets,
                                                                                    plan.serving_template))
                        plan = plan_rollout(mdep, desired, facts)
                    for child in children:
                        if child["kind"] == "Deployment":
                            if plan.deployment is None:
                                continue  # left as it is: the rollout waits (surge quota, a failed revision)
                            child = plan.deployment
                        try:
                            applied = self._apply_child(with_owner(child, raw))
                        except ApiException as exc:
                            if exc.status == 409:
                                raise
                            # The API server refused a child (quota, admission policy, "range is full"): say so in
                            # status, with its words and when llmos tries again, then back off.
                            write_failure = self._child_write_failure(child, exc, ("ModelDeployment", namespace, name))
                            render_error = write_failure
                            break
                        if child["kind"] == "Deployment":
                            self._rollout_events(raw, mdep, deployment, applied, plan)
                            deployment = applied
                    if write_failure is None:
                        self._ask_surge(key, plan.surge_wanted)
                        self._collect_trust_configmaps(namespace, name, children, [deployment, *replica_sets, *pods])
                        if (not any(c["kind"] == "PodDisruptionBudget" for c in children)
                                and self.store["PodDisruptionBudget"].get(name, namespace) is not None):
                            self.kube.delete("PodDisruptionBudget", name, namespace)  # scaled down to one replica
        if deployment is not None and decision.admitted and gpu_class is not None:
            fit = self._can_ever_fit(mdep, gpu_class)
            scheduling, termination_messages, adapter_reports = self._pod_facts(namespace, name)

        revision, target = self._revisions(mdep, model, [deployment, *replica_sets], plan)
        tenant = self._stored(Tenant, "Tenant", decision.tenant) if decision.tenant else None
        status = desired_status(
            mdep, self.config, decision=decision, model=model, deployment=deployment, fit=fit,
            scheduling=scheduling, termination_messages=termination_messages, render_error=render_error,
            plan=plan, hold=hold, revision=revision, target_revision=target,
            quota_limit=tenant.spec.quota.gpus.get(mdep.spec.gpu.class_, 0) if tenant is not None else None,
        )
        status["adapters"] = adapter_status(mdep.spec.adapters, adapter_reports) if deployment is not None else []
        status["remoteCode"] = True if deployment is not None and policy.remote_code(mdep) else None
        old = mdep.status.to_dict()
        if _status_changed(old, status):
            self.kube.patch_status("ModelDeployment", name, namespace, status)
            for t in transitions(old.get("conditions", []), status["conditions"]):
                if not _worth_an_event(t):
                    continue
                good = (t.status == "True") != (t.type == "Degraded")
                self.kube.event(raw, "Normal" if good else "Warning", t.reason, t.message)
        if write_failure is not None:
            raise ChildWriteFailed(str(write_failure))  # the queue backs off, as the status says
        if deployment is not None and not _ready(status):
            # Children report through watch events; this is a slow safety net for facts nobody watches (nodes).
            self.queue.add(("ModelDeployment", namespace, name), delay=15)

    def _admission_pending(self, mdep: ModelDeployment) -> None:
        """Say that a new generation waits for admission, without claiming it: only the Reconciling condition
        carries the new generation (kubectl wait and kstatus keep waiting on the others). Said only once it has
        waited ``ADMISSION_PENDING_GRACE_SECONDS``: it costs a status write, and admission nearly always decides
        sooner (a 1,000-deployment burst made 1,000 of these writes, each followed within a second by the
        decision's)."""
        gen = mdep.metadata.generation
        key = mdep.key
        waiting = (mdep.metadata.uid, gen)
        first = self._waiting_since.get(key)
        if first is None or first[0] != waiting:
            first = self._waiting_since[key] = (waiting, time.monotonic())
        left = ADMISSION_PENDING_GRACE_SECONDS - (time.monotonic() - first[1])
        if left > 0:  # look again when the grace is over (one delayed re-queue per key: the earliest stands)
            self.queue.add(("ModelDeployment", mdep.metadata.namespace, mdep.metadata.name), delay=left)
            return
        old = mdep.status.to_dict()
        pending = condition(RECONCILING, True, "AdmissionPending", f"generation {gen} waits for admission", gen)
        previous = next((c for c in old.get("conditions", []) if c["type"] == RECONCILING), None)
        if previous is not None and all(previous.get(k) == pending[k] for k in ("status", "reason",
                                                                                  "observedGeneration")):
            return
        conditions = merge_conditions(old.get("conditions", []), [pending], now_rfc3339())
        self.kube.patch_status("ModelDeployment", mdep.metadata.name, mdep.metadata.namespace,
                               {"conditions": conditions})

    def _ask_surge(self, key: str, gpus: int | None) -> None:
        """What the rollout wants reserved for its surge; a change runs an admission pass (which reserves or frees
        it in the ledger before the Deployment may use it)."""
        if gpus is None or self._surge_asks.get(key) == gpus:
            return
        self._surge_asks[key] = gpus
        self._admit_again(namespace=key.split("/", 1)[0])

    def _rollout_events(self, raw: dict, mdep: ModelDeployment, before: dict | None, after: dict,
                        plan: Any) -> None:
        """An Event per rollout phase: started (with the surge reserved), completed, rolled back, stopped."""
        old_hash, new_hash = template_hash(before), template_hash(after)
        if plan.phase == ROLLED_BACK and old_hash != new_hash:
            self.kube.event(raw, "Warning", "RolledBack", plan.message)
        elif plan.phase == ROLLOUT_STOPPED and not ((before or {}).get("spec") or {}).get("paused"):
            self.kube.event(raw, "Warning", "RolloutStopped", plan.message)
        elif before is not None and old_hash != new_hash and plan.phase == ROLLING_OUT:
            self.kube.event(raw, "Normal", "RolloutStarted", plan.message)
        elif plan.phase == COMPLETE and plan.serving_template != mdep.status.serving_template \
                and mdep.status.serving_template is not None:
            self.kube.event(raw, "Normal", "RolloutCompleted",
                            f"all replicas serve template {plan.serving_template}")

    @staticmethod
    def _revisions(mdep: ModelDeployment, model: Model | None, workloads: list[dict | None],
                   plan: Any) -> tuple[str | None, str | None]:
        """(what serves, what rolls): the Model digest of a template (its hash when the Model is unsigned), looked
        up in the Deployment and its ReplicaSets (``workloads``)."""
        def of(template: str | None) -> str | None:
            if template is None:
                return None
            for obj in workloads:
                if obj is not None and template_hash(obj) == template:
                    return template_digest(obj) or f"template:{template}"
            return f"template:{template}"
        if plan is None:
            return mdep.status.revision, mdep.status.target_revision
        target = (model.status.digest if model is not None and model.status.digest
                  and model.spec.signature.policy != "Disabled" else f"template:{plan.target_template}")
        if plan.failed and plan.phase != "RolloutStopped":
            target = of(plan.failed_template) if plan.failed_template else target
        return of(plan.serving_template), target

    def _collect_trust_configmaps(self, namespace: str, name: str, children: list[dict],
                                  users: list[dict | None]) -> None:
        """Delete this deployment's trust ConfigMaps that nothing uses: not the one just rendered, not one named by
        ``users`` (the Deployment, its ReplicaSets — a rollback may need one — and its pods)."""
        used = {c["metadata"]["name"] for c in children if c["kind"] == "ConfigMap"}
        for obj in users:
            spec = (obj or {}).get("spec") or {}
            pod_spec = (spec.get("template") or {}).get("spec") or spec
            for volume in pod_spec.get("volumes") or []:
                if volume.get("configMap"):
                    used.add(volume["configMap"].get("name"))
        prefix = trust_configmap_name(name, "")
        for cm in self.store["ConfigMap"].list(namespace, _owned_by(name)):
            cm_name = cm["metadata"]["name"]
            if cm_name.startswith(prefix) and cm_name not in used:
                self.kube.delete("ConfigMap", cm_name, namespace)

    def _apply_child(self, child: dict) -> dict:
        """Server-side apply a ModelDeployment's child, unless the same rendering was applied already and the stored
        child has not been changed since (its generation, or resourceVersion for kinds without one; a hand edit of
        the spec is put back at once) and was last applied within ``REAPPLY_SECONDS``: a reconcile woken by a pod or
        a status change then writes nothing."""
        meta = child["metadata"]
        key = (child["kind"], meta["name"])
        applied_of = self._child_applied.setdefault((meta["namespace"], meta["labels"][LABEL_MODEL_DEPLOYMENT]), {})
        digest = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()
        informer = self.store.informers.get(child["kind"])
        stored = informer.get(meta["name"], meta.get("namespace")) if informer is not None else None
        last = applied_of.get(key)
        if (stored is not None and last is not None and last[0] == digest and last[1] == _spec_version(stored)
                and time.monotonic() - last[2] < REAPPLY_SECONDS):
            return stored
        applied = self.kube.apply(child)
        applied_of[key] = (digest, _spec_version(applied), time.monotonic())
        return applied

    def _whole_replica_set(self, replica_sets: list[dict], template: str | None) -> list[dict]:
        """``replica_sets`` with the one of ``template`` read live, whole (or left out if it is gone)."""
        out = []
        for rs in replica_sets:
            if rs.get(SUMMARY) and template_hash(rs) == template:
                rs = self.kube.get("ReplicaSet", rs["metadata"]["name"], rs["metadata"].get("namespace"))
                if rs is None:
                    continue
            out.append(rs)
        return out

    def _pods_of(self, namespace: str, name: str) -> list[dict]:
        return self.store["Pod"].list(namespace, _owned_by(name))

    def _child_write_failure(self, child: dict, exc: ApiException, key: Hashable) -> RenderError:
        try:
            detail = json.loads(exc.body or "{}").get("message") or exc.reason
        except ValueError:
            detail = exc.reason
        retry_in = self.queue.next_backoff(key)
        return RenderError("ChildWriteFailed",
                           f"the API server refused {child['kind']} {child['metadata']['name']} (HTTP {exc.status}): "
                           f"{detail}; llmos tries again in {retry_in:.0f} s (failures so far: "
                           f"{self.queue.failures(key)})")

    def _adapter_bundles(self, mdep: ModelDeployment, model: Model) -> dict[str, bytes]:
        """Signature bundles of the adapters this deployment serves (the runtime verifies each before loading)."""
        out = {}
        declared = {a.name: (i, a) for i, a in enumerate(model.spec.adapters)}
        for name in mdep.spec.adapters:
            index, adapter = declared.get(name, (0, None))
            sig = adapter.signature if adapter is not None else None
            if sig is None or sig.policy == "Disabled":
                continue
            bundle = self._read_bundle(mdep.metadata.namespace or "", sig, f"spec.adapters[{index}].signature")
            if isinstance(bundle, bytes):
                out[name] = bundle
        return out

    def _verification(self, model: Model) -> Verification:
        """The Model's last verification if it is of this generation (reconcile_model renews it whenever keys or
        bundle change), else a fresh one: deployments do not re-read bundles and keys on every event."""
        uid, generation, outcome = self._verified.get((model.metadata.namespace or "", model.metadata.name),
                                                      (None, None, None))
        if outcome is None or uid != model.metadata.uid or generation != model.metadata.generation:
            outcome = self.verify(model)
            self._verified[(model.metadata.namespace or "", model.metadata.name)] = (
                model.metadata.uid, model.metadata.generation, outcome)
        return outcome

    def _can_ever_fit(self, mdep: ModelDeployment, gpu_class: Any) -> Any:
        """Placement's verdict over the stored node summaries, computed once per node-set version and pod shape."""
        requests = pod_requests(mdep, gpu_class, self.config)
        nodes = self.store["Node"]
        key = (nodes.version, gpu_class.name, mdep.spec.gpu.count, tuple(sorted(requests.items())))
        fit = self._fit_memo.get(key)
        if fit is None:
            if len(self._fit_memo) > 256:
                self._fit_memo.clear()
            fit = self._fit_memo[key] = can_ever_fit(nodes.list(), gpu_class, mdep.spec.gpu.count, requests)
        return fit

    def _pod_facts(self, namespace: str, name: str) -> tuple[str | None, list[str], list[dict]]:
        """The scheduler's reasons for Pending pods, the runtime's termination messages, and the adapter reports
        the runtimes wrote on their pods."""
        pods = self._pods_of(namespace, name)
        unschedulable, messages, reports = [], [], []
        for pod in pods:
            meta, status = pod["metadata"], pod.get("status") or {}
            report = (meta.get("annotations") or {}).get(ANNOTATION_ADAPTERS)
            if report and not meta.get("deletionTimestamp"):
                try:
                    parsed = json.loads(report)
                    if isinstance(parsed, dict):
                        reports.append(parsed)
                except ValueError:
                    log.warning("pod %s/%s: unreadable %s annotation", namespace, meta["name"], ANNOTATION_ADAPTERS)
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("message"):
                    unschedulable.append(cond["message"])
            for cs in status.get("containerStatuses") or []:
                if cs.get("name") != RUNTIME_CONTAINER:
                    continue
                for state in (cs.get("state"), cs.get("lastState")):
                    term = (state or {}).get("terminated")
                    if term and term.get("exitCode") not in (0, None) and term.get("message"):
                        messages.append(f"pod {meta['name']}: {term['message'].strip()}")
        return summarize_scheduling_failures(unschedulable), messages, reports


def adapter_status(wanted: list[str], reports: list[dict]) -> list[dict]:
    """Per wanted adapter: on how many pods it is loaded, on how many it failed and why (from the runtimes'
    reports, one per pod: {"loaded": [names], "failed": {name: reason}})."""
    out = []
    for name in wanted:
        loaded = sum(1 for r in reports if name in (r.get("loaded") or []))
        reasons = [str((r.get("failed") or {})[name]) for r in reports if name in (r.get("failed") or {})]
        entry = {"name": name, "loadedReplicas": loaded, "failedReplicas": len(reasons)}
        if reasons:
            entry["message"] = reasons[0][:1024]
        out.append(entry)
    return out


def _worth_an_event(t: Any) -> bool:
    """Events for what a person acts on, not for every condition a new deployment passes through (they were 7 of the
    15 API requests a new ModelDeployment cost): admission and verification verdicts (not a new deployment's
    "Model verified", which the Model's Event says), becoming Ready, losing readiness, turning Degraded and recovering.
    Progressing and kstatus's Reconciling/Stalled repeat Ready; the rollout phases have their own Events."""
    if t.type in (PROGRESSING, RECONCILING, STALLED):
        return False
    if t.type == MODEL_VERIFIED and t.status == "True" and t.old_status is None:
        return False  # a new deployment of a verified Model: the Model's own Event says so
    if t.type == DEGRADED:
        return t.status == "True" or t.old_status == "True"
    if t.type == READY:
        return t.status == "True" or t.old_status == "True"
    return True


def _holds_gpus(pod: dict) -> bool:
    """A pod that has not finished holds its GPUs, terminating or not."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _gpus_requested(pod: dict, resources: set[str]) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        for name in resources:
            value = (res.get("requests") or {}).get(name, (res.get("limits") or {}).get(name, 0))
            try:
                total += int(value)
            except (TypeError, ValueError):
                pass
    return total


def _owned_by(name: str) -> Any:
    """A store filter: children (and pods) of the ModelDeployment ``name``."""
    return lambda obj: (obj["metadata"].get("labels") or {}).get(LABEL_MODEL_DEPLOYMENT) == name


def _spec_version(obj: dict) -> Any:
    """What changes when someone changes an object's spec: its generation, where the kind has one (Deployment, PDB:
    status writes do not bump it), else its resourceVersion."""
    meta = obj.get("metadata") or {}
    return ("generation", meta["generation"]) if meta.get("generation") else ("rv", meta.get("resourceVersion"))


def _pod_gpus(deployment: dict) -> int | None:
    """GPUs per pod of a stored Deployment (the limit of its runtime container)."""
    for c in deployment["spec"]["template"]["spec"].get("containers") or []:
        if c.get("name") == RUNTIME_CONTAINER:
            for value in ((c.get("resources") or {}).get("limits") or {}).values():
                try:
                    return int(value)
                except (TypeError, ValueError):
                    continue
    return None


def _fairness_group(key: Hashable) -> Hashable:
    """Work is served round-robin across namespaces, so one tenant's burst of events cannot delay another's."""
    if isinstance(key, tuple) and len(key) == 3:
        return key[1]
    return ""


def _refused(mdep: ModelDeployment, tenant: str | None, reason: str, message: str) -> Decision:
    """The decision for a deployment the platform's policy does not allow (image, engine flags)."""
    return Decision(
        key=mdep.key, tenant=tenant, admitted=False, reason=reason, message=message,
        gpu_class=mdep.spec.gpu.class_, requested=mdep.gpus_demanded, reserved=0, replicas=0,
        generation=mdep.metadata.generation,
    )


def _tenant_ref(tenant: Tenant) -> dict:
    """Enough of a Tenant to be an owner of its children."""
    return {"apiVersion": tenant.api_version, "kind": "Tenant",
            "metadata": {"name": tenant.metadata.name, "uid": tenant.metadata.uid}}


def _not_servable(mdep: ModelDeployment, model: Model | None, tenant: str | None) -> Decision:
    """The decision for a deployment whose Model may not be served (missing, unverified, not yet checked)."""
    if model is None:
        message = f"Model {mdep.spec.model} does not exist in this namespace; no GPUs are reserved"
    else:
        cond = next((c for c in model.status.conditions if c.type == "Verified"), None)
        why = f"{cond.reason}: {cond.message}" if cond else "not verified yet"
        message = f"Model {mdep.spec.model} is not verified ({why}); no GPUs are reserved"
    return Decision(
        key=mdep.key, tenant=tenant, admitted=False, reason="ModelNotVerified", message=message,
        gpu_class=mdep.spec.gpu.class_, requested=mdep.gpus_demanded, reserved=0, replicas=0,
        generation=mdep.metadata.generation,
    )


def _model_servable(model: Model) -> bool:
    """Verified for its current generation, or verification deliberately disabled."""
    if model.status.observed_generation != model.metadata.generation:
        return False
    cond = next((c for c in model.status.conditions if c.type == "Verified"), None)
    if cond is None:
        return False
    return cond.status == "True" or (
        cond.reason == "SignatureDisabled" and model.spec.signature.policy == "Disabled")


def _model_serving(model: Model) -> bool:
    """Does a verified revision of the Model serve (perhaps an older one than its spec names)? True while its
    newest revision is being verified or was rejected (RevisionRejected), if the one before was verified and its
    signer is still trusted; False once the served revision itself lost its signature (a key revoked)."""
    cond = next((c for c in model.status.conditions if c.type == "Verified"), None)
    if cond is None:
        return False
    if cond.reason == "RevisionRejected":
        return bool(model.status.digest)
    return cond.status == "True" or cond.reason == "SignatureDisabled"


def _ready(status: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def _status_changed(old: dict, new: dict) -> bool:
    """Would merge-patching `new` into `old` change anything?"""
    for key, value in new.items():
        if value is None:
            if old.get(key) is not None:
                return True
        elif isinstance(value, dict) and isinstance(old.get(key), dict) and key != "conditions":
            if _status_changed(old[key], value):
                return True
        elif old.get(key) != value:
            return True
    return False
