"""Rolling updates inside the tenant's quota (issue 11), on the local control plane.

KWOK's pod stages of the local cluster (operator/llmos_operator/dev/kwok-stages.yaml) act out the runtime by the
Model's source URI: `hf://kwok/slow…` pods turn Ready 4 s after they start (weights loading), `hf://kwok/never-ready…`
never do, `hf://kwok/crash…` crash-loop. The real Deployment and ReplicaSet controllers roll the pods; the tests
sample what runs (every pod that is not terminated) every 200 ms.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client

from tests.integration.test_model_verification import _bundle_configmap, signed_model  # noqa: F401 (fixture)
from tests.support.tenant import make_user
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SLOW = "hf://kwok/slow-ready"


class GpuSampler(threading.Thread):
    """GPU requests of the namespace's pods that are not terminated (Succeeded/Failed), every 200 ms; and the
    tenant's ledger entries of kind surge."""

    def __init__(self, cluster, namespace: str, objects=None):
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(cluster.api)
        self.namespace, self.objects = namespace, objects
        self.peak = 0
        self.samples = 0
        self.surge_seen: set[str] = set()
        self.max_surges = 0
        self.stop = threading.Event()

    def gpus_now(self) -> int:
        total = 0
        for pod in self.core.list_namespaced_pod(self.namespace).items:
            if pod.status.phase in ("Succeeded", "Failed"):
                continue
            for c in pod.spec.containers:
                total += int(((c.resources.requests or {}).get("nvidia.com/gpu")) or 0)
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.gpus_now())
            self.samples += 1
            if self.objects is not None:
                reservations = (self.objects.get("tenants", self.namespace).get("status") or {}).get(
                    "reservations") or {}
                surges = {k for k, v in reservations.items() if v.get("kind") == "surge"}
                self.surge_seen |= surges
                self.max_surges = max(self.max_surges, len(surges))
            time.sleep(0.2)

    def __enter__(self) -> GpuSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(timeout=5)


def _pod_uids(cluster, namespace: str, name: str) -> set[str]:
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(
        namespace, label_selector=f"llmos.dev/model-deployment={name}").items
    return {p.metadata.uid for p in pods if not p.metadata.deletion_timestamp}


def _status(objects, name: str) -> dict:
    return objects.get("modeldeployments", name).get("status") or {}


def _rolled(objects, name: str, old_target: str | None):
    """The deployment is Ready again, at a new revision."""
    st = _status(objects, name)
    ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
    return ready.get("status") == "True" and st.get("revision") not in (None, old_target) and \
        st.get("revision") == st.get("targetRevision")


def _ready(objects, name: str, timeout: float = 60) -> dict:
    objects.wait_condition("modeldeployments", name, "Ready", "True", timeout=timeout)
    return _status(objects, name)


def _bump(objects, revision: str, uri: str | None = None) -> None:
    source = {"revision": revision} | ({"uri": uri} if uri else {})
    objects.patch("models", "m", {"spec": {"source": source}})


def test_a_tenant_at_quota_rolls_without_ever_exceeding_it(objects, namespace, cluster):
    """4 of 4 GPUs used: no room to surge, so (maxUnavailable 1) one pod is replaced at a time; never above 4."""
    objects.tenant(gpus={"h100": 4})
    objects.model(uri=SLOW)
    objects.deployment("d", replicas=2, count=2, rollout={"maxUnavailable": 1})
    before = _ready(objects, "d")
    with GpuSampler(cluster, namespace, objects) as sampler:
        _bump(objects, "v2")
        wait_for(lambda: _rolled(objects, "d", before["revision"]), timeout=90, message="the roll to v2")
    assert sampler.samples > 20 and sampler.peak <= 4, (sampler.peak, sampler.samples)
    assert not sampler.surge_seen  # nothing to spare: no surge reserved
    assert _status(objects, "d")["updatedReplicas"] == 2


