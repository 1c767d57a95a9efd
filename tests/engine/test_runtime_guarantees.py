"""Issue 10 on the real engine (vLLM on CPU, the tiny model): what only the real engine shows.

One shared runtime (one engine start) serves the model from a symlink ``current -> v1`` that is flipped to an
unsigned v2 while vLLM loads, with one verified adapter:

- the verified real path is what vLLM loaded (``/v1/models`` root), not the link's new target;
- through the pod's public port, ``POST /v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``POST /adapters`` and
  ``DELETE /adapters/x`` answer 404 and the served adapter set does not change;
- a client that hangs up on a long non-streaming request frees the engine (vLLM's running-requests metric drops);
- last: vLLM stopped with SIGSTOP turns the pod not ready within 15 s and not live within 60 s.

Two more runtimes, started side by side: a file added to the model directory after verification is refused before
ready (exit 4, vLLM stopped); ``--verify-mode copy`` serves the private copy while the shared directory changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.engine.conftest import CPU_ENGINE_ARGS, Launcher, record
from tests.support.runtime_proc import RuntimeProcess
from tests.support.tiny_model import TestModels
from tests.support.waiting import wait_for

pytestmark = pytest.mark.engine

ENGINE_ARGS = [*CPU_ENGINE_ARGS, "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"]


def _phase(rp: RuntimeProcess) -> str | None:
    try:
        return httpx.get(rp.health + "/healthz", timeout=2).json().get("phase")
    except (httpx.HTTPError, ValueError):
        return None


def _wait_phase(rp: RuntimeProcess, phase: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _phase(rp) == phase:
            return
        if not rp.alive():
            raise AssertionError(f"{rp.name} exited before {phase}:\n{rp.log_tail()}")
        time.sleep(0.05)
    raise AssertionError(f"{rp.name} never reached {phase}:\n{rp.log_tail()}")


def _engine_pid(rp: RuntimeProcess) -> int:
    """vLLM's API server process: the runtime's child running vllm.entrypoints."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == rp.proc.pid and b"vllm.entrypoints" in cmdline:
            return int(entry.name)
    raise AssertionError("vLLM process not found")


def _metric(rp: RuntimeProcess, name: str) -> float:
    text = httpx.get(rp.health + "/metrics", timeout=10).text
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert values, f"{name} not in the engine's metrics"
    return sum(values)


