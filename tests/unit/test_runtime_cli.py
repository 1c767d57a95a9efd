"""The runtime's command line (the contract with the operator's pod spec) and the engine command it derives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llmos_runtime.cli import UsageError, main, parse_args
from llmos_runtime.config import engine_command, engine_env

pytestmark = pytest.mark.unit

RENDERED = [
    "serve", "--source", "pvc://models/llama", "--revision", "r2", "--served-name", "support-bot",
    "--signature", "/etc/llmos/trust/model.sig", "--trusted-key", "/etc/llmos/trust/signer.pem",
    "--adapters-file", "/etc/llmos/adapters/adapters.json", "--cache-dir", "/var/cache/llmos",
    "--port", "8000", "--health-port", "8081", "--drain-timeout", "100",
    "--termination-log", "/dev/termination-log", "--pvc-root", "/mnt/pvc",
    "--", "--tensor-parallel-size", "1", "--max-model-len", "256", "--enable-lora", "--max-loras", "4",
]


def test_the_operator_contract_parses():
    cfg = parse_args(RENDERED)
    assert cfg.source == "pvc://models/llama" and cfg.revision == "r2" and cfg.served_name == "support-bot"
    assert cfg.signature == Path("/etc/llmos/trust/model.sig")
    assert cfg.trusted_keys == [Path("/etc/llmos/trust/signer.pem")]
    assert cfg.adapters_file == Path("/etc/llmos/adapters/adapters.json")
    assert (cfg.port, cfg.health_port, cfg.drain_timeout) == (8000, 8081, 100.0)
    assert cfg.pvc_root == Path("/mnt/pvc") and cfg.termination_log == Path("/dev/termination-log")
    assert cfg.engine_args == ["--tensor-parallel-size", "1", "--max-model-len", "256", "--enable-lora",
                               "--max-loras", "4"]
    assert cfg.lora_enabled


def test_defaults():
    cfg = parse_args(["serve", "--source", "hf://org/m", "--served-name", "m"])
    assert (cfg.port, cfg.health_port, cfg.host) == (8000, 8081, "0.0.0.0")
    assert cfg.cache_dir == Path("/var/cache/llmos") and cfg.pvc_root == Path("/mnt/pvc")
    assert cfg.signature is None and cfg.trusted_keys == [] and cfg.adapters_file is None
    assert cfg.engine_args == [] and not cfg.lora_enabled
    assert (cfg.drain_timeout, cfg.drain_grace) == (100.0, 10.0)  # termination.py's budget
    assert (cfg.watchdog_unready_after, cfg.watchdog_restart_after) == (30.0, 120.0)
    assert cfg.keep_alive == 75  # longer than load balancers' 60 s
    cfg = parse_args(["serve", "--source", "hf://org/m", "--served-name", "m", "--watchdog-unready-after", "5",
                      "--watchdog-restart-after", "40", "--drain-grace", "3", "--keep-alive", "120"])
    assert (cfg.watchdog_unready_after, cfg.watchdog_restart_after, cfg.drain_grace, cfg.keep_alive) == \
        (5.0, 40.0, 3.0, 120)


def test_engine_args_that_look_like_runtime_flags_stay_with_the_engine():
    cfg = parse_args(["serve", "--source", "file:///m", "--served-name", "m", "--allow-engine-flag=--source",
                      "--", "--seed", "1", "--source", "x"])
    assert cfg.engine_args == ["--seed", "1", "--source", "x"]


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--served-name", "m"],  # no source
        ["serve", "--source", "file:///m"],  # no name
        ["serve", "--source", "file:///m", "--served-name", "m", "--signature", "/s"],  # no trusted key
        ["serve", "--source", "file:///m", "--served-name", "m", "--", "--model", "/other"],  # reserved
        ["serve", "--source", "file:///m", "--served-name", "m", "--", "--port=9"],
        ["serve", "--source", "file:///m", "--served-name", "m", "--", "--served-model-name", "x"],
        ["serve", "--source", "file:///m", "--served-name", "m", "--drain-timeout", "-1"],
        ["serve", "--source", "file:///m", "--served-name", "m", "stray"],
        ["serve", "--source", "file:///m", "--served-name", "m", "--", "--tokenizer", "/evil"],  # not allowed
        ["serve", "--source", "file:///m", "--served-name", "m", "--", "--trust_remote_code"],
        ["serve", "--source", "file:///m", "--served-name", "m", "--allow-engine-flag=--ssl-keyfile",
         "--", "--ssl-keyfile", "/k"],  # TLS: never, even when allowed
        ["serve", "--source", "file:///m", "--served-name", "m", "--watchdog-unready-after", "50",
         "--watchdog-restart-after", "20"],
        ["serve", "--source", "file:///m", "--served-name", "m", "--drain-grace", "-1"],
        ["serve", "--source", "file:///m", "--served-name", "m", "--keep-alive", "0"],
        ["serve", "--source", "file:///m", "--served-name", "m", "--expect-digest", "sha256:" + "a" * 64],  # unsigned
        ["serve", "--source", "file:///m", "--served-name", "m", "--signature", "/s", "--trusted-key", "/k",
         "--expect-digest", "a" * 64],  # no sha256: prefix
        ["serve", "--source", "file:///m", "--served-name", "m", "--signature", "/s", "--trusted-key", "/k",
         "--expect-digest", "sha256:" + "A" * 64],  # not the operator's form
    ],
)
def test_usage_errors_exit_2_with_a_termination_message(argv, tmp_path):
    with pytest.raises(UsageError):
        parse_args(argv)
    log = tmp_path / "termination-log"
    assert main([*argv[:1], "--termination-log", str(log), *argv[1:]]) == 2
    line = log.read_text()
    assert line.startswith("usage error: ") and line.count("\n") == 1


def test_engine_flag_allow_list_is_enforced_by_the_runtime_too(tmp_path):
    base = ["serve", "--source", "file:///m", "--served-name", "m"]
    log = tmp_path / "termination-log"
    assert main([*base, "--termination-log", str(log), "--", "--chat-template", "/x.jinja"]) == 2
    assert "--chat-template" in log.read_text() and "--allow-engine-flag" in log.read_text()
    assert main([*base, "--termination-log", str(log), "--", "--ssl-certfile=/c"]) == 2
    assert "TLS belongs to the service mesh" in log.read_text()
    # the platform extends the list; remote code only with --allow-remote-code; '_' spellings are the same flag
    cfg = parse_args([*base, "--allow-engine-flag", "--api-key", "--allow-remote-code", "--",
                      "--api_key", "s3cret", "--trust-remote-code", "--enable_lora", "--max_loras=2"])
    assert cfg.lora_enabled and cfg.api_key == "s3cret"
    assert parse_args([*base, "--", "--enable-lora=true"]).lora_enabled
    assert not parse_args([*base, "--", "--max-loras", "2"]).lora_enabled


def test_engine_command_and_env():
    cfg = parse_args(RENDERED)
    cmd = engine_command(cfg, Path("/var/cache/llmos/models/x"))
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[3:9] == ["--tensor-parallel-size", "1", "--max-model-len", "256", "--enable-lora", "--max-loras"]
    # vLLM serves the pod's API port itself, behind the runtime's guard middleware (inference API only)
    assert cmd[-10:] == ["--model", "/var/cache/llmos/models/x", "--served-model-name", "support-bot",
                         "--host", "0.0.0.0", "--port", "8000", "--middleware", "llmos_runtime.guard.InferenceOnly"]
    env = engine_env(cfg, {"PATH": "/bin", "HF_HUB_OFFLINE": "0", "LLMOS_GUARD_TOKEN": "from-the-pod"},
                     guard_dir=Path("/tmp/g"), guard_token="t")
    assert env["LLMOS_GUARD_TOKEN"] == "t" and env["LLMOS_GUARD_DIR"] == "/tmp/g"
    assert "LLMOS_GUARD_TOKEN" not in engine_env(cfg, {"LLMOS_GUARD_TOKEN": "from-the-pod"})
    assert env["HF_HUB_OFFLINE"] == "1"  # the engine never fetches anything: the weights are local and verified
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["PATH"] == "/bin"
    assert env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "75"  # vLLM's uvicorn keeps idle connections longer than LBs
    # runtime LoRA updating only where adapters are served: not without an adapters file, nor without --enable-lora
    pod_env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    no_adapters = parse_args(["serve", "--source", "file:///m", "--served-name", "m"])
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in engine_env(no_adapters, pod_env)
    no_lora = parse_args(["serve", "--source", "file:///m", "--served-name", "m", "--adapters-file", "/a.json"])
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in engine_env(no_lora, pod_env)


def test_the_engine_env_loads_no_sagemaker_code():
    """vLLM's SageMaker bootstrap loads handlers and middlewares (outside the guard) named by CUSTOM_* and a model.py
    from SAGEMAKER_MODEL_PATH: none of it reaches the engine."""
    cfg = parse_args(RENDERED)
    pod = {"CUSTOM_FASTAPI_MIDDLEWARE_THROTTLE": "evil:mw", "CUSTOM_SCRIPT_FILENAME": "x.py",
           "CUSTOM_FASTAPI_PING_HANDLER": "evil:ping", "SAGEMAKER_MODEL_PATH": "/mnt/pvc/shared", "PATH": "/bin"}
    env = engine_env(cfg, pod, empty_dir=Path("/tmp/g/empty"))
    assert not [k for k in env if k.startswith("CUSTOM_")]
    assert env["SAGEMAKER_MODEL_PATH"] == "/tmp/g/empty" and env["PATH"] == "/bin"


def test_expect_digest_parses():
    digest = "sha256:" + "0123456789abcdef" * 4
    cfg = parse_args(["serve", "--source", "file:///m", "--served-name", "m", "--signature", "/s",
                      "--trusted-key", "/k", "--expect-digest", digest])
    assert cfg.expect_digest == digest
    assert parse_args(["serve", "--source", "file:///m", "--served-name", "m"]).expect_digest is None
