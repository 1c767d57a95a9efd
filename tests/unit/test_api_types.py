"""The API types: parsing raw objects, field paths in errors, the Python side of the CEL rules."""

import pytest

from llmos_operator.api import InvalidObject, Model, ModelDeployment, Tenant, parse_as, parse_object
from llmos_operator.api.types import ModelDeploymentSpec, RolloutSpec

pytestmark = pytest.mark.unit


def mdep(spec: dict, name: str = "chat") -> dict:
    return {
        "apiVersion": "llmos.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "team-a", "uid": "u1", "generation": 3},
        "spec": spec,
    }


def errors_of(raw: dict) -> list[str]:
    with pytest.raises(InvalidObject) as info:
        parse_object(raw)
    return [e.path for e in info.value.errors]


def test_parses_camel_case_with_defaults():
    obj = parse_object(mdep({"model": "llama", "gpu": {"class": "h100", "count": 4}}))
    assert isinstance(obj, ModelDeployment)
    assert obj.spec.gpu.class_ == "h100"
    assert obj.spec.replicas == 1
    assert obj.spec.rollout.max_surge == "auto" and obj.spec.rollout.max_unavailable == 0
    assert obj.tensor_parallel_size == 4  # defaults to gpu.count
    assert obj.gpus_demanded == 4
    assert obj.key == "team-a/chat"
    assert obj.metadata.generation == 3


def test_round_trips_to_camel_case_json():
    raw = mdep({"model": "llama", "replicas": 2, "gpu": {"class": "l4", "count": 2},
                "engine": {"tensorParallelSize": 2, "maxModelLen": 4096, "gpuMemoryUtilization": 0.85},
                "rollout": {"maxSurge": 2}})
    out = parse_object(raw).to_dict()
    assert out["spec"]["gpu"] == {"class": "l4", "count": 2}
    assert out["spec"]["engine"]["tensorParallelSize"] == 2
    assert out["spec"]["engine"]["gpuMemoryUtilization"] == 0.85
    assert out["spec"]["rollout"]["maxSurge"] == 2
    assert "queuePosition" not in out["status"]


def test_snake_case_names_are_accepted_in_python():
    spec = ModelDeploymentSpec(model="m", gpu={"class": "h100", "count": 2}, engine={"tensor_parallel_size": 2})
    assert spec.engine.tensor_parallel_size == 2


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"model": "m", "gpu": {"class": "h100", "count": 0}}, "spec.gpu.count"),
        ({"model": "m", "gpu": {"class": "h100"}}, "spec.gpu.count"),
        ({"model": "m", "gpu": {"class": "H100!", "count": 1}}, "spec.gpu.class"),
        ({"model": "m", "gpu": {"class": "h100", "count": 4}, "engine": {"tensorParallelSize": 3}},
         "spec.engine.tensorParallelSize"),
        ({"model": "m", "gpu": {"class": "h100", "count": 1}, "engine": {"gpuMemoryUtilization": 0}},
         "spec.engine.gpuMemoryUtilization"),
        ({"model": "m", "gpu": {"class": "h100", "count": 1}, "rollout": {"maxSurge": "fast"}},
         "spec.rollout.maxSurge"),
        ({"model": "m", "gpu": {"class": "h100", "count": 1}, "rollout": {"maxSurge": 0}},
         "spec.rollout.maxUnavailable"),
        ({"model": "m", "gpu": {"class": "h100", "count": 1}, "replicas": -1}, "spec.replicas"),
        ({"gpu": {"class": "h100", "count": 1}}, "spec.model"),
    ],
)
def test_errors_name_the_field_path(spec, path):
    assert path in errors_of(mdep(spec))


def test_error_message_reads_like_the_api_server():
    with pytest.raises(InvalidObject) as info:
        parse_object(mdep({"model": "m", "gpu": {"class": "h100", "count": 4}, "engine": {"tensorParallelSize": 3}}))
    assert str(info.value).startswith("ModelDeployment 'chat' is invalid: spec.engine.tensorParallelSize: ")
    assert "must divide gpu.count" in str(info.value)


def test_name_must_be_a_dns_1035_label():
    assert errors_of(mdep({"model": "m", "gpu": {"class": "h100", "count": 1}}, name="1chat")) == ["metadata.name"]
    assert errors_of(mdep({"model": "m", "gpu": {"class": "h100", "count": 1}}, name="a" * 64)) == ["metadata.name"]


