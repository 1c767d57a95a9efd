"""The runtime against a fake engine (tests/support/fake_engine.py), for the unit tests of tests/unit/test_runtime_*.py:
a signed model folder, the runtime's configuration, the engine command replaced, and waiting on async conditions.
The fixtures (``keys``, ``fake_engine``) are registered by tests/conftest.py."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from llmos_runtime import server as server_mod
from llmos_runtime.config import RuntimeConfig
from tests.support.ports import free_port
from tests.support.tiny_model import make_signing_key

FAKE_ENGINE = str(Path(__file__).resolve().parent / "fake_engine.py")
SMALL_MODEL = {"config.json": b"{}", "model.safetensors": b"w" * 4096}  # what most runtime tests sign and serve


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_signing_key(tmp_path_factory.mktemp("keys"))


def signed_dir(path: Path, files: dict[str, bytes], private_key: Path) -> Path:
    from llmos_signing import sign_model

    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    sign_model(path, private_key.read_bytes())
    return path


@pytest.fixture
def fake_engine(monkeypatch):
    """Replace vLLM by tests/support/fake_engine.py; records the commands the runtime would have run."""
    calls = []

    real = server_mod.engine_command

    def command(cfg, model_dir, python=None):
        calls.append((model_dir, cfg.port))
        return [sys.executable, FAKE_ENGINE, *real(cfg, model_dir)[3:]]  # the real arguments, guard included

    monkeypatch.setattr(server_mod, "engine_command", command)
    return calls


def make_cfg(tmp_path: Path, model: Path, public_key: Path | None, **kw) -> RuntimeConfig:
    kw.setdefault("drain_grace", 0.2)  # the production grace (10 s) waits for load balancers there are none of here
    return RuntimeConfig(
        source=f"file://{model}",
        served_name="tiny",
        signature=model / "model.sig" if public_key else None,
        trusted_keys=[public_key] if public_key else [],
        cache_dir=tmp_path / "cache",
        host="127.0.0.1",
        port=free_port(),
        health_port=free_port(),
        termination_log=tmp_path / "termination-log",
        pvc_root=tmp_path / "pvc",
        adapters_poll_interval=0.1,
        **kw,
    )


async def wait_for(cond, timeout=20.0, poll=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(poll)
    raise AssertionError("timed out")


async def status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url) as r:
            return r.status
    except aiohttp.ClientError:
        return None


async def is_status(session: aiohttp.ClientSession, url: str, code: int) -> bool:
    return await status(session, url) == code


def urls(cfg: RuntimeConfig) -> tuple[str, str]:
    """The engine's (through the guard) and the health port's base URLs."""
    return f"http://127.0.0.1:{cfg.port}", f"http://127.0.0.1:{cfg.health_port}"
