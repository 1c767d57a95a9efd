"""kopf wiring: every handler only puts a key on the controller's work queue. Decisions live in controller.py."""

from __future__ import annotations

import logging
import os
import threading

import kopf

from ..api.types import GROUP, VERSION
from .controller import Controller
from .workqueue import run_workers

log = logging.getLogger("llmos.operator")
MANAGED = {"app.kubernetes.io/managed-by": "llmos"}
WORKERS = int(os.environ.get("LLMOS_WORKERS", "4"))
# A safety net for what no watch reports (trusted keys in Secrets, bundle ConfigMaps): every Tenant and an admission
# pass are queued this often. Events drive everything else.
RESYNC_SECONDS = float(os.environ.get("LLMOS_RESYNC_SECONDS", "60"))

_controller: Controller | None = None
_threads: list[threading.Thread] = []


def _c() -> Controller:
    assert _controller is not None, "the controller starts before any handler runs"
    return _controller


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_):
    settings.posting.level = logging.WARNING  # kopf's own log lines become Events only when they matter
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    _threads.extend(run_workers(_c().queue, _c().handle, WORKERS, _c().on_error))
    _threads.append(_c().start_resync(RESYNC_SECONDS))


@kopf.on.cleanup()
def _cleanup(**_):
    _c().queue.close()


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def _model_deployment(type, body, **_):  # noqa: A002 — kopf's argument name
    _c().model_deployment_event(type, body)


@kopf.on.event(GROUP, VERSION, "models")
def _model(type, body, **_):  # noqa: A002
    _c().model_event(type, body)


@kopf.on.event(GROUP, VERSION, "tenants")
def _tenant(type, body, **_):  # noqa: A002
    _c().tenant_event(type, body)


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
        standalone: bool, peering: str) -> int:
    """`llmos operator run`: the operator in this process, until interrupted."""
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
    kopf.run(
        clusterwide=not namespace,
        namespaces=namespace or [],
        liveness_endpoint=liveness,
        standalone=standalone,
        peering_name=peering,
    )
    return 0