def test_rollout_rules():
    assert RolloutSpec(max_surge=0, max_unavailable=1).max_surge == 0
    assert RolloutSpec(max_surge="auto").max_surge == "auto"
    with pytest.raises(ValueError):
        RolloutSpec(max_surge=-1)
    with pytest.raises(ValueError):
        RolloutSpec(max_surge="25%")  # only 'auto' or an integer


def model(spec: dict) -> dict:
    return {"apiVersion": "llmos.dev/v1alpha1", "kind": "Model", "metadata": {"name": "llama", "namespace": "a"},
            "spec": spec}


def test_model_defaults_and_served_name():
    m = parse_object(model({"source": {"uri": "hf://meta/llama"}}))
    assert isinstance(m, Model)
    assert m.spec.signature.policy == "Required"
    assert m.spec.quantization == "none"
    assert m.served_name == "llama"
    m2 = parse_object(model({"source": {"uri": "hf://meta/llama"}, "servedName": "chat"}))
    assert m2.served_name == "chat"


@pytest.mark.parametrize("uri", ["file:///models/x", "pvc://models/llama/7b", "pvc://models", "s3://b/k", "gs://b/k",
                                 "hf://org/name", "hf://gpt2"])
def test_source_uri_schemes_accepted(uri):
    parse_object(model({"source": {"uri": uri}}))


@pytest.mark.parametrize("uri", ["http://x/y", "models/x", "pvc://Bad_Claim/x", "hf://a/b/c", "s3://",
                                 "oci://ghcr.io/x/y:1"])  # oci: the runtime cannot fetch it yet
def test_source_uri_refused_with_path(uri):
    assert errors_of(model({"source": {"uri": uri}})) == ["spec.source.uri"]


def test_signature_bundle_ref_and_uri_are_exclusive():
    paths = errors_of(model({"source": {"uri": "hf://a/b"},
                             "signature": {"uri": "s3://b/sig", "bundleRef": {"name": "sigs"}}}))
    assert paths == ["spec.signature"]


def test_adapter_errors_carry_the_list_index():
    paths = errors_of(model({"source": {"uri": "hf://a/b"},
                             "adapters": [{"name": "ok", "source": {"uri": "hf://a/c"}},
                                          {"name": "bad", "source": {"uri": "ftp://x"}}]}))
    assert paths == ["spec.adapters[1].source.uri"]


def test_tenant_parses_and_checks_trusted_keys():
    raw = {"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "team-a"},
           "spec": {"namespaces": ["a1"], "quota": {"gpus": {"h100": 8}, "maxModelDeployments": 3}, "priority": 5,
                    "trustedKeys": [{"name": "k", "publicKey": "PEM"}]},
           "status": {"reservations": {"a1/x": {"class": "h100", "gpus": 2, "uid": "u"}}}}
    t = parse_as(Tenant, raw)
    assert t.spec.quota.gpus == {"h100": 8} and t.spec.priority == 5
    assert t.status.reservations["a1/x"].class_ == "h100"
    bad = {**raw, "spec": {"trustedKeys": [{"name": "k"}]}}
    assert errors_of(bad) == ["spec.trustedKeys[0]"]
    neg = {**raw, "spec": {"quota": {"gpus": {"h100": -1}}}}
    assert errors_of(neg) == ["spec.quota.gpus.h100"]


def test_unknown_fields_are_ignored_and_unknown_kind_refused():
    raw = mdep({"model": "m", "gpu": {"class": "h100", "count": 1}, "future": True})
    raw["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    assert parse_object(raw).spec.model == "m"
    with pytest.raises(InvalidObject):
        parse_object({"kind": "Pod", "metadata": {"name": "x"}})


@pytest.mark.parametrize("where", ["model", "adapter"])
def test_file_signature_uri_is_refused_with_its_field(where):
    """The operator never reads a local path a tenant named (it once handed out its own token that way)."""
    sig = {"uri": "file:///var/run/secrets/kubernetes.io/serviceaccount/token"}
    if where == "model":
        raw, path = model({"source": {"uri": "hf://org/m"}, "signature": sig}), "spec.signature.uri"
    else:
        raw = model({"source": {"uri": "hf://org/m"},
                     "adapters": [{"name": "a", "source": {"uri": "hf://org/a"}, "signature": sig}]})
        path = "spec.adapters[0].signature.uri"
    assert errors_of(raw) == [path]


def test_tenant_may_not_claim_cluster_namespaces():
    def tenant(namespaces):
        return {"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"},
                "spec": {"namespaces": namespaces}}

    assert errors_of(tenant(["team-a", "kube-system"])) == ["spec.namespaces"]
    assert errors_of(tenant(["default"])) == ["spec.namespaces"]
    parsed = parse_as(Tenant, tenant(["team-a"]))
    assert parsed.spec.policy.allow_unsigned_models is False and parsed.spec.policy.allowed_images == []


