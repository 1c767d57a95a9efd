"""The runtime's configuration and the vLLM command line it derives from it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

# Set by the runtime itself; an engine argument naming one of these is refused.
RESERVED_ENGINE_FLAGS = frozenset({"--model", "--served-model-name", "--host", "--port", "--uds"})

ENGINE_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass
class RuntimeConfig:
    source: str
    served_name: str
    revision: str | None = None
    signature: Path | None = None
    trusted_keys: list[Path] = field(default_factory=list)
    adapters_file: Path | None = None
    cache_dir: Path = Path("/var/cache/llmos")
    host: str = "0.0.0.0"
    port: int = 8000
    health_port: int = 8081
    engine_port: int = 0
    drain_timeout: float = 100.0
    termination_log: Path | None = Path("/dev/termination-log")
    pvc_root: Path = Path("/mnt/pvc")
    engine_args: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    # Seconds vLLM gets to exit after SIGTERM before it is killed.
    engine_stop_timeout: float = 15.0
    # Seconds between two reads of the adapters file.
    adapters_poll_interval: float = 1.0

    @property
    def lora_enabled(self) -> bool:
        return "--enable-lora" in self.engine_args or any(a.startswith("--enable-lora=") for a in self.engine_args)


def engine_command(cfg: RuntimeConfig, model_dir: Path, engine_port: int, python: str | None = None) -> list[str]:
    """The vLLM command: the operator's engine args, then what the runtime owns (model, name, loopback address)."""
    return [
        python or sys.executable,
        "-m",
        ENGINE_MODULE,
        *cfg.engine_args,
        "--model",
        str(model_dir),
        "--served-model-name",
        cfg.served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(engine_port),
    ]


def engine_env(cfg: RuntimeConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The engine's environment: the pod's, plus offline mode (the weights are local and verified — the engine must
    not fetch anything else) and runtime LoRA updates when adapters are managed."""
    env = dict(os.environ if base is None else base)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if cfg.adapters_file is not None:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return env
