"""kopf runs the operator's lifecycle (startup, cleanup, liveness endpoint); the watches are the store's informers
(handlers/store.py), whose events only put keys on the controller's work queue. Decisions live in controller.py."""

from __future__ import annotations

import logging
import os
import threading

import kopf

from .controller import ADMISSION, Controller
from .workqueue import run_workers

log = logging.getLogger("llmos.operator")
STORE_SYNC_TIMEOUT = float(os.environ.get("LLMOS_STORE_SYNC_TIMEOUT", "300"))
WORKERS = int(os.environ.get("LLMOS_WORKERS", "4"))
# A safety net for a missed watch event: every Tenant and Model and an admission pass are queued once this often,
# spread over the period. Watches drive everything else (bundle ConfigMaps and key Secrets included).
RESYNC_SECONDS = float(os.environ.get("LLMOS_RESYNC_SECONDS", "600"))

_controller: Controller | None = None
_threads: list[threading.Thread] = []


def _c() -> Controller:
    assert _controller is not None, "the controller starts before any handler runs"
    return _controller


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_):
    settings.posting.level = logging.WARNING  # kopf's own log lines become Events only when they matter
    controller = _c()
    _threads.extend(controller.store.start())
    # Nothing is decided on a half-listed world: workers start once every kind has been listed.
    if not controller.store.wait_synced(timeout=STORE_SYNC_TIMEOUT):
        raise kopf.PermanentError(f"the watch-fed store did not sync within {STORE_SYNC_TIMEOUT} s")
    log.info("store synced: %s", controller.store.stats())
    # One admission pass before any worker runs: a ModelDeployment reconciled before the first pass finds no decision
    # and would report "waiting for admission" over its Ready status after every restart (and emit Events saying so).
    try:
        controller.handle(ADMISSION)
    except Exception as exc:  # noqa: BLE001 — a 409 or an API error: the work queue tries again, with back-off
        log.warning("the first admission pass failed (%s); the work queue tries again", exc)
        controller.queue.add(ADMISSION)
    _threads.extend(run_workers(controller.queue, controller.handle, WORKERS, controller.on_error))
    _threads.append(controller.start_resync(RESYNC_SECONDS))


@kopf.on.cleanup()
def _cleanup(**_):
    _c().queue.close()
    _c().store.stop()


def run(*, config_path: str | None, liveness: str | None, metrics_port: int,
        standalone: bool, lease_name: str | None = None, lease_namespace: str | None = None) -> int:
    """`llmos operator run`: the operator in this process, until interrupted. Unless ``standalone``, the process
    first waits until it holds the leader Lease (see leader.py): of several replicas, only one runs kopf."""
    from kubernetes import config as k8s_config
    from prometheus_client import start_http_server

    from ..config import load_config
    from .kube import Kube

    global _controller
    logging.basicConfig(level=os.environ.get("LLMOS_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled event is noise
    config = load_config(config_path)
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    from kubernetes import client

    api_config = client.Configuration.get_default_copy()
    # One long-lived watch per informer plus the workers' requests share this client's connection pool.
    api_config.connection_pool_maxsize = 32
    api = client.ApiClient(api_config)
    api.user_agent = "llmos-operator"  # so the API server's request metrics can tell the operator apart
    _controller = Controller(Kube(api), config)
    if metrics_port:
        start_http_server(metrics_port)
    if not standalone:
        from .leader import DEFAULT_LEASE_NAME, wait_until_leader

        wait_until_leader(namespace=lease_namespace, lease_name=lease_name or DEFAULT_LEASE_NAME, liveness=liveness)
    kopf.run(
        clusterwide=True,  # Tenants own namespaces anywhere, including ones llmos creates: the store watches all
        liveness_endpoint=liveness,
        standalone=True,  # the Lease above elects the one active replica; kopf's own peering is not used
    )
    return 0
