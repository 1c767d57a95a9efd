"""The small pure parts of the idle operator (issue 13): what a metadata-only informer keeps, what tells that a
child's spec was changed by someone else, and the kind a request is counted under."""

from __future__ import annotations

from llmos_operator.controller.cache import LLMOS_KINDS, owned_by, spec_version
from llmos_operator.controller.summaries import metadata_summary
from llmos_operator.kube.client import Kube


def test_metadata_summary_keeps_identity_and_version_only():
    obj = {"kind": "ConfigMap", "metadata": {"name": "m-sig", "namespace": "t", "resourceVersion": "7",
                                            "managedFields": [{"manager": "kubectl"}], "labels": {"a": "b"}},
           "data": {"model.sig": "x" * 1000}}
    assert metadata_summary(obj) == {"kind": "ConfigMap",
                                     "metadata": {"name": "m-sig", "namespace": "t", "resourceVersion": "7"}}


def testspec_version_ignores_status_writes_where_the_kind_has_a_generation():
    deployment = {"metadata": {"generation": 3, "resourceVersion": "100"}}
    after_status_write = {"metadata": {"generation": 3, "resourceVersion": "101"}}
    assert spec_version(deployment) == spec_version(after_status_write)
    assert spec_version({"metadata": {"generation": 4, "resourceVersion": "102"}}) != spec_version(deployment)
    service = {"metadata": {"resourceVersion": "5"}}  # no generation: any change counts
    assert spec_version(service) != spec_version({"metadata": {"resourceVersion": "6"}})


def test_requests_are_counted_by_kind():
    assert Kube(None, kinds=LLMOS_KINDS).kind_of("/api/v1/namespaces/t/configmaps/m-sig") == "ConfigMap"
    assert Kube(None, kinds=LLMOS_KINDS).kind_of("/apis/llmos.dev/v1alpha1/namespaces/t/modeldeployments/d/status") == "ModelDeployment"
    assert Kube(None, kinds=LLMOS_KINDS).kind_of("/api/v1/namespaces/t") == "Namespace"
    assert Kube(None, kinds=LLMOS_KINDS).kind_of("/version") == "other"


def _rendered_pod() -> tuple[dict, dict]:
    """A ReplicaSet and a pod as the API server would hold them for a rendered ModelDeployment (a runtime that
    exited 4 once, a trust ConfigMap mounted)."""
    import copy

    from llmos_operator.api import parse_object
    from llmos_operator.config import default_config
    from llmos_operator.render import render_children

    cfg = default_config()
    md = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                       "metadata": {"name": "chat", "namespace": "a1", "uid": "u", "generation": 1},
                       "spec": {"model": "llama", "replicas": 1, "gpu": {"class": "h100", "count": 1}}})
    model = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Model",
                          "metadata": {"name": "llama", "namespace": "a1", "generation": 1},
                          "spec": {"source": {"uri": "hf://a/b"}, "signature": {"policy": "Required"}},
                          "status": {"observedGeneration": 1, "digest": "sha256:" + "0" * 64, "signer": "k"}})
    children = render_children(md, model, cfg.gpu_class("h100"), cfg, bundle=b"b" * 4000, signer_pem=b"pem",
                               tenant_keys={"k": b"pem"})
    deployment = next(c for c in children if c["kind"] == "Deployment")
    template = copy.deepcopy(deployment["spec"]["template"])
    rs = {"kind": "ReplicaSet", "metadata": {"name": "chat-abc", "namespace": "a1", "resourceVersion": "9",
                                             "labels": template["metadata"]["labels"],
                                             "managedFields": [{"manager": "kube-controller-manager"}]},
          "spec": {"replicas": 1, "template": template}, "status": {"replicas": 1, "readyReplicas": 0}}
    pod = {"kind": "Pod", "metadata": {**template["metadata"], "name": "chat-abc-x", "namespace": "a1",
                                       "resourceVersion": "10", "deletionTimestamp": None},
           "spec": {**template["spec"], "nodeName": "gpu-1"},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                      "containerStatuses": [{"name": "runtime", "ready": False, "restartCount": 1,
                                             "image": "ghcr.io/llmos/runtime", "imageID": "sha256:" + "1" * 64,
                                             "state": {"running": {}},
                                             "lastState": {"terminated": {"exitCode": 4, "message": "refused"}}}]}}
    deployment = dict(copy.deepcopy(deployment), status={"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1,
                                                           "observedGeneration": 1})
    deployment["metadata"]["generation"] = 1
    return rs, pod, deployment