def test_source_verify_mode():
    assert parse_as(Model, model({"source": {"uri": "pvc://w/m"}})).spec.source.verify == "inPlace"
    assert parse_as(Model, model({"source": {"uri": "pvc://w/m", "verify": "copy"}})).spec.source.verify == "copy"
    assert errors_of(model({"source": {"uri": "pvc://w/m", "verify": "later"}})) == ["spec.source.verify"]


def _tenant_quota(quota: dict) -> dict:
    return {"apiVersion": "llmos.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "t"},
            "spec": {"namespaces": ["a1"], "quota": quota}}


@pytest.mark.parametrize("value", [8, 0, "8", "500m", "1.5", ".5", "64Gi", "1e3", "100M", "2Ki"])
def test_tenant_quota_quantities_accepted(value):
    quota = parse_as(Tenant, _tenant_quota({"cpu": value, "memory": value, "ephemeralStorage": value})).spec.quota
    assert quota.cpu == value and quota.memory == value and quota.ephemeral_storage == value


@pytest.mark.parametrize("value", [-1, "-1", "1.5x", "Gi", "", "1 Gi", "1" * 33])
def test_tenant_quota_quantities_refused_with_the_field(value):
    """The same rule as the CRD's CEL (a twin): int-or-string, a non-negative quantity of at most 32 characters."""
    assert errors_of(_tenant_quota({"cpu": value})) == ["spec.quota.cpu"]
    assert errors_of(_tenant_quota({"ephemeralStorage": value})) == ["spec.quota.ephemeralStorage"]


def test_tenant_quota_counts_and_exec_policy():
    raw = _tenant_quota({"pods": 10, "services": 2, "configMaps": 3, "secrets": 4, "persistentVolumeClaims": 5,
                         "replicationControllers": 0, "loadBalancers": 1})
    raw["spec"]["policy"] = {"allowExec": True}
    t = parse_as(Tenant, raw)
    q = t.spec.quota
    assert (q.pods, q.services, q.config_maps, q.secrets, q.persistent_volume_claims, q.replication_controllers,
            q.load_balancers) == (10, 2, 3, 4, 5, 0, 1)
    assert t.spec.policy.allow_exec is True
    assert parse_as(Tenant, _tenant_quota({})).spec.policy.allow_exec is False
    assert parse_as(Tenant, _tenant_quota({})).spec.quota.cpu is None  # unset: the operator's default
    assert errors_of(_tenant_quota({"configMaps": -1})) == ["spec.quota.configMaps"]


AUTOSCALED = {"model": "m", "gpu": {"class": "h100", "count": 1}}


@pytest.mark.parametrize(
    ("autoscaling", "path"),
    [
        ({"minReplicas": 3, "maxReplicas": 2, "metric": "runningRequests", "target": 2},
         "spec.autoscaling.minReplicas"),
        ({"maxReplicas": 2, "metric": "kvCacheUsage", "target": 1.5}, "spec.autoscaling.target"),
        ({"maxReplicas": 2, "metric": "runningRequests", "target": 0}, "spec.autoscaling.target"),
        ({"maxReplicas": 2, "metric": "queueDepth", "target": 1}, "spec.autoscaling.metric"),
        ({"maxReplicas": 2, "metric": "runningRequests"}, "spec.autoscaling.target"),
        ({"minReplicas": 0, "maxReplicas": 2, "metric": "runningRequests", "target": 1},
         "spec.autoscaling.minReplicas"),
    ],
)
def test_autoscaling_errors_name_the_field(autoscaling, path):
    assert path in errors_of(mdep({**AUTOSCALED, "autoscaling": autoscaling}))


def test_autoscaling_defaults():
    obj = parse_object(mdep({**AUTOSCALED, "autoscaling": {"maxReplicas": 4, "metric": "kvCacheUsage",
                                                           "target": 0.8}}))
    a = obj.spec.autoscaling
    assert (a.min_replicas, a.max_replicas, a.target) == (1, 4, 0.8)
    assert (a.scale_up_stabilization_seconds, a.scale_down_stabilization_seconds) == (0, 300)
    assert parse_object(mdep(AUTOSCALED)).spec.autoscaling is None
