"""Fixtures of the engine tests: the tiny signed test models (built once per session) and a launcher of
``llmos-runtime`` processes that always kills their process groups at teardown.

Engines are expensive (30 s idle to 3+ minutes on a busy 2-core machine): tests that only send requests share one
module-scoped runtime; only the replacement test starts several.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.runtime_proc import RuntimeProcess, cpu_env, free_port, serve_argv
from tests.support.tiny_model import TestModels, build_test_models

# vLLM arguments for CPU mode in tests that do not render a pod spec.
# --enforce-eager: no torch.compile, 10-45 s less per engine start on 2 cores (tests/support/podspec.py says why).
CPU_ENGINE_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager"]

_MEASUREMENTS: dict[str, object] = {}


def record(name: str, value: object) -> None:
    """Keep a measurement for the terminal summary (and $LLMOS_ENGINE_MEASUREMENTS, a JSON file, if set)."""
    _MEASUREMENTS[name] = value
    out = os.environ.get("LLMOS_ENGINE_MEASUREMENTS")
    if out:
        Path(out).write_text(json.dumps(_MEASUREMENTS, indent=2, default=str))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    if _MEASUREMENTS:
        terminalreporter.section("llmos engine measurements")
        for k, v in _MEASUREMENTS.items():
            terminalreporter.write_line(f"{k}: {v}")


@pytest.fixture(scope="session")
def test_models(tmp_path_factory: pytest.TempPathFactory) -> TestModels:
    started = time.monotonic()
    models = build_test_models(tmp_path_factory.mktemp("test-models"))
    record("test models built (s)", round(time.monotonic() - started, 1))
    return models


class Launcher:
    """Starts runtimes; ``close()`` kills every one of them (process groups)."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[RuntimeProcess] = []

    def start(
        self,
        name: str,
        *,
        source: str,
        served_name: str = "tiny",
        engine_args: list[str] | None = None,
        signature: Path | None = None,
        trusted_keys: list[Path] | None = None,
        adapters_file: Path | None = None,
        drain_timeout: float | None = None,
        env: dict[str, str] | None = None,
        extra: list[str] | None = None,
    ) -> RuntimeProcess:
        port, health_port = free_port(), free_port()
        work = self.root / name
        work.mkdir(parents=True, exist_ok=True)
        argv = serve_argv(
            source=source,
            served_name=served_name,
            port=port,
            health_port=health_port,
            cache_dir=work / "cache",
            engine_args=engine_args if engine_args is not None else CPU_ENGINE_ARGS,
            signature=signature,
            trusted_keys=trusted_keys or [],
            adapters_file=adapters_file,
            termination_log=work / "termination-log",
            drain_timeout=drain_timeout,
            extra=extra or (),
        )
        rp = RuntimeProcess(argv=argv, env=env or cpu_env(), log_path=work / "runtime.log", port=port,
                            health_port=health_port, name=name)
        self.procs.append(rp)
        return rp.start()

    def adopt(self, rp: RuntimeProcess) -> RuntimeProcess:
        self.procs.append(rp)
        return rp

    def close(self) -> None:
        for rp in self.procs:
            rp.kill()


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    lx = Launcher(tmp_path_factory.mktemp("runtimes"))
    try:
        yield lx
    finally:
        lx.close()