def test_pod_and_replica_set_summaries_keep_what_rollouts_and_status_read():
    import json

    from llmos_operator.controller.summaries import SUMMARY, pod_summary, replica_set_summary
    from llmos_operator.core.rollout import (
        pod_ready,
        pod_template_hash,
        rollout_failure,
        template_digest,
        template_hash,
    )

    rs, pod, deployment = _rendered_pod()
    rs_s, pod_s = replica_set_summary(rs), pod_summary(pod)
    assert rs_s[SUMMARY] and pod_s[SUMMARY]
    assert template_hash(rs_s) == template_hash(rs) and template_digest(rs_s) == template_digest(rs)
    assert pod_template_hash(pod_s) == pod_template_hash(pod) and pod_ready(pod_s) == pod_ready(pod)
    target = pod_template_hash(pod)
    assert rollout_failure(deployment, [pod_s], target, 600) == rollout_failure(deployment, [pod], target, 600)
    assert rollout_failure(deployment, [pod_s], target, 600).endswith("refused")
    volumes = [v for v in pod["spec"]["volumes"] if v.get("configMap")]
    assert volumes and [v["configMap"]["name"] for v in pod_s["spec"]["volumes"]] == \
        [v["configMap"]["name"] for v in volumes]
    assert rs_s["spec"]["template"]["spec"]["volumes"] == pod_s["spec"]["volumes"]
    assert "containers" not in rs_s["spec"]["template"]["spec"] and "managedFields" not in rs_s["metadata"]
    assert len(json.dumps(pod_s)) < len(json.dumps(pod)) / 2 and len(json.dumps(rs_s)) < len(json.dumps(rs)) / 2


def test_a_deployment_summary_keeps_what_the_controller_reads():
    import json

    from llmos_operator.controller.summaries import deployment_summary, pod_summary
    from llmos_operator.core.rollout import deployment_complete, template_digest, template_hash
    from llmos_operator.core.workloads import pod_gpus

    _, pod, deployment = _rendered_pod()
    summary = deployment_summary(deployment)
    assert pod_gpus(summary) == pod_gpus(deployment) == 1
    assert template_hash(summary) == template_hash(deployment) and template_digest(summary) == template_digest(deployment)
    pods = [pod_summary(dict(pod, status={"conditions": [{"type": "Ready", "status": "True"}]}))]
    assert deployment_complete(summary, pods) == deployment_complete(deployment, pods) is True
    assert summary["spec"]["strategy"] == deployment["spec"]["strategy"]
    assert summary["spec"]["template"]["spec"]["volumes"] == pod_summary(pod)["spec"]["volumes"]
    assert len(json.dumps(summary)) < len(json.dumps(deployment)) / 2


def test_a_child_summary_keeps_what_tells_a_changed_or_foreign_child():
    from llmos_operator.controller.summaries import child_summary

    service = {"kind": "Service", "metadata": {"name": "chat", "namespace": "a1", "resourceVersion": "12",
                                              "labels": {"llmos.dev/model-deployment": "chat"},
                                              "managedFields": [{"manager": "llmos"}]},
               "spec": {"ports": [{"port": 8000}], "selector": {"app": "chat"}}, "status": {}}
    summary = child_summary(service)
    assert summary["kind"] == "Service" and "spec" not in summary and "managedFields" not in summary["metadata"]
    assert spec_version(summary) == spec_version(service) and owned_by("chat")(summary)
