"""`make demo`'s last step (`llmos dev demo`) on the test run's cluster: its own operator with the API keys' limit
store, examples/ applied as a platform team and a tenant would (`kubectl apply -k examples/platform`, then the
tenants' parts), the status table. Then `kubectl wait --for=condition=Ready` succeeds for what the quota admits and
times out for what is queued. Nothing else ran the demo, and it had failed at this step unnoticed."""

from __future__ import annotations

import json
from pathlib import Path

from llmos_operator.dev import demo, operator_process
from tests.support.cluster_fixtures import install_platform
from tests.support.ports import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_demo_brings_the_examples_up_and_prints_their_gpus(cluster, crds, operator, capsys):
    operator.stop()  # the demo runs its own operator, as `make demo` does
    try:
        rc = demo.run(cluster.name, ports=(free_port(), free_port(), free_port()))
        out, err = capsys.readouterr()
        assert rc == 0, out + err
        # the GPU table: team-a's h100 quota is full (chat 2×2 + batch 4), experiment (4 more) is queued
        rows = {tuple(line.split()[:2]): line.split()[2:] for line in out.splitlines() if line.startswith("team-")}
        assert rows[("team-a", "h100")] == ["8", "8", "2", "1"], out
        assert rows[("team-b", "l4")] == ["2", "4", "1", "0"], out
        assert "The cluster and the operator keep running" in out

        # the demo's operator renders the limit store into the model pods
        chat = json.loads(cluster.kubectl("get", "-n", "team-a", "deployment/chat", "-o", "json").stdout)
        assert "redis://127.0.0.1:" in json.dumps(chat["spec"]["template"]), "no limit store in the pod template"

        admitted = cluster.kubectl("wait", "-n", "team-a", "--for=condition=Ready", "--timeout=30s",
                                   "modeldeployment/chat", "modeldeployment/batch", check=False)
        assert admitted.returncode == 0, admitted.stdout + admitted.stderr
        queued = cluster.kubectl("wait", "-n", "team-a", "--for=condition=Ready", "--timeout=5s",
                                 "modeldeployment/experiment", check=False)
        assert queued.returncode != 0 and "timed out" in queued.stderr, queued.stdout + queued.stderr
        experiment = json.loads(cluster.kubectl("get", "-n", "team-a", "modeldeployment/experiment", "-o",
                                                "json").stdout)
        admission = next(c for c in experiment["status"]["conditions"] if c["type"] == "QuotaAdmitted")
        assert (admission["status"], admission["reason"]) == ("False", "QuotaExceeded"), admission
        model = json.loads(cluster.kubectl("get", "-n", "team-a", "model/llama-3-8b", "-o", "json").stdout)
        verified = next(c for c in model["status"]["conditions"] if c["type"] == "Verified")
        assert verified["status"] == "True", verified  # signed with the key examples/platform trusts
    finally:
        # The run's cluster as the other tests expect it: no examples, no demo operator or store, the run's release.
        for part in ("team-a", "team-b", "platform"):
            cluster.kubectl("delete", "-k", str(EXAMPLES / part), "--ignore-not-found", "--wait=false", check=False)
        operator_process.stop(cluster.name)  # (and the limit store)
        install_platform(cluster.name)
        operator.start()