def test_spare_gpus_surge_one_replica_reserved_in_the_ledger_during_the_roll_only(objects, namespace, cluster):
    objects.tenant(gpus={"h100": 6})
    objects.model(uri=SLOW)
    objects.deployment("d", replicas=2, count=2)  # maxSurge auto, maxUnavailable 0
    before = _ready(objects, "d")
    old_pods = _pod_uids(cluster, namespace, "d")
    with GpuSampler(cluster, namespace, objects) as sampler:
        _bump(objects, "v2")
        wait_for(lambda: _rolled(objects, "d", before["revision"]), timeout=90, message="the roll to v2")
        wait_for(lambda: not {k for k, v in (objects.get("tenants", namespace)["status"].get("reservations") or {})
                              .items() if v.get("kind") == "surge"}, timeout=30, message="the surge freed")
    assert sampler.surge_seen == {f"{namespace}/d#surge"}
    assert 4 < sampler.peak <= 6, sampler.peak  # it did surge, inside the quota
    assert not (_pod_uids(cluster, namespace, "d") & old_pods)
    events = client.CoreV1Api(cluster.api).list_namespaced_event(
        namespace, field_selector="involvedObject.name=d").items
    assert {"RolloutStarted", "RolloutCompleted"} <= {e.reason for e in events}
    quota = client.CoreV1Api(cluster.api).read_namespaced_resource_quota("llmos-tenant-quota", namespace)
    assert quota.spec.hard["requests.nvidia.com/gpu"] == "4"  # the backstop follows the ledger: surge gone


def test_no_headroom_and_max_unavailable_zero_waits_for_surge_quota_then_finishes(objects, namespace, cluster):
    objects.tenant(gpus={"h100": 4})
    objects.model(uri=SLOW)
    objects.deployment("d", replicas=2, count=2, rollout={"maxSurge": 1})
    before = _ready(objects, "d")
    old_pods = _pod_uids(cluster, namespace, "d")
    _bump(objects, "v2")
    objects.wait_condition("modeldeployments", "d", "Progressing", "False", "WaitingForSurgeQuota")
    wait_for(lambda: "uses 4 of its 4" in objects.condition("modeldeployments", "d", "Progressing")["message"],
             message="admission's answer in the condition")
    assert objects.condition("modeldeployments", "d", "Reconciling")["status"] == "True"
    time.sleep(3)
    assert _pod_uids(cluster, namespace, "d") == old_pods  # nothing replaced meanwhile
    # Freeing GPUs (a larger quota) lets the rollout reserve its surge and finish.
    objects.patch("tenants", namespace, {"spec": {"quota": {"gpus": {"h100": 6}}}})
    wait_for(lambda: _rolled(objects, "d", before["revision"]), timeout=90, message="the roll after quota freed")


def test_a_revision_that_does_not_verify_changes_nothing_and_fixing_it_rolls_forward(
        objects, namespace, cluster, signed_model):
    core = client.CoreV1Api(cluster.api)
    objects.tenant(gpus={"h100": 6}, policy={"allowUnsignedModels": False},
                   trustedKeys=[{"name": "release", "publicKey": signed_model["release"]}])
    _bundle_configmap(core, namespace, "m-sig", signed_model["bundle"])
    _bundle_configmap(core, namespace, "m-sig-bad", signed_model["stranger_bundle"])
    objects.model(policy="Required", uri=SLOW, signature={"bundleRef": {"name": "m-sig", "key": "model.sig"}})
    objects.deployment("d", replicas=2, count=2)
    before = _ready(objects, "d")
    digest = objects.get("models", "m")["status"]["digest"]
    old_pods = _pod_uids(cluster, namespace, "d")
    ledger = objects.get("tenants", namespace)["status"]["reservations"]

    objects.patch("models", "m", {"spec": {"source": {"revision": "v2"},
                                           "signature": {"bundleRef": {"name": "m-sig-bad", "key": "model.sig"}}}})
    cond = objects.wait_condition("models", "m", "Verified", "False", "RevisionRejected")
    assert "UntrustedKey" in cond["message"] and digest in cond["message"], cond["message"]
    st = objects.get("models", "m")["status"]
    assert st["digest"] == digest and st["pendingRevision"] == "v2" and st.get("servingRevision") is None
    md = objects.wait_condition("modeldeployments", "d", "Degraded", "True", "RevisionRejected")
    assert "v2" in md["message"]
    assert objects.condition("modeldeployments", "d", "Stalled")["status"] == "True"
    time.sleep(6)  # admission passes run meanwhile (on every event in the cluster)
    assert _pod_uids(cluster, namespace, "d") == old_pods
    assert objects.get("tenants", namespace)["status"]["reservations"] == ledger
    assert _status(objects, "d")["revision"] == before["revision"] == digest

    # Fixing the bundle (the good one, for revision v2): verified, rolled forward.
    objects.patch("models", "m", {"spec": {"signature": {"bundleRef": {"name": "m-sig", "key": "model.sig"}}}})
    objects.wait_condition("models", "m", "Verified", "True")
    wait_for(lambda: not (_pod_uids(cluster, namespace, "d") & old_pods) and
             objects.condition("modeldeployments", "d", "Ready")["status"] == "True", timeout=120,
             message="the roll forward to v2")
    assert objects.get("models", "m")["status"]["servingRevision"] == "v2"


