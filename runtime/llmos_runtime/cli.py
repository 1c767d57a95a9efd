"""``llmos-runtime``: the container entrypoint of a model pod.

    llmos-runtime serve --source URI [--revision REV] --served-name NAME
        [--signature PATH --trusted-key PUB.pem ...] [--adapters-file PATH] [--cache-dir DIR]
        [--port 8000] [--health-port 8081] [--drain-timeout SECONDS] [--termination-log PATH]
        [--pvc-root DIR] -- ENGINE_ARGS...

See docs/runtime.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from .config import RESERVED_ENGINE_FLAGS, RuntimeConfig

DEFAULT_DRAIN_TIMEOUT = 100.0  # the operator renders terminationGracePeriodSeconds 120 and a 5 s preStop sleep


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmos-runtime", description="llmos model runtime (runs in each model pod)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="fetch, verify and serve a model with vLLM",
        description="Fetch and verify the model, start vLLM behind the runtime's proxy, hot-load adapters, drain "
        "on SIGTERM. Arguments after `--` are passed to vLLM's OpenAI-compatible server.",
    )
    s.add_argument("--source", required=True, help="file:///abs, pvc://claim/path, s3://bucket/prefix, "
                   "gs://bucket/prefix or hf://org/name")
    s.add_argument("--revision", default=None, help="revision of the source (hf:// git revision; cache key otherwise)")
    s.add_argument("--served-name", required=True, help="model name clients use in requests")
    s.add_argument("--signature", type=Path, default=None, help="OMS signature bundle (model.sig) of the model")
    s.add_argument("--trusted-key", type=Path, action="append", default=[], dest="trusted_keys",
                   help="PEM public key trusted to sign the model and its adapters (repeatable; without "
                   "--signature the keys still verify signed adapters)")
    s.add_argument("--adapters-file", type=Path, default=None, help="adapters.json to watch (mounted ConfigMap)")
    s.add_argument("--cache-dir", type=Path, default=Path("/var/cache/llmos"), help="download cache")
    s.add_argument("--host", default="0.0.0.0", help="address the API and health ports bind to")
    s.add_argument("--port", type=int, default=8000, help="OpenAI-compatible API port (the runtime's proxy)")
    s.add_argument("--health-port", type=int, default=8081, help="/healthz, /readyz, /metrics, /adapters")
    s.add_argument("--engine-port", type=int, default=0, help="vLLM's loopback port (0: pick a free one)")
    s.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT,
                   help="seconds in-flight requests may take to finish after SIGTERM")
    s.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"),
                   help="where the one-line reason of a failed start is written")
    s.add_argument("--pvc-root", type=Path, default=Path("/mnt/pvc"), help="where pvc://<claim> is mounted")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("engine_args", nargs=argparse.REMAINDER, help="-- then vLLM arguments")
    return p


def parse_args(argv: Sequence[str]) -> RuntimeConfig:
    argv = list(argv)
    engine_args: list[str] = []
    if "--" in argv:  # everything after the first `--` belongs to vLLM, untouched
        i = argv.index("--")
        argv, engine_args = argv[:i], argv[i + 1 :]
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.engine_args:
        parser.error(f"unexpected arguments {ns.engine_args!r}; engine arguments go after `--`")
    for a in engine_args:
        flag = a.split("=", 1)[0]
        if flag in RESERVED_ENGINE_FLAGS:
            parser.error(f"engine argument {flag} is set by the runtime; remove it")
    if ns.signature is not None and not ns.trusted_keys:
        parser.error("--signature needs at least one --trusted-key")
    if ns.drain_timeout < 0:
        parser.error("--drain-timeout must be >= 0")
    return RuntimeConfig(
        source=ns.source,
        revision=ns.revision,
        served_name=ns.served_name,
        signature=ns.signature,
        trusted_keys=list(ns.trusted_keys),
        adapters_file=ns.adapters_file,
        cache_dir=ns.cache_dir,
        host=ns.host,
        port=ns.port,
        health_port=ns.health_port,
        engine_port=ns.engine_port,
        drain_timeout=ns.drain_timeout,
        termination_log=ns.termination_log,
        pvc_root=ns.pvc_root,
        engine_args=engine_args,
        log_level=ns.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=getattr(logging, str(cfg.log_level).upper(), logging.INFO),
        format="%(asctime)s llmos-runtime %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .server import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
