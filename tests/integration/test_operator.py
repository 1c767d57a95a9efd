"""The operator on the real control plane: admission against per-tenant, per-GPU-class quotas, children, placement,
status and events. Each test would fail against a mock: it needs the real API server (schema, CEL, status
subresource, optimistic concurrency), the scheduler, the garbage collector and KWOK's pods."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kubernetes import client

from tests.integration.conftest import deployment_exists
from tests.support.waiting import wait_for

H100 = "NVIDIA-H100-80GB-HBM3"


def _admitted(objects, name: str) -> bool:
    c = objects.condition("modeldeployments", name, "QuotaAdmitted")
    return bool(c and c["status"] == "True")


def _events(core: client.CoreV1Api, namespace: str, name: str) -> list:
    return core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items


def test_tenant_owns_its_namespaces_with_quota_backstop_and_network_policy(objects, namespace, cluster):
    objects.tenant(gpus={"h100": 8, "l4": 4})
    core = client.CoreV1Api(cluster.api)
    net = client.NetworkingV1Api(cluster.api)

    wait_for(lambda: core.read_namespace(namespace).metadata.labels.get("llmos.dev/tenant") == namespace,
             message="the namespace labelled with its tenant")
    labels = core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "app.kubernetes.io/managed-by" not in labels
    quotas = wait_for(lambda: core.list_namespaced_resource_quota(namespace).items, message="a ResourceQuota")
    # The backstop is what the ledger reserves here (nothing yet), never the tenant's total.
    assert quotas[0].spec.hard["requests.nvidia.com/gpu"] == "0"
    policies = wait_for(lambda: {p.metadata.name: p for p in net.list_namespaced_network_policy(namespace).items}
                        if len(net.list_namespaced_network_policy(namespace).items) == 2 else None,
                        message="ingress and egress NetworkPolicies")
    peers = json.dumps(client.ApiClient().sanitize_for_serialization(policies["llmos-tenant-isolation"].spec.ingress))
    assert "llmos.dev/gateway" in peers and "llmos.dev/tenant" in peers
    egress = json.dumps(client.ApiClient().sanitize_for_serialization(policies["llmos-tenant-egress"].spec.egress))
    assert "169.254.0.0/16" in egress
    objects.wait_condition("tenants", namespace, "Ready", "True")

    objects.model()
    objects.deployment("chat", replicas=2, count=2)
    objects.wait_condition("modeldeployments", "chat", "QuotaAdmitted", "True")
    # Exactly the 4 reserved: a rollout's surge is reserved in the ledger (and so here) only while it rolls.
    wait_for(lambda: core.read_namespaced_resource_quota("llmos-tenant-quota", namespace).spec.hard[
        "requests.nvidia.com/gpu"] == "4", message="the backstop following the ledger")


def test_a_namespace_claimed_by_a_second_tenant_is_refused_on_the_second(objects, namespace):
    objects.tenant()
    objects.wait_condition("tenants", namespace, "Ready", "True")
    objects.tenant(f"{namespace}-intruder", namespaces=[namespace])
    cond = objects.wait_condition("tenants", f"{namespace}-intruder", "Ready", "False", "NamespaceConflict")
    assert namespace in cond["message"]
    assert objects.condition("tenants", namespace, "Ready")["status"] == "True"


def test_admitted_deployment_gets_children_and_pods_only_on_h100_nodes(objects, namespace, cluster):
    objects.tenant(gpus={"h100": 8})
    objects.model()
    objects.deployment("chat", replicas=2, count=2)
    objects.wait_condition("modeldeployments", "chat", "Ready", "True", timeout=60)

    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    deployment = apps.read_namespaced_deployment("chat", namespace)
    assert deployment.metadata.owner_references[0].kind == "ModelDeployment"
    container = deployment.spec.template.spec.containers[0]
    assert container.command[:2] == ["llmos-runtime", "serve"]
    assert container.resources.limits["nvidia.com/gpu"] == "2"
    core.read_namespaced_service("chat", namespace)
    client.PolicyV1Api(cluster.api).read_namespaced_pod_disruption_budget("chat", namespace)
    pods = core.list_namespaced_pod(namespace, label_selector="llmos.dev/model-deployment=chat").items
    assert len(pods) == 2
    for pod in pods:
        assert core.read_node(pod.spec.node_name).metadata.labels["nvidia.com/gpu.product"] == H100

    status = objects.get("modeldeployments", "chat")["status"]
    assert status["readyReplicas"] == 2 and status["observedGeneration"] == 1
    assert status["endpoint"].startswith(f"http://chat.{namespace}.svc:8000")
    # Ready for the first time: the status says so; Events are for what a person acts on.
    reasons = {e.reason for e in _events(core, namespace, "chat")}
    assert "Serving" not in reasons, reasons

    # One replica needs no PDB ("at most one evicted" would allow evicting it): scaling down removes it.
    objects.patch("modeldeployments", "chat", {"spec": {"replicas": 1}})
    policy = client.PolicyV1Api(cluster.api)
    wait_for(lambda: not any(p.metadata.name == "chat" for p in policy.list_namespaced_pod_disruption_budget(
        namespace).items), message="the PDB of a deployment scaled down to one replica removed")


def test_deleting_a_model_deployment_removes_its_children(objects, namespace, cluster):
    objects.tenant()
    objects.model()
    objects.deployment("gone")
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    wait_for(lambda: deployment_exists(apps, namespace, "gone"), message="the child Deployment")
    objects.delete("modeldeployments", "gone")

    def all_gone():
        left = []
        if deployment_exists(apps, namespace, "gone"):
            left.append("Deployment")
        if any(s.metadata.name == "gone" for s in core.list_namespaced_service(namespace).items):
            left.append("Service")
        pdbs = client.PolicyV1Api(cluster.api).list_namespaced_pod_disruption_budget(namespace).items
        if any(p.metadata.name == "gone" for p in pdbs):
            left.append("PodDisruptionBudget")
        return not left

    wait_for(all_gone, timeout=60, message="Deployment, Service and PDB garbage-collected")


def test_queued_deployment_is_admitted_within_seconds_of_anothers_deletion(objects, namespace, cluster):
    objects.tenant(gpus={"h100": 4})
    objects.model()
    objects.deployment("first", count=4)
    objects.wait_condition("modeldeployments", "first", "QuotaAdmitted", "True")
    objects.deployment("second", count=4)
    waiting = objects.wait_condition("modeldeployments", "second", "QuotaAdmitted", "False", "QuotaExceeded")
    assert "h100" in waiting["message"] and "4" in waiting["message"]
    assert objects.get("modeldeployments", "second")["status"]["queuePosition"] == 1
    apps = client.AppsV1Api(cluster.api)
    assert not deployment_exists(apps, namespace, "second")  # not admitted → no pods

    objects.delete("modeldeployments", "first")
    started = time.monotonic()
    objects.wait_condition("modeldeployments", "second", "QuotaAdmitted", "True", timeout=10)
    assert time.monotonic() - started < 10
    wait_for(lambda: deployment_exists(apps, namespace, "second"), message="the admitted one's Deployment")
    assert "queuePosition" not in objects.get("modeldeployments", "second")["status"]


def test_a_terminating_pod_keeps_its_gpus_reserved_until_it_is_gone(objects, namespace, cluster):
    """A deleted deployment's pod that is still terminating (a finalizer holds it here, as a long drain would) still
    has its GPUs: they stay in the ledger (a #pod entry) and in the namespace's ResourceQuota, the queued deployment
    waits, and it is admitted within seconds of the pod being gone."""
    objects.tenant(gpus={"h100": 4})
    objects.model()
    objects.deployment("first", count=4)
    objects.wait_condition("modeldeployments", "first", "QuotaAdmitted", "True")
    core = client.CoreV1Api(cluster.api)
    pods = wait_for(lambda: core.list_namespaced_pod(namespace, label_selector="llmos.dev/model-deployment=first")
                    .items, message="first's pod")
    pod = pods[0].metadata.name
    core.patch_namespaced_pod(pod, namespace, {"metadata": {"finalizers": ["llmos.dev/test-hold"]}})
    objects.deployment("second", count=4)
    objects.wait_condition("modeldeployments", "second", "QuotaAdmitted", "False", "QuotaExceeded")

    objects.delete("modeldeployments", "first")
    wait_for(lambda: core.read_namespaced_pod(pod, namespace).metadata.deletion_timestamp is not None,
             message="the pod terminating")

    def reservations() -> dict:
        return (objects.get("tenants", namespace).get("status") or {}).get("reservations") or {}

    wait_for(lambda: f"{namespace}/first" not in reservations(), message="first's own reservation freed")
    time.sleep(3)  # admission passes run meanwhile (the deletion, the pod's updates): second still waits
    held = reservations()
    # Its deployment is gone: the pod's GPUs are counted by the pod, with the class of the node it runs on.
    assert list(held) == [f"{namespace}/{pod}#pod"], held
    assert {k: v for k, v in held[f"{namespace}/{pod}#pod"].items() if k != "uid"} == {
        "class": "h100", "gpus": 4, "kind": "pod"}
    assert objects.condition("modeldeployments", "second", "QuotaAdmitted")["status"] == "False"
    quota = core.read_namespaced_resource_quota("llmos-tenant-quota", namespace)
    assert quota.spec.hard.get("requests.nvidia.com/gpu") == "4", quota.spec.hard

    core.patch_namespaced_pod(pod, namespace, {"metadata": {"finalizers": None}})
    started = time.monotonic()
    objects.wait_condition("modeldeployments", "second", "QuotaAdmitted", "True", timeout=15)
    assert time.monotonic() - started < 15
    assert f"{namespace}/{pod}#pod" not in objects.get("tenants", namespace)["status"]["reservations"]


def test_scale_up_is_admitted_for_the_difference_and_in_part_when_it_does_not_fit(objects, namespace):
    objects.tenant(gpus={"h100": 6})
    objects.model()
    objects.deployment("grow", replicas=2, count=2)
    objects.wait_condition("modeldeployments", "grow", "QuotaAdmitted", "True")
    objects.patch("modeldeployments", "grow", {"spec": {"replicas": 4}})  # 8 GPUs > 6: the difference does not fit
    cond = objects.wait_condition("modeldeployments", "grow", "QuotaAdmitted", "False", "QuotaExceeded")
    assert "3 of 4 replicas granted" in cond["message"] and "h100" in cond["message"]
    # what fits of the difference is granted (one more replica of 2 GPUs), the rest waits in the queue
    wait_for(lambda: objects.get("tenants", namespace)["status"]["usage"]["gpus"]["h100"] == 6,
             message="usage 6: 3 replicas of 2 GPUs")
    limited = objects.wait_condition("modeldeployments", "grow", "ScalingLimited", "True", "QuotaExceeded")
    assert limited["message"].startswith("h100 6/6: 3 of 4 replicas granted")
    objects.patch("modeldeployments", "grow", {"spec": {"replicas": 3}})  # 6 GPUs: all of it fits
    objects.wait_condition("modeldeployments", "grow", "QuotaAdmitted", "True")
    objects.wait_condition("modeldeployments", "grow", "ScalingLimited", "False")
    assert objects.get("tenants", namespace)["status"]["usage"]["gpus"]["h100"] == 6


@pytest.mark.parametrize("case", ["unknown-class", "no-tenant", "cordoned", "missing-model"])
def test_each_refusal_has_its_own_reason(objects, namespace, case):
    if case == "no-tenant":
        objects.model()
        objects.deployment("d")
        objects.wait_condition("modeldeployments", "d", "QuotaAdmitted", "False", "NoTenant")
        return
    objects.tenant(cordoned=(case == "cordoned"))
    if case == "missing-model":
        objects.deployment("d", model="does-not-exist")
        cond = objects.wait_condition("modeldeployments", "d", "Ready", "False", "ModelNotFound")
        assert "does-not-exist" in cond["message"]
        return
    objects.model()
    if case == "unknown-class":
        objects.deployment("d", gpu_class="tpu")
        cond = objects.wait_condition("modeldeployments", "d", "QuotaAdmitted", "False", "UnknownGPUClass")
        assert "tpu" in cond["message"]
    else:
        objects.deployment("d")
        objects.wait_condition("modeldeployments", "d", "QuotaAdmitted", "False", "TenantCordoned")


def test_no_node_of_the_class_could_ever_fit_the_pod(objects, namespace):
    objects.tenant(gpus={"l4": 16})
    objects.model()
    objects.deployment("huge", gpu_class="l4", count=8)  # L4 nodes have 4 GPUs each
    cond = objects.wait_condition("modeldeployments", "huge", "Ready", "False", "Unschedulable", timeout=60)
    assert "8" in cond["message"] and "4" in cond["message"]


def test_a_hand_edited_child_is_put_back(objects, namespace, cluster):
    objects.tenant()
    objects.model()
    objects.deployment("drift")
    apps = client.AppsV1Api(cluster.api)
    wait_for(lambda: deployment_exists(apps, namespace, "drift"), message="the child Deployment")
    # The pod template is guarded at the door: the chart's admission policy lets only the operator change it.
    with pytest.raises(client.ApiException) as refused:
        apps.patch_namespaced_deployment("drift", namespace, {"spec": {"template": {"spec": {"containers": [
            {"name": "runtime", "image": "attacker.example/evil:1"}]}}}})
    # Two policies refuse it (GPUs only through admission; llmos Deployments are the operator's); either may answer.
    assert refused.value.status == 403
    assert "use a ModelDeployment" in refused.value.body or "only the llmos operator" in refused.value.body
    # What no policy guards is put back on the next event: the Service's selector, edited to steal traffic.
    core = client.CoreV1Api(cluster.api)
    wait_for(lambda: core.list_namespaced_service(namespace).items, message="the child Service")
    rendered = core.read_namespaced_service("drift", namespace).spec.selector
    core.patch_namespaced_service("drift", namespace, {"spec": {"selector": {"app": "elsewhere"}}})
    wait_for(lambda: core.read_namespaced_service("drift", namespace).spec.selector == rendered, timeout=30,
             message="the selector put back")


def test_invalid_specs_are_rejected_by_the_api_server_with_the_field_path(objects, namespace):
    cases = [
        ({"model": "m", "gpu": {"class": "h100", "count": 0}}, "spec.gpu.count"),
        ({"model": "m", "gpu": {"class": "h100", "count": 4}, "engine": {"tensorParallelSize": 3}},
         "spec.engine.tensorParallelSize"),
        ({"model": "m", "gpu": {"class": "h100", "count": 1}, "rollout": {"maxSurge": "lots"}},
         "spec.rollout.maxSurge"),
        ({"model": "m", "gpu": {"class": "h100", "count": 1}, "rollout": {"maxSurge": 0, "maxUnavailable": 0}},
         "spec.rollout.maxUnavailable"),
    ]
    for spec, field in cases:
        body = {"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "bad"},
                "spec": spec}
        with pytest.raises(client.ApiException) as rejected:
            objects.custom.create_namespaced_custom_object("llmos.dev", "v1alpha1", namespace, "modeldeployments",
                                                           body)
        assert rejected.value.status == 422, rejected.value.body
        causes = json.loads(rejected.value.body)["details"]["causes"]
        assert any(c.get("field", "").startswith(field) for c in causes), (field, causes)


def test_metrics_report_reconciles_and_gpus_per_tenant(objects, namespace, operator):
    objects.tenant(gpus={"h100": 8})
    objects.model()
    objects.deployment("m1", count=2)
    objects.wait_condition("modeldeployments", "m1", "QuotaAdmitted", "True")

    def reported():
        text = operator.metrics()
        return (f'llmos_tenant_gpus_used{{gpu_class="h100",tenant="{namespace}"}} 2.0' in text
                and f'llmos_tenant_gpus_allowed{{gpu_class="h100",tenant="{namespace}"}} 8.0' in text
                and 'llmos_reconcile_total{kind="ModelDeployment",result="ok"}' in text)

    wait_for(reported, timeout=20, message="GPU gauges and reconcile counters on /metrics")


def test_concurrent_creations_never_exceed_the_quota_across_an_operator_restart(objects, namespace, operator,
                                                                                cluster):
    """30 deployments of 1–2 GPUs against 8 H100s, created at once from 6 threads; the operator is SIGKILLed and
    restarted in the middle. Exactly the ones that fit in creation order are admitted, never more than 8 GPUs."""
    objects.tenant(gpus={"h100": 8})
    objects.model()
    sizes = {f"d{i:02d}": 1 + (i % 2) for i in range(30)}
    names = sorted(sizes)

    def create(chunk):
        for name in chunk:
            objects.deployment(name, count=sizes[name])

    threads = [threading.Thread(target=create, args=(names[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    operator.kill()
    for t in threads:
        t.join()
    operator.start()

    def settled():
        """Every deployment has a decision and the statuses agree with the ledger (statuses are written after the
        ledger, one deployment at a time, so a look in between sees the two disagree)."""
        decided = {}
        for name in names:
            c = objects.condition("modeldeployments", name, "QuotaAdmitted")
            if not c or c["status"] == "Unknown":
                return None
            decided[name] = c["status"] == "True"
        reservations = objects.get("tenants", namespace).get("status", {}).get("reservations") or {}
        if {k.split("/", 1)[1] for k in reservations} != {n for n, ok in decided.items() if ok}:
            return None
        return decided

    decided = wait_for(settled, timeout=90, message="an admission decision for all 30")
    admitted = [n for n, ok in decided.items() if ok]
    used = sum(sizes[n] for n in admitted)
    assert used <= 8, (used, admitted)
    tenant = objects.get("tenants", namespace)
    assert tenant["status"]["usage"]["gpus"]["h100"] == used
    assert len(tenant["status"]["reservations"]) == len(admitted)
    head = [n for n in names if not decided[n]
            and objects.get("modeldeployments", n)["status"].get("queuePosition") == 1]
    assert head and used + sizes[head[0]] > 8, "the head of the queue would have fit: admission stopped early"
    # Pods exist only for admitted deployments, and never ask for more GPUs than the quota.
    core = client.CoreV1Api(cluster.api)
    pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/managed-by=llmos").items
    owners = {p.metadata.labels["llmos.dev/model-deployment"] for p in pods}
    assert owners <= set(admitted)
    assert sum(int(p.spec.containers[0].resources.requests["nvidia.com/gpu"]) for p in pods) <= 8
    # Free everything: the queue drains into the freed quota.
    for name in admitted:
        objects.delete("modeldeployments", name)
    wait_for(lambda: sum(1 for n in names if n not in admitted and _admitted(objects, n)) > 0, timeout=20,
             message="queued deployments admitted after the others were deleted")


def test_a_runtime_that_refuses_its_weights_turns_degraded_naming_the_file(objects, namespace, cluster):
    """KWOK runs no containers, so this test writes the pod status a kubelet writes when the runtime container exits
    with its one-line termination message (the runtime's own behaviour is tested on a real engine in tests/engine)."""
    objects.tenant()
    objects.model()
    objects.deployment("d")
    objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
    core = client.CoreV1Api(cluster.api)
    pod = core.list_namespaced_pod(namespace, label_selector="llmos.dev/model-deployment=d").items[0]
    message = "verification failed: hash mismatch: model-00001-of-00002.safetensors"
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {"containerStatuses": [{
        "name": "runtime", "image": pod.spec.containers[0].image, "imageID": "", "ready": False, "restartCount": 1,
        "started": False, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "message": message}},
    }]}})
    cond = objects.wait_condition("modeldeployments", "d", "Degraded", "True", "RuntimeFailed", timeout=30)
    assert "model-00001-of-00002.safetensors" in cond["message"]


