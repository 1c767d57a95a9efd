"""examples/ as a platform team and a tenant use them: `kubectl apply -k examples/platform`, then the tenants' parts;
`kubectl wait --for=condition=Ready` succeeds for what the quota admits and times out for what is queued. The same
manifests `make demo` applies."""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_examples_apply_with_kustomize_and_bring_the_demo_up(cluster, crds, operator):
    try:
        cluster.kubectl("apply", "-k", str(EXAMPLES / "platform"))
        for part in ("team-a", "team-b"):
            cluster.kubectl("apply", "-k", str(EXAMPLES / part))

        admitted = cluster.kubectl("wait", "-n", "team-a", "--for=condition=Ready", "--timeout=120s",
                                   "modeldeployment/chat", "modeldeployment/batch", check=False)
        assert admitted.returncode == 0, admitted.stdout + admitted.stderr
        queued = cluster.kubectl("wait", "-n", "team-a", "--for=condition=Ready", "--timeout=10s",
                                 "modeldeployment/experiment", check=False)
        assert queued.returncode != 0 and "timed out" in queued.stderr, queued.stdout + queued.stderr
        experiment = json.loads(cluster.kubectl("get", "-n", "team-a", "modeldeployment/experiment", "-o",
                                                "json").stdout)
        admission = next(c for c in experiment["status"]["conditions"] if c["type"] == "QuotaAdmitted")
        assert (admission["status"], admission["reason"]) == ("False", "QuotaExceeded"), admission
        model = json.loads(cluster.kubectl("get", "-n", "team-a", "model/llama-3-8b", "-o", "json").stdout)
        verified = next(c for c in model["status"]["conditions"] if c["type"] == "Verified")
        assert verified["status"] == "True", verified  # signed with the key examples/platform trusts
        ready_b = cluster.kubectl("wait", "-n", "team-b", "--for=condition=Ready", "--timeout=120s",
                                  "modeldeployment/assistant", check=False)
        assert ready_b.returncode == 0, ready_b.stdout + ready_b.stderr
    finally:
        for part in ("team-a", "team-b", "platform"):
            cluster.kubectl("delete", "-k", str(EXAMPLES / part), "--ignore-not-found", "--wait=false", check=False)
