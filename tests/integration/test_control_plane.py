"""Smoke tests of the local control plane: each would fail against a mock API server, because it needs the real
scheduler, quota admission and quota controller, garbage collector, or the API server's schema and CEL validation."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.support.waiting import wait_for

H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = client.V1Toleration(key="nvidia.com/gpu", operator="Equal", value="present", effect="NoSchedule")


def _gpu_deployment(name: str, gpus: int, replicas: int = 1) -> client.V1Deployment:
    affinity = client.V1Affinity(node_affinity=client.V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=client.V1NodeSelector(node_selector_terms=[
            client.V1NodeSelectorTerm(match_expressions=[
                client.V1NodeSelectorRequirement(key="nvidia.com/gpu.product", operator="In", values=[H100]),
            ]),
        ]),
    ))
    container = client.V1Container(
        name="engine", image="example.invalid/engine:1",
        resources=client.V1ResourceRequirements(requests={"nvidia.com/gpu": str(gpus)},
                                                limits={"nvidia.com/gpu": str(gpus)}),
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(containers=[container], tolerations=[GPU_TOLERATION], affinity=affinity),
            ),
        ),
    )


def _pods(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def test_gpu_pods_land_on_h100_nodes_and_become_ready(cluster, namespace):
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    apps.create_namespaced_deployment(namespace, _gpu_deployment("h100-job", gpus=2, replicas=2))

    pods = wait_for(lambda: [p for p in _pods(core, namespace, "h100-job") if _ready(p)] if len(
        [p for p in _pods(core, namespace, "h100-job") if _ready(p)]) == 2 else None,
        timeout=60, message="2 Ready pods")
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["nvidia.com/gpu.product"] == H100
        assert pod.status.phase == "Running"


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(cluster, namespace):
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    apps.create_namespaced_deployment(namespace, _gpu_deployment("too-big", gpus=9))

    pod = wait_for(lambda: next(iter(_pods(core, namespace, "too-big")), None), message="the pod")

    def failed_scheduling():
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod.metadata.name}")
        return [e for e in events.items if e.reason == "FailedScheduling"]

    events = wait_for(failed_scheduling, timeout=60, message="a FailedScheduling event")
    assert "nvidia.com/gpu" in events[0].message
    assert core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Pending"


def test_resource_quota_refuses_the_gpu_over_it(cluster, namespace):
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_resource_quota(namespace, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="gpus"),
        spec=client.V1ResourceQuotaSpec(hard={"requests.nvidia.com/gpu": "4"}),
    ))
    # Quota admission refuses pods until the quota controller has computed status.used once.
    wait_for(lambda: (core.read_namespaced_resource_quota("gpus", namespace).status.used or {}).get(
        "requests.nvidia.com/gpu") == "0", message="quota status initialised")

    def gpu_pod(name: str, gpus: int) -> client.V1Pod:
        return client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(tolerations=[GPU_TOLERATION], containers=[client.V1Container(
                name="engine", image="example.invalid/engine:1",
                resources=client.V1ResourceRequirements(requests={"nvidia.com/gpu": str(gpus)},
                                                        limits={"nvidia.com/gpu": str(gpus)}))]),
        )

    core.create_namespaced_pod(namespace, gpu_pod("four", 4))
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, gpu_pod("fifth", 1))
    assert refused.value.status == 403
    assert "exceeded quota" in refused.value.body and "requests.nvidia.com/gpu" in refused.value.body

    wait_for(lambda: core.read_namespaced_resource_quota("gpus", namespace).status.used.get(
        "requests.nvidia.com/gpu") == "4", message="status.used of 4 GPUs from the quota controller")


def test_deleting_the_owner_garbage_collects_the_owned_configmap(cluster, namespace):
    core = client.CoreV1Api(cluster.api)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="owned",
        owner_references=[client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner",
                                                  uid=owner.metadata.uid)],
    )))
    core.delete_namespaced_config_map("owner", namespace)

    def gone():
        try:
            core.read_namespaced_config_map("owned", namespace)
            return False
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=60, message="the garbage collector to delete the owned ConfigMap")


WIDGETS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.llmos.dev"},
    "spec": {
        "group": "smoke.llmos.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "properties": {"gpus": {"type": "integer", "minimum": 1}, "shards": {"type": "integer"}},
                    "x-kubernetes-validations": [{
                        "rule": "!has(self.shards) || self.gpus % self.shards == 0",
                        "message": "must divide spec.gpus", "fieldPath": ".shards",
                    }],
                }},
            }},
        }],
    },
}


def test_crd_schema_and_cel_rule_reject_bad_objects_with_the_field_path(cluster, namespace):
    ext = client.ApiextensionsV1Api(cluster.api)
    try:
        ext.create_custom_resource_definition(WIDGETS_CRD)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    wait_for(lambda: any(c.type == "Established" and c.status == "True" for c in (
        ext.read_custom_resource_definition("widgets.smoke.llmos.dev").status.conditions or [])),
        message="CRD established")
    custom = client.CustomObjectsApi(cluster.api)

    def create(spec):
        body = {"apiVersion": "smoke.llmos.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
        return custom.create_namespaced_custom_object("smoke.llmos.dev", "v1", namespace, "widgets", body)

    wait_for(lambda: _creatable(create, {"gpus": 4, "shards": 2}), message="a valid Widget to be accepted")

    for spec, field in (({"gpus": 0}, "spec.gpus"), ({"gpus": 4, "shards": 3}, "spec.shards")):
        with pytest.raises(client.ApiException) as rejected:
            create(spec)
        assert rejected.value.status == 422
        causes = json.loads(rejected.value.body)["details"]["causes"]
        assert field in [c["field"] for c in causes], causes


def _creatable(create, spec) -> bool:
    try:
        create(spec)
        return True
    except client.ApiException as exc:
        if exc.status == 404:  # discovery of a just-established CRD can lag by a moment
            return False
        raise
