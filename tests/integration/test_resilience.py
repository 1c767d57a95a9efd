"""The operator under adverse conditions (issue 13): children the API server refuses, watches that break."""

from __future__ import annotations

from kubernetes import client

from tests.integration.conftest import deployment_exists
from tests.support.waiting import wait_for


def test_a_child_the_api_server_refuses_shows_in_status_and_recovers(objects, namespace, cluster):
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)
    core.create_namespaced_resource_quota(namespace, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-services"), spec=client.V1ResourceQuotaSpec(hard={"services": "0"})))
    wait_for(lambda: (core.read_namespaced_resource_quota("no-services", namespace).status.hard or {}),
             message="the quota controller has seen the quota")
    objects.tenant()
    objects.model()
    objects.deployment("d")
    cond = objects.wait_condition("modeldeployments", "d", "Degraded", "True", "ChildWriteFailed")
    assert "Service d" in cond["message"] and "exceeded quota" in cond["message"]
    assert "tries again in" in cond["message"]
    assert objects.condition("modeldeployments", "d", "Ready")["status"] == "False"

    core.delete_namespaced_resource_quota("no-services", namespace)
    objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=90)
    assert objects.condition("modeldeployments", "d", "Degraded")["status"] == "False"
    assert deployment_exists(apps, namespace, "d")


def test_a_repeated_event_is_one_event_with_a_count(cluster, namespace):
    from llmos_operator.kube.client import Kube
    from llmos_operator.kube.events import EventRecorder

    event = EventRecorder(Kube(cluster.api))
    cm = client.CoreV1Api(cluster.api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="subject")))
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "subject", "namespace": namespace, "uid": cm.metadata.uid}}
    for _ in range(3):
        event(obj, "Warning", "Flapping", "the same thing again")
    event(obj, "Normal", "Settled", "something else")
    events = client.CoreV1Api(cluster.api).list_namespaced_event(
        namespace, field_selector="involvedObject.name=subject").items
    assert sorted((e.reason, e.count) for e in events) == [("Flapping", 3), ("Settled", 1)]