def test_adapter_reports_of_the_runtimes_are_summed_up_in_status(objects, namespace, cluster):
    """Each runtime annotates its own pod with the adapters it loaded (tests/engine runs a real runtime doing it);
    here the annotations are written as two runtimes would, on KWOK's pods."""
    objects.tenant()
    objects.model(adapters=[{"name": "sql", "source": {"uri": "hf://org/sql-lora"}},
                            {"name": "legal", "source": {"uri": "hf://org/legal-lora"}}])
    objects.deployment("d", replicas=2, adapters=["sql", "legal"])
    objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
    core = client.CoreV1Api(cluster.api)
    pods = core.list_namespaced_pod(namespace, label_selector="llmos.dev/model-deployment=d").items
    reports = [{"loaded": ["sql", "legal"], "failed": {}},
               {"loaded": ["sql"], "failed": {"legal": "verification failed: hash mismatch: adapter_model.safetensors"}}]
    for pod, report in zip(pods, reports, strict=True):
        core.patch_namespaced_pod(pod.metadata.name, namespace,
                                  {"metadata": {"annotations": {"llmos.dev/adapters": json.dumps(report)}}})

    def summed():
        adapters = {a["name"]: a for a in objects.get("modeldeployments", "d")["status"].get("adapters", [])}
        if adapters.get("legal", {}).get("failedReplicas") == 1:
            return adapters
        return None

    adapters = wait_for(summed, timeout=30, message="adapter counts in status")
    assert adapters["sql"]["loadedReplicas"] == 2 and adapters["sql"]["failedReplicas"] == 0
    assert adapters["legal"]["loadedReplicas"] == 1
    assert "adapter_model.safetensors" in adapters["legal"]["message"]
    sa = core.read_namespaced_service_account("llmos-runtime", namespace)
    assert sa.metadata.name == "llmos-runtime"


def test_pending_pods_report_the_schedulers_reason(objects, namespace):
    """5 replicas × 8 H100 against a cluster of 4 nodes × 8 H100: at most 4 pods fit, the rest stay Pending, and the
    scheduler's own words reach the condition."""
    objects.tenant(gpus={"h100": 40})
    objects.model()
    objects.deployment("wide", replicas=5, count=8)
    cond = objects.wait_condition("modeldeployments", "wide", "Ready", "False", "PodsPending", timeout=60)
    assert "nvidia.com/gpu" in cond["message"], cond
    objects.delete("modeldeployments", "wide")  # give the H100 nodes back at once for whatever runs next
