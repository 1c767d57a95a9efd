"""The runtime's configuration and the vLLM command line it derives from it."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import termination as T
from .engine_args import DEFAULT_ALLOWED_FLAGS, has_flag, is_flag, normalise_flag, refused_args

# Set by the runtime itself; an engine argument naming one of these is refused.
RESERVED_ENGINE_FLAGS = frozenset({"--model", "--served-model-name", "--host", "--port", "--uds", "--middleware"})
GUARD_MIDDLEWARE = "llmos_runtime.guard.InferenceOnly"
# Rendered by the operator from typed API fields (not from extraArgs): allowed on the runtime's command line too.
OPERATOR_RENDERED_FLAGS = frozenset({"--tensor-parallel-size", "--max-model-len", "--gpu-memory-utilization"})
VERIFY_MODES = ("in-place", "copy")

# Startup phase budgets (seconds) and the engine watchdog after ready; CLI options, see docs/runtime.md.
DEFAULT_FETCH_BUDGET = 3600.0
DEFAULT_VERIFY_BUDGET = 1800.0
DEFAULT_LOAD_BUDGET = 1800.0
DEFAULT_ENGINE_HEALTH_INTERVAL = 3.0
DEFAULT_WATCHDOG_UNREADY_AFTER = 30.0  # work in flight and no token (or no /health answer) this long: not ready
DEFAULT_WATCHDOG_RESTART_AFTER = 120.0  # ... this long: not live (the kubelet restarts the container)
# Idle keep-alive of client connections on the API and health ports: longer than load balancers' and gateways' own
# (commonly 60 s), so that they close first and never race a close from the pod (a POST reset before its headers
# is not retried).
DEFAULT_KEEP_ALIVE = 75
DEFAULT_ADAPTER_MAX_BYTES = 8 << 30  # the largest adapter copied into pod-private storage

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
    drain_timeout: float = T.DEFAULT_DRAIN_TIMEOUT
    drain_grace: float = T.DEFAULT_DRAIN_GRACE  # after SIGTERM, new requests are still served this long
    termination_log: Path | None = Path("/dev/termination-log")
    pvc_root: Path = Path("/mnt/pvc")
    engine_args: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    # Seconds vLLM gets to exit after SIGTERM before it is killed.
    engine_stop_timeout: float = T.DEFAULT_ENGINE_STOP
    # Seconds between two reads of the adapters file.
    adapters_poll_interval: float = 1.0
    allowed_engine_flags: list[str] = field(default_factory=list)  # --allow-engine-flag, beyond the default list
    allow_remote_code: bool = False
    verify_mode: str = "in-place"
    # "sha256:<hex>": the root digest the verified manifest must have (the Model's status.digest); None: any
    expect_digest: str | None = None
    fetch_budget: float = DEFAULT_FETCH_BUDGET
    verify_budget: float = DEFAULT_VERIFY_BUDGET
    load_budget: float = DEFAULT_LOAD_BUDGET
    engine_health_interval: float = DEFAULT_ENGINE_HEALTH_INTERVAL
    watchdog_unready_after: float = DEFAULT_WATCHDOG_UNREADY_AFTER
    watchdog_restart_after: float = DEFAULT_WATCHDOG_RESTART_AFTER
    keep_alive: int = DEFAULT_KEEP_ALIVE
    adapter_max_bytes: int = DEFAULT_ADAPTER_MAX_BYTES

    @property
    def lora_enabled(self) -> bool:
        return has_flag(self.engine_args, "--enable-lora")

    @property
    def serves_adapters(self) -> bool:
        """Adapters are managed (an adapters file) and the engine can take them (``--enable-lora``)."""
        return self.adapters_file is not None and self.lora_enabled

    @property
    def api_key(self) -> str | None:
        """The key vLLM requires on /v1 (``--api-key`` or ``VLLM_API_KEY``): the runtime's own calls send it too."""
        return flag_value(self.engine_args, "--api-key") or os.environ.get("VLLM_API_KEY") or None


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` (any spelling; ``--f v`` or ``--f=v``), the last one winning like argparse."""
    want, value = normalise_flag(flag), None
    for i, a in enumerate(args):
        if is_flag(a) and normalise_flag(a) == want:
            if "=" in a:
                value = a.split("=", 1)[1]
            elif i + 1 < len(args) and not is_flag(args[i + 1]):
                value = args[i + 1]
    return value


def engine_args_problem(args: Sequence[str], *, allowed_extra: Sequence[str] = (),
                        allow_remote_code: bool = False) -> str | None:
    """One line saying why the engine arguments are refused, or None. The same allow-list as the operator's
    (engine_args.py), plus the flags the operator renders from typed fields; TLS flags are refused always."""
    for a in args:
        if not is_flag(a):
            continue
        flag = normalise_flag(a)
        if flag in RESERVED_ENGINE_FLAGS:
            return f"engine argument {flag} is set by the runtime; remove it"
        if flag.startswith("--ssl-") or flag == "--enable-ssl-refresh":
            return (f"engine argument {flag} is refused: the engine listens on loopback behind the runtime; TLS "
                    "belongs to the service mesh or the gateway")
    allowed = set(DEFAULT_ALLOWED_FLAGS) | OPERATOR_RENDERED_FLAGS | {normalise_flag(f) for f in allowed_extra}
    refused = refused_args(args, allowed=allowed, allow_remote_code=allow_remote_code)
    if refused:
        r = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        reason = r.reason.replace("allowed flags are listed in docs/security.md",
                                  "the platform can allow it with --allow-engine-flag")
        return f"engine argument refused: {reason}{more}"
    return None


def engine_command(cfg: RuntimeConfig, model_dir: Path, python: str | None = None) -> list[str]:
    """The vLLM command: the operator's engine args, then what the runtime owns: the verified model's real path,
    the served name, the pod's API address, and the guard middleware (only the inference API is served)."""
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
        cfg.host,
        "--port",
        str(cfg.port),
        "--middleware",
        GUARD_MIDDLEWARE,
    ]


# Variables vLLM's SageMaker bootstrap reads to load code (handlers, middlewares outside the guard): never passed on.
SAGEMAKER_CODE_PREFIX = "CUSTOM_"
SAGEMAKER_MODEL_PATH = "SAGEMAKER_MODEL_PATH"


def engine_env(cfg: RuntimeConfig, base: Mapping[str, str] | None = None, *, guard_dir: Path | None = None,
               guard_token: str | None = None, empty_dir: Path | None = None) -> dict[str, str]:
    """The engine's environment: the pod's, plus offline mode (the weights are local and verified — the engine must
    not fetch anything else), the keep-alive of the API port, runtime LoRA updates only when adapters are served
    (the guard lets only the runtime's token through to them), the guard's marker directory and token — and none
    of the SageMaker bootstrap's code hooks: ``CUSTOM_*`` dropped, ``SAGEMAKER_MODEL_PATH`` pinned to ``empty_dir``
    (an empty directory: no ``model.py`` or requirements from the pod's ``/opt/ml/model``)."""
    from .guard import ENV_DIR, ENV_TOKEN

    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith(SAGEMAKER_CODE_PREFIX)}
    env.pop(ENV_TOKEN, None)
    env.pop(ENV_DIR, None)
    if guard_dir is not None:
        env[ENV_DIR] = str(guard_dir)
    if guard_token is not None:
        env[ENV_TOKEN] = guard_token
    if empty_dir is not None:
        env[SAGEMAKER_MODEL_PATH] = str(empty_dir)
    env["HF_HUB_OFFLINE"] = "1"
    env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = str(int(cfg.keep_alive))
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    if cfg.serves_adapters:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    else:
        env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    return env
