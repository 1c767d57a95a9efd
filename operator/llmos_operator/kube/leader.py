"""Leader election: of the operator's replicas, exactly one runs kopf; the others wait.

A ``coordination.k8s.io/v1`` Lease held through the ``kubernetes`` client's own ``leaderelection`` module (the
client-go algorithm: the holder renews every ``retry_period``; a candidate takes the Lease once it has seen no
renewal for ``lease_duration``). Timings are client-go's defaults, so a replica that dies is replaced within
``lease_duration + retry_period`` = 17 s:

- ``lease_duration`` 15 s: how long a standby trusts the last renewal it saw;
- ``renew_deadline`` 10 s: how long the leader keeps retrying a failed renewal before it gives up;
- ``retry_period`` 2 s: how often the leader renews and a standby looks.

A leader that cannot renew within ``renew_deadline`` exits at once (exit code 1, before its Lease can expire and a
standby take over), so the kubelet restarts it as a standby: two replicas never reconcile at the same time. While
waiting, a standby answers the liveness probe itself (kopf, which serves it otherwise, is not started at all).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from kubernetes.client import ApiException
from prometheus_client import Gauge

from .client import Kube

log = logging.getLogger("llmos.leader")

IS_LEADER = Gauge("llmos_operator_leader", "1 in the replica that holds the leader Lease and reconciles, else 0")
DEFAULT_LEASE_NAME = "llmos-operator"
DEFAULT_NAMESPACE = "llmos-system"
NAMESPACE_ENV = "LLMOS_OPERATOR_NAMESPACE"  # the chart sets it from the pod's namespace (downward API)


@dataclass(frozen=True)
class LeaseTimings:
    lease_duration: int = 15
    renew_deadline: int = 10
    retry_period: int = 2


def identity() -> str:
    """Unique per process: the pod name (HOSTNAME) plus a random suffix, so a restarted pod is a new candidate."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class _StandbyLiveness:
    """Answers the liveness endpoint while kopf is not running (kopf serves it once this replica leads)."""

    def __init__(self, url: str | None, elector: threading.Thread):
        self.server: ThreadingHTTPServer | None = None
        if not url:
            return
        parts = urlsplit(url)
        path = parts.path or "/"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 — http.server's name
                ok = self.path == path and elector.is_alive()
                self.send_response(200 if ok else 503)
                self.end_headers()
                self.wfile.write(b'{"standby": true}' if ok else b"")

            def log_message(self, *args):  # the probe every few seconds is noise
                pass

        self.server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="standby-liveness", daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class LeaseNamespaceMissing(RuntimeError):
    """The namespace that should hold the leader Lease does not exist."""


def check_lease_namespace(kube: Kube, namespace: str) -> None:
    """Refuse to start, once and clearly, when the Lease's namespace is missing: the election library would retry
    its 404 for ever, logging a dump each time."""
    try:
        found = kube.get("Namespace", namespace)
    except ApiException as exc:
        if exc.status in (401, 403):
            return  # not allowed to look: the election itself will tell
        raise
    if found is None:
        raise LeaseNamespaceMissing(
            f"the leader Lease's namespace {namespace!r} does not exist: create it (kubectl create namespace "
            f"{namespace}), name another with --leader-election-namespace or ${NAMESPACE_ENV}, or run one replica "
            "without leader election (--standalone)")


def wait_until_leader(kube: Kube, *, namespace: str | None = None, lease_name: str = DEFAULT_LEASE_NAME,
                      liveness: str | None = None, timings: LeaseTimings = LeaseTimings()) -> None:
    """Block until this process holds the Lease ``namespace/lease_name``; keep renewing it in a background thread
    afterwards, and end the process if a renewal fails for ``renew_deadline``. The Kubernetes client must be
    configured (in-cluster or kubeconfig) before this is called."""
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    # The library logs every look at a Lease another replica holds (every retry_period); errors it logs stay.
    logging.getLogger("leaderelection").addFilter(
        lambda record: "yet to finish lease_duration" not in record.getMessage())
    namespace = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
    check_lease_namespace(kube, namespace)
    me = identity()
    became_leader = threading.Event()

    def on_started_leading() -> None:
        IS_LEADER.set(1)
        became_leader.set()

    def on_stopped_leading() -> None:
        # Exit before the Lease can expire: a standby may take it over from then on, and two active replicas would
        # fight over every object. The kubelet restarts this container as a standby.
        log.critical("lost the leader Lease %s/%s (no renewal for %d s); exiting so that the standby takes over",
                     namespace, lease_name, timings.renew_deadline)
        logging.shutdown()
        os._exit(1)

    config = electionconfig.Config(
        LeaseLock(lease_name, namespace, me), lease_duration=timings.lease_duration,
        renew_deadline=timings.renew_deadline, retry_period=timings.retry_period,
        onstarted_leading=on_started_leading, onstopped_leading=on_stopped_leading,
    )
    IS_LEADER.set(0)
    elector = threading.Thread(target=leaderelection.LeaderElection(config).run, name="leader-election", daemon=True)
    elector.start()
    log.info("waiting for the leader Lease %s/%s as %s", namespace, lease_name, me)
    standby = _StandbyLiveness(liveness, elector)
    try:
        while not became_leader.wait(1):
            if not elector.is_alive():
                raise RuntimeError("leader election stopped unexpectedly; see the log above")
    finally:
        standby.close()
    log.info("holding the leader Lease %s/%s as %s: this replica reconciles", namespace, lease_name, me)
