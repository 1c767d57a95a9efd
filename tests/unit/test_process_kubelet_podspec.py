"""How the process kubelet (tests/support/process_kubelet.py) turns an operator-rendered pod into a local runtime
command: the pod's own downward-API values, a file:// source kept as this machine's path, valueless runtime flags,
and the CPU engine settings carried by the ModelDeployment itself. The end-to-end use is
tests/engine/test_rolling_update.py."""

from __future__ import annotations

import pytest

from llmos_operator.api import parse_object
from llmos_operator.config import default_config
from llmos_operator.render import render_children
from tests.support.podspec import pod_to_local

pytestmark = pytest.mark.unit

CFG = default_config()
BUNDLE = b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}'
PEM = b"-----BEGIN PUBLIC KEY-----\nMFk=\n-----END PUBLIC KEY-----\n"


def _rendered(tmp_path, extra_args: list[str]):
    model = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Model",
                          "metadata": {"name": "m", "namespace": "llmos-kubelet-x", "generation": 1},
                          "spec": {"source": {"uri": f"file://{tmp_path}/weights"},
                                   "signature": {"bundleRef": {"name": "sig", "key": "model.sig"}}},
                          "status": {"digest": "sha256:" + "ab" * 32}})
    mdep = parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "d", "namespace": "llmos-kubelet-x", "generation": 1, "uid": "u"},
                         "spec": {"model": "m", "gpu": {"class": "h100", "count": 1},
                                  "engine": {"maxModelLen": 512, "extraArgs": extra_args}}})
    objs = {(o["kind"], o["metadata"]["name"]): o
            for o in render_children(mdep, model, CFG.gpu_class("h100"), CFG, bundle=BUNDLE, signer_pem=PEM)}
    return objs


def _configmaps(objs: dict) -> dict:
    return {name: o for (kind, name), o in objs.items() if kind == "ConfigMap"}


def test_a_rendered_pod_becomes_a_local_runtime_command(tmp_path):
    objs = _rendered(tmp_path, ["--dtype", "float32"])
    deployment = objs[("Deployment", "d")]
    pod = {"metadata": {"name": "d-abc-123", "namespace": "llmos-kubelet-x"},
           "spec": {**deployment["spec"]["template"]["spec"], "nodeName": "kwok-h100-0"}}
    configmaps = _configmaps(objs)
    local = pod_to_local({"metadata": pod["metadata"], "spec": {"template": {"spec": pod["spec"]}}}, configmaps,
                         fsroot=tmp_path / "root", pvcs={}, base_env={}, host_sources=True,
                         field_values={"metadata.name": "d-abc-123", "spec.nodeName": "kwok-h100-0"})
    argv = local.argv
    assert argv[argv.index("--source") + 1] == f"file://{tmp_path}/weights"  # this machine's folder, as it is
    assert argv[argv.index("--signature") + 1] == str(tmp_path / "root/etc/llmos/trust/model.sig")
    assert (tmp_path / "root/etc/llmos/trust/model.sig").read_bytes() == BUNDLE
    assert argv[argv.index("--expect-digest") + 1] == "sha256:" + "ab" * 32  # passed through as rendered
    assert local.env["LLMOS_POD_NAME"] == "d-abc-123" and local.env["LLMOS_POD_NAMESPACE"] == "llmos-kubelet-x"
    engine = argv[argv.index("--") + 1:]
    assert engine == ["--tensor-parallel-size", "1", "--max-model-len", "512", "--dtype", "float32",
                      "--enforce-eager"]
    assert argv[argv.index("--port") + 1] == str(local.port) != "8000"


def test_a_file_source_outside_every_mount_is_refused_without_host_sources(tmp_path):
    objs = _rendered(tmp_path, [])
    with pytest.raises(AssertionError, match="not inside any volume mount"):
        pod_to_local(objs[("Deployment", "d")], _configmaps(objs),
                     fsroot=tmp_path / "root", pvcs={}, base_env={})


def test_valueless_runtime_flags_keep_their_neighbours(tmp_path):
    objs = _rendered(tmp_path, ["--trust-remote-code"])
    deployment = objs[("Deployment", "d")]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--allow-remote-code" in command
    local = pod_to_local(deployment, _configmaps(objs),
                         fsroot=tmp_path / "root", pvcs={}, base_env={}, host_sources=True)
    i = local.argv.index("--allow-remote-code")
    assert local.argv[i + 1].startswith("--") and local.argv[i + 1] != "--"
    assert local.argv[local.argv.index("--cache-dir") + 1].endswith("var/cache/llmos")
