"""kopf wiring: every handler only puts a key on the controller's work queue. Decisions live in controller.py."""

from __future__ import annotations

import logging
import os
import threading

import kopf

from ..api.types import GROUP, VERSION
from .controller import ADMISSION, Controller
from .workqueue import run_workers

log = logging.getLogger("llmos.operator")
MANAGED = {"app.kubernetes.io/managed-by": "llmos"}
WORKERS = int(os.environ.get("LLMOS_WORKERS", "4"))
RESYNC_SECONDS = float(os.environ.get("LLMOS_RESYNC_SECONDS", "10"))

_controller: Controller | None = None
_threads: list[threading.Thread] = []


def _c() -> Controller:
    assert _controller is not None, "the controller starts before any handler runs"
    return _controller


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_):
    settings.posting.level = logging.WARNING  # kopf's own log lines become Events only when they matter
    settings.persistence.finalizer = "llmos.dev/operator"  # on Tenants only (their resync timer needs it)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    _threads.extend(run_workers(_c().queue, _c().handle, WORKERS, _c().on_error))


@kopf.on.cleanup()
def _cleanup(**_):
    _c().queue.close()


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def _model_deployment(type, body, **_):  # noqa: A002 — kopf's argument name
    _c().model_deployment_event(type, body)


@kopf.on.event(GROUP, VERSION, "models")
def _model(type, body, **_):  # noqa: A002
    _c().queue.add(("Model", body["metadata"]["namespace"], body["metadata"]["name"]))


@kopf.on.event(GROUP, VERSION, "tenants")
def _tenant(type, body, **_):  # noqa: A002
    _c().queue.add(("Tenant", body["metadata"]["name"]))


@kopf.timer(GROUP, VERSION, "tenants", interval=RESYNC_SECONDS)
def _resync(body, **_):
    # A slow safety net for what no watch reports (Secrets holding trusted keys, nodes). Pauses with kopf peering.
    _c().queue.add(("Tenant", body["metadata"]["name"]))
    _c().queue.add(ADMISSION)


for _group, _version, _plural in (
    ("apps", "v1", "deployments"),
    ("", "v1", "services"),
    ("", "v1", "configmaps"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("", "v1", "pods"),
):
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"child-{_plural}")(
        lambda body, **_: _c().child_event(body)
    )


def run(*, namespace: list[str] | None, config_path: str | None, liveness: str | None, metrics_port: int,
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

    _controller = Controller(Kube(client.ApiClient()), config)
    if metrics_port:
        start_http_server(metrics_port)
    if not standalone:
        from .leader import DEFAULT_LEASE_NAME, wait_until_leader

        wait_until_leader(namespace=lease_namespace, lease_name=lease_name or DEFAULT_LEASE_NAME, liveness=liveness)
    kopf.run(
        clusterwide=not namespace,
        namespaces=namespace or [],
        liveness_endpoint=liveness,
        standalone=True,  # the Lease above elects the one active replica; kopf's own peering is not used
    )
    return 0
