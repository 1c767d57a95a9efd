"""The operator process: kopf runs it, the measured runtime beneath does the watching and the work.

kopf's job (``run``): the process lifecycle (start-up, signals, graceful cleanup), logging, its settings, and the
liveness endpoint, whose ``on.probe`` handlers here report whether the informers are synced and turning and the
workers alive and not stuck (a failed probe answers 500, and the kubelet restarts the process). kopf's own watches
are not used: it shares one unfiltered watch per resource (label filters run in the operator, after every Pod and
ConfigMap of the cluster has been sent) and its listing has no "complete" signal; the informers of ``kube/`` select
on the API server and say when they are synced (docs/architecture.md).

Start-up order: informers list everything, then the workers start (nothing is decided on a half-known world), then
the autoscaler (controller/autoscaler.py), which needs no ordering: what it decided before is in the status.
Decisions are published by admission passes; a deployment that finds none waits for one (its key comes back), so no
pass has to run before the workers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Hashable

import kopf
from kubernetes.client import ApiException

from .. import metrics
from ..config import OperatorConfig
from ..kube.client import Gone, Kube
from ..kube.events import EventRecorder
from ..kube.health import Health
from ..kube.informer import Store
from ..kube.workqueue import WorkQueue, run_workers
from .admission import Admission, Conflict
from .api_keys import KIND as API_KEYS
from .api_keys import ApiKeysReconciler
from .autoscaler import Autoscaler
from .cache import Cache, build_store
from .children import ChildWriter
from .gpu_pods import GPUPodReconciler
from .model import ModelReconciler
from .model_deployment import ChildWriteFailed, ModelDeploymentReconciler
from .state import ADMISSION, Context, fairness_group
from .tenant import TenantReconciler
from .triggers import Triggers
from .usage import UsageMeter

log = logging.getLogger("llmos.operator")
STORE_SYNC_TIMEOUT = float(os.environ.get("LLMOS_STORE_SYNC_TIMEOUT", "300"))
WORKERS = int(os.environ.get("LLMOS_WORKERS", "4"))
# A safety net for a missed watch event: every Tenant and Model and an admission pass are queued once this often,
# spread over the period. Watches drive everything else (bundle ConfigMaps and key Secrets included).
RESYNC_SECONDS = float(os.environ.get("LLMOS_RESYNC_SECONDS", "600"))
# One key holding a worker longer than this makes the liveness probe fail (a reconcile takes milliseconds to seconds).
STUCK_SECONDS = float(os.environ.get("LLMOS_STUCK_SECONDS", "300"))


class Manager:
    """Wires the store, the shared state and the reconcilers, and routes each queued key to its reconciler."""

    def __init__(self, kube: Kube, config: OperatorConfig, store: Store | None = None):
        queue = WorkQueue(group_of=fairness_group)
        self.ctx = Context(kube=kube, events=EventRecorder(kube), config=config, queue=queue,
                           cache=Cache(Store({}), kube))
        self.triggers = Triggers(self.ctx)
        self.store = store if store is not None else build_store(kube, config, {
            "Tenant": self.triggers.tenant, "Model": self.triggers.model,
            "ModelDeployment": self.triggers.model_deployment, "Namespace": self.triggers.namespace,
            "Pod": self.triggers.pod, "Deployment": self.triggers.child, "ReplicaSet": self.triggers.replica_set,
            "Service": self.triggers.child, "ConfigMap": self.triggers.child,
            "PodDisruptionBudget": self.triggers.child, "HTTPRoute": self.triggers.child,
            "BundleConfigMap": self.triggers.bundle_configmap,
            "KeySecret": self.triggers.key_secret, "ApiKeySecret": self.triggers.api_key_secret,
            "HorizontalPodAutoscaler": self.triggers.autoscaler,
        })
        self.ctx.cache.store = self.store
        self.gpu_pods = GPUPodReconciler(self.ctx)
        self.usage = UsageMeter(self.ctx)
        self.admission = Admission(self.ctx, self.gpu_pods, self.usage)
        self.tenants = TenantReconciler(self.ctx, self.triggers)
        self.models = ModelReconciler(self.ctx, self.triggers)
        self.model_deployments = ModelDeploymentReconciler(self.ctx, self.models, ChildWriter(self.ctx))
        self.api_keys = ApiKeysReconciler(self.ctx)
        self.autoscaler = Autoscaler(self.ctx)
        self.workers: list[threading.Thread] = []
        self.health = Health(self.store, queue, self.workers, stuck_after=STUCK_SECONDS,
                             sync_within=STORE_SYNC_TIMEOUT)

    @property
    def queue(self) -> WorkQueue:
        return self.ctx.queue

    def handle(self, key: Hashable) -> None:
        kind = key[0]  # type: ignore[index]
        start = time.monotonic()
        result = "error"
        try:
            if key == ADMISSION:
                self.admission.reconcile()
            elif kind == "Tenant":
                self.tenants.reconcile(key[1])  # type: ignore[index]
            elif kind == "Model":
                self.models.reconcile(key[1], key[2])  # type: ignore[index]
            elif kind == "ModelDeployment":
                self.model_deployments.reconcile(key[1], key[2])  # type: ignore[index]
            elif kind == API_KEYS:
                self.api_keys.reconcile(key[1])  # type: ignore[index]
            elif kind == "GPUPods":
                self.gpu_pods.reconcile(key[1])  # type: ignore[index]
            result = "ok"
        finally:
            metrics.RECONCILES.labels(kind, result).inc()
            metrics.RECONCILE_SECONDS.labels(kind).observe(time.monotonic() - start)

    def on_error(self, key: Hashable, exc: BaseException, retry_in: float | None) -> None:
        if isinstance(exc, (Conflict, ChildWriteFailed, Gone)):
            log.info("%s: %s; retrying in %.1f s", key, exc, retry_in or 0)
        elif isinstance(exc, ApiException):
            log.warning("%s: API error %s %s: %s; retrying in %.1f s", key, exc.status, exc.reason,
                        api_message(exc), retry_in or 0)
        else:
            log.exception("%s failed; retrying in %.1f s", key, retry_in or 0, exc_info=exc)

    def start(self, workers: int = WORKERS, resync_seconds: float = RESYNC_SECONDS) -> None:
        """Informers first; workers once every kind is listed; then the resync."""
        self.store.start()
        if not self.store.wait_synced(timeout=STORE_SYNC_TIMEOUT):
            raise kopf.PermanentError(f"the watch-fed store did not sync within {STORE_SYNC_TIMEOUT} s")
        log.info("store synced: %s", self.store.stats())
        self.ctx.admit_again(everything=True)
        self.workers.extend(run_workers(self.queue, self.handle, workers, self.on_error))
        self.usage.start()
        threading.Thread(target=self._resync, args=(resync_seconds,), name="llmos-resync", daemon=True).start()
        self.autoscaler.start()

    def stop(self) -> None:
        self.usage.stop()
        self.autoscaler.stop()
        self.queue.close()
        self.store.stop()

    def _resync(self, interval: float) -> None:
        """A safety net for a missed event: every Tenant and Model and an admission pass, once per ``interval``,
        spread over it (not all keys at once). Keys come from the store; a reconcile whose inputs did not change
        reads nothing live and writes nothing."""
        while not self.queue.closed:
            time.sleep(interval)
            try:
                keys: list[Hashable] = [("Tenant", t["metadata"]["name"]) for t in self.store["Tenant"].list()]
                keys += [("Model", m["metadata"].get("namespace"), m["metadata"]["name"])
                         for m in self.store["Model"].list()]
                keys.append(ADMISSION)
                self.ctx.scope.mark(everything=True)
                for i, key in enumerate(keys):
                    self.queue.add(key, delay=interval * i / len(keys) + 0.01)
            except Exception:  # noqa: BLE001 — the next round tries again
                log.warning("resync failed", exc_info=True)


# ---------------------------------------------------------------------------------------------------------------------
# kopf: lifecycle and probes

_manager: Manager | None = None


def _m() -> Manager:
    assert _manager is not None, "the manager is made before kopf starts"
    return _manager


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: object) -> None:
    settings.posting.level = logging.WARNING  # kopf's own log lines become Events only when they matter
    _m().start()


@kopf.on.cleanup()
def _cleanup(**_: object) -> None:
    _m().stop()


@kopf.on.probe(id="informers")
def _informers(**_: object) -> str:
    problems = _m().health.informer_problems()
    if problems:
        raise kopf.PermanentError("; ".join(problems))  # kopf answers the probe with 500
    return f"{len(_m().store.informers)} synced"


@kopf.on.probe(id="workers")
def _workers(**_: object) -> str:
    problems = _m().health.worker_problems()
    if problems:
        raise kopf.PermanentError("; ".join(problems))
    return f"{len(_m().workers)} alive, {len(_m().queue)} keys queued"


def run(*, config_path: str | None, liveness: str | None, metrics_port: int,
        standalone: bool, lease_name: str | None = None, lease_namespace: str | None = None) -> int:
    """`llmos operator run`: the operator in this process, until interrupted. Unless ``standalone``, the process
    first waits until it holds the leader Lease (kube/leader.py): of several replicas, only one runs kopf."""
    from kubernetes import client
    from kubernetes import config as k8s_config
    from prometheus_client import start_http_server

    from ..config import load_config
    from .cache import LLMOS_KINDS

    global _manager
    logging.basicConfig(level=os.environ.get("LLMOS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled event is noise
    config = load_config(config_path)
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    api_config = client.Configuration.get_default_copy()
    # One long-lived watch per informer plus the workers' requests share this client's connection pool.
    api_config.connection_pool_maxsize = 32
    api = client.ApiClient(api_config)
    api.user_agent = "llmos-operator"  # so the API server's request metrics can tell the operator apart
    kube = Kube(api, kinds=LLMOS_KINDS)
    _manager = Manager(kube, config)
    _manager.usage.register()
    if metrics_port:
        start_http_server(metrics_port)
    if not standalone:
        from ..kube.leader import DEFAULT_LEASE_NAME, wait_until_leader

        wait_until_leader(kube, namespace=lease_namespace, lease_name=lease_name or DEFAULT_LEASE_NAME,
                          liveness=liveness)
    kopf.run(
        clusterwide=True,  # Tenants own namespaces anywhere, including ones llmos creates: the store watches all
        liveness_endpoint=liveness,
        standalone=True,  # the Lease above elects the one active replica; kopf's own peering is not used
    )
    return 0


def api_message(exc: ApiException) -> str:
    """The API server's own words (which permission, which policy refused), short enough for one log line."""
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    try:
        message = str(json.loads(body).get("message", body))
    except (ValueError, AttributeError):
        message = body
    return message[:400]