def test_an_admission_pass_between_a_model_edit_and_its_verification_keeps_the_deployment(
        objects, namespace, cluster, operator, monkeypatch):
    """A restarted operator runs an admission pass before it has verified an edited Model; with verification
    paused (LLMOS_VERIFY_DELAY_SECONDS) the window is seconds long."""
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    objects.tenant(gpus={"h100": 8})
    objects.model(uri=SLOW)
    objects.deployment("d", replicas=1, count=8, rollout={"maxUnavailable": 1})  # no room to surge: in place
    objects.deployment("queued", replicas=1, count=8)  # waits for the same 8 GPUs
    _ready(objects, "d")
    uid = apps.read_namespaced_deployment("d", namespace).metadata.uid
    operator.kill()
    try:
        _bump(objects, "v2")
        monkeypatch.setenv("LLMOS_VERIFY_DELAY_SECONDS", "8")
        operator.start()
        for _ in range(20):  # 5 s of the window: admission has run, verification has not
            ledger = objects.get("tenants", namespace)["status"]["reservations"]
            assert ledger.get(f"{namespace}/d", {}).get("gpus") == 8, ledger
            assert f"{namespace}/queued" not in ledger
            assert apps.read_namespaced_deployment("d", namespace).metadata.uid == uid
            time.sleep(0.25)
    finally:
        operator.kill()
        monkeypatch.delenv("LLMOS_VERIFY_DELAY_SECONDS")
        operator.start()
    wait_for(lambda: objects.get("models", "m")["status"].get("observedGeneration") == 2, timeout=30,
             message="the edited Model checked")
    wait_for(lambda: _rolled(objects, "d", None) and _status(objects, "d")["servingTemplate"] is not None,
             timeout=90, message="d rolled to v2")
    assert apps.read_namespaced_deployment("d", namespace).metadata.uid == uid
    assert not objects.get("tenants", namespace)["status"]["reservations"].get(f"{namespace}/queued")
    assert core.read_namespaced_resource_quota("llmos-tenant-quota", namespace).spec.hard["requests.nvidia.com/gpu"] in (
        "8", "16")


def test_a_gpu_count_beyond_quota_never_claims_the_new_generation(objects, namespace, cluster):
    objects.tenant(gpus={"h100": 4})
    objects.model(uri=SLOW)
    objects.deployment("d", replicas=1, count=1)
    _ready(objects, "d")
    old_pods = _pod_uids(cluster, namespace, "d")
    objects.patch("modeldeployments", "d", {"spec": {"gpu": {"count": 8}}})
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        st = _status(objects, "d")
        for c in st.get("conditions", []):
            if c.get("observedGeneration") == 2 and c["type"] in ("Ready", "QuotaAdmitted"):
                assert c["status"] == "False", c  # never "admitted" or "ready" at generation 2
        time.sleep(0.2)
    assert _pod_uids(cluster, namespace, "d") == old_pods  # the old pod keeps running
    stalled = objects.wait_condition("modeldeployments", "d", "Stalled", "True", "QuotaNeverFits")
    assert stalled["observedGeneration"] == 2 and "quota is 4" in stalled["message"]
    from llmos_operator.dev import cluster as dev_cluster

    waited = dev_cluster.kubectl(cluster.name, "wait", "-n", namespace, "--for=condition=Ready", "--timeout=5s",
                                 "modeldeployment/d", check=False)
    assert waited.returncode != 0, waited.stdout
    dep = client.AppsV1Api(cluster.api).read_namespaced_deployment("d", namespace)
    assert dep.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert objects.get("tenants", namespace)["status"]["reservations"][f"{namespace}/d"]["gpus"] == 1


FORGED_IMAGE = "registry.example/tenant/anything:1"