def _override_one_weight(checkpoint: Path, dest: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(checkpoint)
    name = sorted(tensors)[-1]
    save_file({name: np.zeros_like(tensors[name])}, str(dest), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def served(test_models: TestModels, launcher: Launcher, tmp_path_factory):
    root = tmp_path_factory.mktemp("symlinked")
    v1 = root / "v1"
    shutil.copytree(test_models.model_v1, v1)
    v2 = root / "v2"
    shutil.copytree(test_models.model_v2, v2)
    (v2 / "model.sig").unlink()  # unsigned as far as the runtime is concerned
    current = root / "current"
    current.symlink_to(v1)
    adapters = root / "adapters"
    adapters.mkdir()
    (adapters / "adapters.json").write_text(
        '{"adapters": [{"name": "lora-a", "source": "file://%s", "signature": "%s"}]}'
        % (test_models.adapter, test_models.adapter / "model.sig"))
    rp = launcher.start(
        "guarantees", source=f"file://{current}", signature=v1 / "model.sig",
        trusted_keys=[test_models.public_key], adapters_file=adapters / "adapters.json", engine_args=ENGINE_ARGS,
        extra=["--engine-health-interval", "2", "--engine-unready-after", "3", "--engine-dead-after", "20"],
    )
    _wait_phase(rp, "engine-starting")
    flip = root / "current.tmp"
    flip.symlink_to(v2)
    os.rename(flip, current)  # flipped after verification, while vLLM loads
    record("guarantees: ready after (s)", round(rp.wait_ready(), 1))
    return rp, v1


def test_the_verified_real_path_is_loaded_not_the_flipped_link(served):
    rp, v1 = served
    models = httpx.get(rp.api + "/v1/models", timeout=10).json()["data"]
    roots = {m["id"]: m.get("root") for m in models}
    assert roots["tiny"] == str(v1.resolve()), roots


def test_management_endpoints_are_404_on_the_public_port(served):
    rp, _ = served

    def adapter_set():
        return sorted(m["id"] for m in httpx.get(rp.api + "/v1/models", timeout=10).json()["data"])

    before = adapter_set()
    assert before == ["lora-a", "tiny"]
    for method, path, body in [
        ("POST", "/v1/load_lora_adapter", {"lora_name": "lora-a", "lora_path": "/tmp/unsigned", "load_inplace": True}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "evil", "lora_path": "/tmp/unsigned"}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "lora-a"}),
        ("POST", "/adapters", {"name": "evil", "src": "/tmp/unsigned"}),
        ("DELETE", "/adapters/lora-a", None),
        ("POST", "/sleep", None), ("POST", "/reset_prefix_cache", None), ("POST", "/start_profile", None),
        ("POST", "/collective_rpc", {"method": "x"}), ("GET", "/metrics", None),
    ]:
        r = httpx.request(method, rp.api + path, json=body, timeout=10)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert adapter_set() == before
    report = httpx.get(rp.health + "/adapters", timeout=10).json()
    assert [a["name"] for a in report["loaded"]] == ["lora-a"] and report["loaded"][0]["verified"]
    # the inference API still answers, the adapter included
    r = httpx.post(rp.api + "/v1/completions", json={"model": "lora-a", "prompt": "hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text


def test_a_client_hanging_up_frees_the_engine(served):
    """A client that gives up on a long non-streaming request: vLLM aborts it instead of generating every token.
    The client hangs up once the engine is generating (a wall-clock timeout is not enough: on a quiet machine the
    tiny model finishes 480 tokens in under 2 s). Judged by what the engine generated (not by catching the
    running-requests gauge at the right moment, which a poll can miss): fewer tokens than asked for, then none."""
    rp, _ = served
    wait_for(lambda: _metric(rp, "vllm:num_requests_running") == 0, timeout=30, message="an idle engine")
    asked = 480  # the prompt and these fit the test engine's --max-model-len 512
    before = _metric(rp, "vllm:generation_tokens_total")
    body = json.dumps({"model": "tiny", "prompt": "a long answer", "max_tokens": asked, "ignore_eos": True}).encode()
    url = urlsplit(rp.api)
    client = socket.create_connection((url.hostname, url.port), timeout=10)
    client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (url.netloc.encode(), len(body), body))
    try:
        wait_for(lambda: _metric(rp, "vllm:generation_tokens_total") > before, timeout=30, interval=0.02,
                 message="the engine to start generating")
    finally:
        client.close()  # the client gives up mid-generation
    started = time.monotonic()
    wait_for(lambda: _metric(rp, "vllm:num_requests_running") == 0, timeout=30,
             message="the abandoned request to be aborted")

    def settled():
        first = _metric(rp, "vllm:generation_tokens_total")
        time.sleep(1.5)
        return first == _metric(rp, "vllm:generation_tokens_total")

    wait_for(settled, timeout=30, message="the engine to stop generating")
    generated = _metric(rp, "vllm:generation_tokens_total") - before
    record("guarantees: abandoned request: tokens generated of those asked", f"{generated:.0f}/{asked}")
    record("guarantees: abandoned request idle after (s)", round(time.monotonic() - started, 2))
    assert generated < asked, f"the abandoned request ran to completion ({generated:.0f} of {asked} tokens)"


def test_a_stopped_engine_turns_the_pod_not_ready_then_not_live(served):
    """Runs last: it leaves the shared runtime failed."""
    rp, _ = served
    pid = _engine_pid(rp)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: rp.readyz() == 503, timeout=15, interval=0.2, message="not ready")
        not_ready = time.monotonic() - stopped
        wait_for(lambda: httpx.get(rp.health + "/healthz", timeout=5).status_code == 503, timeout=60 - not_ready,
                 interval=0.5, message="not live")
        not_live = time.monotonic() - stopped
        reason = httpx.get(rp.health + "/healthz", timeout=5).json()["reason"]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "did not answer /health" in reason
    assert (rp.log_path.parent / "termination-log").read_text().startswith("engine did not answer /health")
    record("guarantees: SIGSTOP -> not ready (s)", round(not_ready, 1))
    record("guarantees: SIGSTOP -> not live (s)", round(not_live, 1))


def test_changed_files_are_refused_and_copy_mode_serves_the_copy(test_models: TestModels, launcher: Launcher,
                                                                tmp_path):
    added = tmp_path / "added"
    shutil.copytree(test_models.model_v1, added)
    shared = tmp_path / "shared"
    shutil.copytree(test_models.model_v1, shared)
    common = dict(trusted_keys=[test_models.public_key], engine_args=CPU_ENGINE_ARGS)
    in_place = launcher.start("added-file", source=f"file://{added}", signature=added / "model.sig", **common)
    copy = launcher.start("copy", source=f"file://{shared}", signature=shared / "model.sig",
                          extra=["--verify-mode", "copy"], **common)
    _wait_phase(in_place, "engine-starting")
    # a single-file checkpoint: vLLM loads any *.safetensors beside it; this one overrides a weight with zeros
    _override_one_weight(added / "model.safetensors", added / "model-00002-of-00002.safetensors")
    _wait_phase(copy, "engine-starting")
    (shared / "extra.safetensors").write_bytes(b"another writer")  # the shared volume changes under the pod

    assert copy.wait_ready() > 0
    roots = {m["id"]: m.get("root") for m in httpx.get(copy.api + "/v1/models", timeout=10).json()["data"]}
    private = copy.log_path.parent / "cache" / "private"
    assert Path(roots["tiny"]).is_relative_to(private.resolve()), roots
    assert not (Path(roots["tiny"]) / "extra.safetensors").exists()

    code = in_place.wait(timeout=600)
    message = (in_place.log_path.parent / "termination-log").read_text()
    assert code == 4, in_place.log_tail()
    assert message == ("model verification failed: file added after verification: "
                       "model-00002-of-00002.safetensors; refusing to serve\n"), message
    assert in_place.group_alive() == [], "vLLM outlived the refusing runtime"
