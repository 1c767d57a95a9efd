"""Operator configuration: defaults, YAML/ConfigMap loading, errors."""

import pytest

from llmos_operator.config import (
    ConfigError,
    config_from_configmap,
    config_from_yaml,
    default_config,
    load_config,
)

pytestmark = pytest.mark.unit


def test_defaults_match_the_local_clusters_fake_nodes():
    cfg = default_config()
    h100, l4 = cfg.gpu_class("h100"), cfg.gpu_class("l4")
    assert h100.node_labels == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"} and h100.memory_gib == 80
    assert l4.node_labels == {"nvidia.com/gpu.product": "NVIDIA-L4"} and l4.memory_gib == 24
    for c in (h100, l4):
        assert c.resource_name == "nvidia.com/gpu"
        assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in c.tolerations
    assert cfg.runtime.openai_port == 8000 and cfg.runtime.health_port == 8081
    assert cfg.runtime.image.startswith("ghcr.io/llmos/runtime:")
    assert cfg.gpu_class("a100") is None


def test_yaml_replaces_named_sections_only():
    cfg = config_from_yaml("""
gpuClasses:
  a100:
    nodeLabels: {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}
    memoryGiB: 80
trustedKeys:
  platform: "-----BEGIN PUBLIC KEY-----"
""")
    assert list(cfg.gpu_classes) == ["a100"]
    assert cfg.gpu_class("a100").name == "a100"
    assert cfg.gpu_class("a100").resource_name == "nvidia.com/gpu"
    assert cfg.trusted_keys == {"platform": "-----BEGIN PUBLIC KEY-----"}
    assert cfg.runtime.openai_port == 8000  # untouched section keeps its default


def test_configmap_and_file(tmp_path, monkeypatch):
    assert config_from_configmap(None) == default_config()
    cfg = config_from_configmap({"config.yaml": "runtime: {image: 'registry.local/rt:1'}\n"})
    assert cfg.runtime.image == "registry.local/rt:1"
    path = tmp_path / "c.yaml"
    path.write_text("runtime: {healthPort: 9090}\n")
    assert load_config(path).runtime.health_port == 9090
    monkeypatch.setenv("LLMOS_OPERATOR_CONFIG", str(path))
    assert load_config().runtime.health_port == 9090
    monkeypatch.delenv("LLMOS_OPERATOR_CONFIG")
    assert load_config() == default_config()


def test_to_yaml_round_trips():
    cfg = default_config()
    assert config_from_yaml(cfg.to_yaml()) == cfg


@pytest.mark.parametrize("text", ["gpuClasses: {H100: {}}", "runtime: {openaiPort: 0}", "bogus: 1", "- a list",
                                  "tenancy: {quota: {cpu: -1}}", "tenancy: {defaultRequests: {memory: lots}}",
                                  "tenancy: {quota: {resourceQuotas: 1}}"])
def test_invalid_configuration_is_refused_with_a_path(text):
    with pytest.raises(ConfigError) as info:
        config_from_yaml(text)
    assert "invalid operator configuration" in str(info.value)


def test_tenancy_defaults_and_quantities_written_as_numbers():
    cfg = config_from_yaml("tenancy: {quota: {cpu: 8, pods: 20}}")
    assert cfg.tenancy.quota.cpu == "8" and cfg.tenancy.quota.pods == 20
    assert cfg.tenancy.quota.memory == "64Gi" and cfg.tenancy.default_requests.cpu == "100m"
    # What the Multi-Tenancy Benchmarks ask of tenant pods, and what the chart's policy checks on llmos's own.
    assert default_config().runtime.image_pull_policy == "Always"