def _forge_replica_set(cluster, namespace: str, workdir, name: str) -> None:
    """A ReplicaSet with the labels and pod template annotations of the serving one, another image and no GPU, at 0
    replicas; the Deployment controller adopts it (its labels match the selector), so it even carries a controller
    reference to llmos's Deployment. A tenant may no longer write it (the chart's children-are-the-operators policy:
    llmos's labels): that is checked with the tenant's own token; the forgery is then made with the platform admin's
    identity, so that the operator's own check (never roll back to a template it did not record) stays tested."""
    apps = client.AppsV1Api(cluster.api)
    template = apps.read_namespaced_deployment(name, namespace).spec.template
    template.spec.containers[0].image = FORGED_IMAGE
    for container in template.spec.containers:
        container.resources = None  # the GPU policy refuses a ReplicaSet that asks for a GPU
    labels = {k: v for k, v in template.metadata.labels.items() if k != "app.kubernetes.io/managed-by"}
    template.metadata.labels = {**labels, "pod-template-hash": "forged"}
    body = client.V1ReplicaSet(
        metadata=client.V1ObjectMeta(name=f"{name}-forged", labels=labels),
        spec=client.V1ReplicaSetSpec(replicas=0, selector=client.V1LabelSelector(match_labels=labels),
                                     template=template))
    user = make_user(cluster.api, cluster.name, f"{namespace[:50]}-u", "tenant-admin", admin_of=[namespace],
                     workdir=workdir)
    try:
        with pytest.raises(client.ApiException) as refused:
            client.AppsV1Api(user.api).create_namespaced_replica_set(namespace, body)
        assert "children-are-the-operators" in refused.value.body, refused.value.body
    finally:
        user.close()
        client.CoreV1Api(cluster.api).delete_namespace(f"{namespace[:50]}-u")
    apps.create_namespaced_replica_set(namespace, body)


def test_auto_rollback_of_a_revision_that_never_gets_ready_and_a_stop_without_it(objects, namespace, cluster,
                                                                                   tmp_path):
    """Two deployments of one Model roll to a revision whose pods never turn Ready: with autoRollback the previous
    template is rendered again within progressDeadlineSeconds + 15 s; without it the Deployment is paused. Both keep
    their old pods serving; a third one's pods crash-loop and it rolls back at once. A ReplicaSet the tenant forged
    to look like the serving one (labels, config hash; another image) is never what the rollback copies."""
    objects.tenant(gpus={"h100": 8})
    objects.model(uri=SLOW)
    objects.model("c", uri=SLOW)
    rollout = {"progressDeadlineSeconds": 60}
    objects.deployment("back", replicas=1, count=1, rollout=rollout | {"autoRollback": True})
    objects.deployment("stop", replicas=1, count=1, rollout=rollout)
    objects.deployment("crash", model="c", replicas=1, count=1, rollout=rollout | {"autoRollback": True})
    for name in ("back", "stop", "crash"):
        _ready(objects, name)
    serving = {n: _status(objects, n)["revision"] for n in ("back", "stop", "crash")}
    old = {n: _pod_uids(cluster, namespace, n) for n in ("back", "stop", "crash")}
    apps = client.AppsV1Api(cluster.api)
    genuine = apps.read_namespaced_deployment("back", namespace).spec.template
    _forge_replica_set(cluster, namespace, tmp_path, "back")
    started = time.monotonic()
    _bump(objects, "bad", uri="hf://kwok/never-ready")
    objects.patch("models", "c", {"spec": {"source": {"uri": "hf://kwok/crash"}}})

    crashed = objects.wait_condition("modeldeployments", "crash", "Degraded", "True", "RolloutFailed", timeout=40)
    assert "crash-loops" in crashed["message"] and serving["crash"] in crashed["message"], crashed["message"]
    back = objects.wait_condition("modeldeployments", "back", "Degraded", "True", "RolloutFailed", timeout=75 + 15)
    assert time.monotonic() - started <= 60 + 15 + 15
    assert "rolled back" in back["message"] and serving["back"] in back["message"], back["message"]
    # rolled back to the template its Deployment made, not to the tenant's look-alike
    assert apps.read_namespaced_deployment("back", namespace).spec.template.spec.containers[0].image == \
        genuine.spec.containers[0].image != FORGED_IMAGE
    stop = objects.wait_condition("modeldeployments", "stop", "Degraded", "True", "RolloutFailed", timeout=30)
    assert "stopped" in stop["message"] and "autoRollback is off" in stop["message"], stop["message"]
    assert apps.read_namespaced_deployment("stop", namespace).spec.paused is True
    for name in ("back", "crash"):
        wait_for(lambda n=name: _status(objects, n).get("revision") == serving[n]
                 and _pod_uids(cluster, namespace, n) == old[n], timeout=30, message=f"{name} back on its pods")
        assert objects.condition("modeldeployments", name, "Stalled")["status"] == "True"
    assert old["stop"] <= _pod_uids(cluster, namespace, "stop")  # the old pod keeps serving
    events = {e.reason for e in client.CoreV1Api(cluster.api).list_namespaced_event(namespace).items}
    assert {"RolledBack", "RolloutStopped"} <= events
    # The failed revision is not retried until the spec changes again; a good revision rolls.
    time.sleep(6)
    assert _pod_uids(cluster, namespace, "back") == old["back"]
    _bump(objects, "good", uri=SLOW)
    for name in ("back", "stop"):
        wait_for(lambda n=name: not (_pod_uids(cluster, namespace, n) & old[n]) and
                 objects.condition("modeldeployments", n, "Ready")["status"] == "True", timeout=120,
                 message=f"{name} rolled to the good revision")
    assert not apps.read_namespaced_deployment("stop", namespace).spec.paused


