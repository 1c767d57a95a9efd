"""An idle operator is idle (issue 13): once everything converged, the safety-net resync reconciles every Tenant and
Model again and makes no API request at all — no re-apply of unchanged children, no live read of an unchanged bundle
ConfigMap or key Secret. Counted with the operator's own `llmos_api_requests_total` (every request but the watch
streams) while it resyncs every 2 s."""

from __future__ import annotations

import re
import time

import pytest
from kubernetes import client

from tests.integration.test_model_verification import _bundle_configmap, _key_secret, _signed, signed_model  # noqa: F401

RESYNC_SECONDS = 2
_SAMPLE = re.compile(r'^(llmos_api_requests_total|llmos_reconcile_total)\{([^}]*)\} ([0-9.e+]+)$', re.M)


def _counters(operator) -> tuple[dict[str, float], dict[str, float]]:
    """(requests by "METHOD Kind", reconciles by kind)."""
    requests: dict[str, float] = {}
    reconciles: dict[str, float] = {}
    for name, labels, value in _SAMPLE.findall(operator.metrics()):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "llmos_api_requests_total":
            requests[f"{fields['method']} {fields['kind']}"] = float(value)
        else:
            reconciles[fields["kind"]] = reconciles.get(fields["kind"], 0) + float(value)
    return requests, reconciles


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


@pytest.fixture
def fast_resync(operator):
    operator.env = {"LLMOS_RESYNC_SECONDS": str(RESYNC_SECONDS)}
    operator.stop()
    operator.start()
    yield operator
    operator.env = {}
    operator.stop()
    operator.start()


def test_an_idle_operator_makes_no_request_over_many_resyncs(fast_resync, objects, namespace, cluster, signed_model):
    core = client.CoreV1Api(cluster.api)
    with _key_secret(core, namespace, signed_model["release"]) as secret:
        objects.tenant(trustedKeys=[{"name": "release", "secretRef": {"name": secret}}])
        _bundle_configmap(core, namespace, "m-sig", signed_model["bundle"])
        _signed(objects)
        objects.wait_condition("models", "m", "Verified", "True")
        objects.deployment("d")
        objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)

        # Converged. Over a window of 5 resync periods the operator reconciles again and asks nothing; allow a
        # minute for the last status writes and Events of convergence to finish.
        window = 5 * RESYNC_SECONDS
        deadline = time.monotonic() + 60
        while True:
            requests0, reconciles0 = _counters(fast_resync)
            time.sleep(window)
            requests1, reconciles1 = _counters(fast_resync)
            asked, reconciled = _delta(requests1, requests0), _delta(reconciles1, reconciles0)
            if not asked or time.monotonic() > deadline:
                break
        assert not asked, f"requests over {window} s of resyncs: {asked}"
        assert reconciled.get("Tenant", 0) >= 3 and reconciled.get("Model", 0) >= 3, reconciled

        # Still watched: a changed key Secret is read again and re-verifies the Model.
        core.patch_namespaced_secret(secret, "llmos-system", {"stringData": {"publicKey": signed_model["stranger"]}})
        objects.wait_condition("models", "m", "Verified", "False", "UntrustedKey", timeout=15)
