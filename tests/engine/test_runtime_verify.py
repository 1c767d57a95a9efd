"""Tampered weights: the runtime refuses to start, vLLM is never started, and the one-line termination message names
the file. (No engine is started when the runtime behaves — this runs in seconds.)"""

from __future__ import annotations

import shutil
import time

import pytest

from tests.engine.conftest import Launcher
from tests.support.tiny_model import TestModels

pytestmark = pytest.mark.engine


def _flip_one_byte(path) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2  # inside the tensor data, past the safetensors header
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["tampered-weights", "untrusted-key"])
def test_verification_failure_exits_before_vllm_starts(test_models: TestModels, launcher: Launcher, tmp_path, case):
    model = tmp_path / "model"
    shutil.copytree(test_models.model_v1, model)
    key = test_models.public_key
    if case == "tampered-weights":
        _flip_one_byte(model / "model.safetensors")
        expected = ["model.safetensors", "mismatch"]
    else:
        key = test_models.other_public_key  # the model is signed by a key that is not trusted
        expected = ["key"]

    rp = launcher.start(
        f"verify-{case}",
        source=f"file://{model}",
        signature=model / "model.sig",
        trusted_keys=[key],
        # would make vLLM fail loudly if it were ever started
        engine_args=["--dtype", "float32", "--max-model-len", "256", "--enforce-eager"],
    )
    started = time.monotonic()
    code = rp.wait(timeout=120)
    elapsed = time.monotonic() - started
    log = rp.log_path.read_text()

    assert code != 0, log
    assert code == 4, f"expected exit code 4 (verification failed), got {code}\n{log}"
    message = (rp.log_path.parent / "termination-log").read_text()
    assert message.count("\n") == 1 and message.endswith("\n"), repr(message)  # one line
    assert message.startswith("model verification failed: "), message
    for word in expected:
        assert word in message.lower() if word != "model.safetensors" else word in message, message
    assert f"llmos-runtime: {message.strip()}" in log  # the same line on stderr
    # vLLM never started: the runtime never got to spawning it, and nothing is left in its process group
    assert "starting engine" not in log and "vllm.entrypoints" not in log, log
    assert rp.group_alive() == [], rp.group_alive()
    assert elapsed < 60, f"refusal took {elapsed:.1f}s"