def test_an_adapter_only_change_replaces_no_pod(objects, namespace, cluster):
    adapters = [{"name": "sql", "source": {"uri": "hf://org/sql-lora"}},
                {"name": "legal", "source": {"uri": "hf://org/legal-lora"}}]
    objects.tenant()
    objects.model(adapters=adapters)
    objects.deployment("d", replicas=2, adapters=["sql"])
    _ready(objects, "d")
    pods = _pod_uids(cluster, namespace, "d")
    template = client.AppsV1Api(cluster.api).read_namespaced_deployment("d", namespace).spec.template
    objects.patch("modeldeployments", "d", {"spec": {"adapters": ["legal"]}})
    core = client.CoreV1Api(cluster.api)
    wait_for(lambda: '"legal"' in core.read_namespaced_config_map("d-adapters", namespace).data["adapters.json"],
             message="the adapter set rewritten")
    time.sleep(2)
    assert _pod_uids(cluster, namespace, "d") == pods
    after = client.AppsV1Api(cluster.api).read_namespaced_deployment("d", namespace).spec.template
    assert after.metadata.annotations == template.metadata.annotations


def test_deployments_sharing_a_model_roll_one_after_another_inside_the_quota(objects, namespace, cluster):
    objects.tenant(gpus={"h100": 8})
    objects.model(uri=SLOW)
    names = ["a", "b", "c"]
    for name in names:
        objects.deployment(name, replicas=1, count=2)  # 6 of 8: room for one 2-GPU surge
    before = {n: _ready(objects, n)["revision"] for n in names}
    with GpuSampler(cluster, namespace, objects) as sampler:
        _bump(objects, "v2")
        for name in names:
            wait_for(lambda n=name: _rolled(objects, n, before[n]), timeout=120, message=f"{name} rolled")
    assert sampler.peak <= 8, sampler.peak
    assert sampler.max_surges == 1 and len(sampler.surge_seen) == 3, (sampler.max_surges, sampler.surge_seen)


def test_kubectl_wait_sees_a_scale_up_that_waits_for_quota(objects, namespace, cluster):
    """`kubectl wait` on Ready fails while a scale-up waits in the queue (Reconciling), succeeds once admitted."""
    from llmos_operator.dev import cluster as dev_cluster

    objects.tenant(gpus={"h100": 3})
    objects.model()
    objects.deployment("d", replicas=1, count=1)
    objects.deployment("e", replicas=1, count=1)
    _ready(objects, "d")
    objects.patch("modeldeployments", "d", {"spec": {"replicas": 3}})  # 3 fit the quota, but e holds one
    objects.wait_condition("modeldeployments", "d", "Reconciling", "True", "QuotaExceeded")
    assert objects.condition("modeldeployments", "d", "Stalled")["status"] == "False"
    out = dev_cluster.kubectl(cluster.name, "wait", "-n", namespace, "--for=condition=Ready", "--timeout=3s",
                              "modeldeployment/d", check=False)
    assert out.returncode != 0
    objects.delete("modeldeployments", "e")
    out = dev_cluster.kubectl(cluster.name, "wait", "-n", namespace, "--for=condition=Ready", "--timeout=30s",
                              "modeldeployment/d", check=False)
    assert out.returncode == 0, out.stderr
