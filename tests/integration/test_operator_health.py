"""kopf's liveness endpoint reports the runtime beneath (issue 22): 200 while informers turn and workers move on,
500 naming the problem while a worker is stuck on one key. The operator under test is started with a short
`LLMOS_STUCK_SECONDS` and a verification that takes longer (`LLMOS_VERIFY_DELAY_SECONDS`, a test knob); the
session's operator is stopped meanwhile so that one process reconciles."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from llmos_operator.dev import cluster as dev_cluster
from tests.integration.conftest import OperatorProcess
from tests.support.waiting import wait_for


def probe(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_liveness_probe_fails_while_a_worker_is_stuck(cluster, operator, operator_kubeconfig, objects):
    operator.stop()
    slow = OperatorProcess(operator_kubeconfig, dev_cluster.logs_dir(cluster.name), cluster.name, name="health")
    slow.env = {"LLMOS_STUCK_SECONDS": "2", "LLMOS_VERIFY_DELAY_SECONDS": "20"}
    try:
        slow.start()
        status, body = probe(slow.health_port)
        assert status == 200, body
        assert "synced" in json.loads(body)["informers"]
        objects.tenant(gpus={"h100": 1})
        objects.model()  # its verification holds a worker for 20 s: stuck 18 s, past kopf's 10 s answer cache
        started = time.monotonic()
        wait_for(lambda: probe(slow.health_port)[0] == 500, timeout=30, message="the probe failing")
        assert time.monotonic() - started < 20
        # kopf answers 500 without a body; its log says why.
        log = slow.log_path.read_text()
        assert "reconciling ('Model'" in log and "more than 2 s" in log
        # The verification ends: alive again (kopf caches a probe's answer for 10 s).
        wait_for(lambda: probe(slow.health_port)[0] == 200, timeout=45, message="the probe passing again")
    finally:
        slow.stop()
        operator.start()
