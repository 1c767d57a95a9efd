"""The small pure parts of the idle operator (issue 13): what a metadata-only informer keeps, what tells that a
child's spec was changed by someone else, and the kind a request is counted under."""

from __future__ import annotations

from llmos_operator.handlers.controller import _spec_version
from llmos_operator.handlers.kube import _kind_of
from llmos_operator.handlers.store import metadata_summary


def test_metadata_summary_keeps_identity_and_version_only():
    obj = {"kind": "ConfigMap", "metadata": {"name": "m-sig", "namespace": "t", "resourceVersion": "7",
                                            "managedFields": [{"manager": "kubectl"}], "labels": {"a": "b"}},
           "data": {"model.sig": "x" * 1000}}
    assert metadata_summary(obj) == {"kind": "ConfigMap",
                                     "metadata": {"name": "m-sig", "namespace": "t", "resourceVersion": "7"}}


def test_spec_version_ignores_status_writes_where_the_kind_has_a_generation():
    deployment = {"metadata": {"generation": 3, "resourceVersion": "100"}}
    after_status_write = {"metadata": {"generation": 3, "resourceVersion": "101"}}
    assert _spec_version(deployment) == _spec_version(after_status_write)
    assert _spec_version({"metadata": {"generation": 4, "resourceVersion": "102"}}) != _spec_version(deployment)
    service = {"metadata": {"resourceVersion": "5"}}  # no generation: any change counts
    assert _spec_version(service) != _spec_version({"metadata": {"resourceVersion": "6"}})


def test_requests_are_counted_by_kind():
    assert _kind_of("/api/v1/namespaces/t/configmaps/m-sig") == "ConfigMap"
    assert _kind_of("/apis/llmos.dev/v1alpha1/namespaces/t/modeldeployments/d/status") == "ModelDeployment"
    assert _kind_of("/api/v1/namespaces/t") == "Namespace"
    assert _kind_of("/version") == "other"
