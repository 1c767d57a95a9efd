"""``llmos-runtime``: the container entrypoint of a model pod.

    llmos-runtime serve --source URI [--revision REV] --served-name NAME
        [--signature PATH --trusted-key PUB.pem ... [--expect-digest sha256:HEX]] [--adapters-file PATH]
        [--cache-dir DIR]
        [--port 8000] [--health-port 8081] [--drain-timeout SECONDS] [--termination-log PATH]
        [--pvc-root DIR] [--verify-mode in-place|copy] [--allow-engine-flag FLAG ...] [--allow-remote-code]
        [--fetch-budget S] [--verify-budget S] [--load-budget S] [--engine-health-interval S]
        [--watchdog-unready-after S] [--watchdog-restart-after S] [--drain-grace S] [--keep-alive S]
        [--adapter-max-bytes N] -- ENGINE_ARGS...

See docs/runtime.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from . import config as C
from . import termination as T
from .config import VERIFY_MODES, RuntimeConfig, engine_args_problem
from .exits import EXIT_USAGE

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


class UsageError(Exception):
    """Bad command line; ``str()`` is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        # Raised, not printed-and-exited: main() writes the termination message first.
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmos-runtime", description="llmos model runtime (runs in each model pod)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser(
        "serve",
        help="fetch, verify and serve a model with vLLM",
        description="Fetch and verify the model, start vLLM on the API port with the runtime's guard (inference API "
        "only), hot-load verified adapters, drain on SIGTERM. Arguments after `--` are passed to vLLM's "
        "OpenAI-compatible server.",
    )
    s.add_argument("--source", required=True, help="file:///abs, pvc://claim/path, s3://bucket/prefix, "
                   "gs://bucket/prefix or hf://org/name")
    s.add_argument("--revision", default=None, help="revision of the source (hf:// git revision; cache key otherwise)")
    s.add_argument("--served-name", required=True, help="model name clients use in requests")
    s.add_argument("--signature", type=Path, default=None, help="OMS signature bundle (model.sig) of the model")
    s.add_argument("--trusted-key", type=Path, action="append", default=[], dest="trusted_keys",
                   help="PEM public key trusted to sign the model and its adapters (repeatable; without "
                   "--signature the keys still verify signed adapters)")
    s.add_argument("--expect-digest", default=None, metavar="sha256:HEX",
                   help="the root digest the verified signature must name (the Model's status.digest); another "
                   "digest ends the start with exit code 4 before the engine starts")
    s.add_argument("--adapters-file", type=Path, default=None, help="adapters.json to watch (mounted ConfigMap)")
    s.add_argument("--cache-dir", type=Path, default=Path("/var/cache/llmos"), help="download cache")
    s.add_argument("--host", default="0.0.0.0", help="address the API and health ports bind to")
    s.add_argument("--port", type=int, default=8000, help="OpenAI-compatible API port (vLLM's, guarded)")
    s.add_argument("--health-port", type=int, default=8081, help="/healthz, /readyz, /metrics, /adapters")
    s.add_argument("--drain-timeout", type=float, default=T.DEFAULT_DRAIN_TIMEOUT,
                   help="seconds in-flight requests may take to finish once new ones are refused (default "
                   "%(default)s; the operator renders terminationGracePeriodSeconds from the whole budget)")
    s.add_argument("--drain-grace", type=float, default=T.DEFAULT_DRAIN_GRACE,
                   help="seconds after SIGTERM during which new requests are still served, with Connection: close, "
                   "while load balancers learn the endpoint is gone (default %(default)s)")
    s.add_argument("--termination-log", type=Path, default=Path("/dev/termination-log"),
                   help="where the one-line reason of a failed start is written")
    s.add_argument("--pvc-root", type=Path, default=Path("/mnt/pvc"), help="where pvc://<claim> is mounted")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--verify-mode", choices=VERIFY_MODES, default="in-place",
                   help="file:// and pvc:// sources: verify the files where they are (in-place; the files, sizes, "
                   "inodes and mtimes are checked again before ready) or copy them into pod-private storage while "
                   "verifying and serve the copy (copy: for volumes other writers can change)")
    s.add_argument("--allow-engine-flag", action="append", default=[], dest="allowed_engine_flags", metavar="FLAG",
                   help="allow this vLLM flag beyond the default allow-list (repeatable; set by the operator)")
    s.add_argument("--allow-remote-code", action="store_true", help="allow --trust-remote-code")
    s.add_argument("--fetch-budget", type=float, default=C.DEFAULT_FETCH_BUDGET,
                   help="seconds the fetch phase may take before /healthz fails (default %(default)s)")
    s.add_argument("--verify-budget", type=float, default=C.DEFAULT_VERIFY_BUDGET,
                   help="seconds the verify phase may take (default %(default)s)")
    s.add_argument("--load-budget", type=float, default=C.DEFAULT_LOAD_BUDGET,
                   help="seconds from engine start to ready, adapters included (default %(default)s)")
    s.add_argument("--engine-health-interval", type=float, default=C.DEFAULT_ENGINE_HEALTH_INTERVAL,
                   help="seconds between two polls of the engine (/health, its metrics, the guard's in-flight "
                   "count) once ready (default %(default)s)")
    s.add_argument("--watchdog-unready-after", type=float, default=C.DEFAULT_WATCHDOG_UNREADY_AFTER,
                   help="requests in flight and no token generated (or no /health answer) for this many seconds: "
                   "the pod is not ready (default %(default)s)")
    s.add_argument("--watchdog-restart-after", type=float, default=C.DEFAULT_WATCHDOG_RESTART_AFTER,
                   help="... for this many seconds: /healthz fails and the kubelet restarts the container "
                   "(default %(default)s)")
    s.add_argument("--keep-alive", type=int, default=C.DEFAULT_KEEP_ALIVE,
                   help="seconds an idle client connection is kept open on the API and health ports (default "
                   "%(default)s: longer than load balancers keep theirs)")
    s.add_argument("--adapter-max-bytes", type=int, default=C.DEFAULT_ADAPTER_MAX_BYTES,
                   help="the largest adapter copied into pod-private storage before it is verified and loaded "
                   "(default %(default)s)")
    s.add_argument("engine_args", nargs=argparse.REMAINDER, help="-- then vLLM arguments")
    return p


def parse_args(argv: Sequence[str]) -> RuntimeConfig:
    argv = list(argv)
    engine_args: list[str] = []
    if "--" in argv:  # everything after the first `--` belongs to vLLM, untouched
        i = argv.index("--")
        argv, engine_args = argv[:i], argv[i + 1 :]
    # `--allow-engine-flag --api-key`: the value starts with '-', which argparse would take for an option
    joined: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--allow-engine-flag" and i + 1 < len(argv):
            joined.append(f"--allow-engine-flag={argv[i + 1]}")
            i += 2
            continue
        joined.append(argv[i])
        i += 1
    argv = joined
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.engine_args:
        parser.error(f"unexpected arguments {ns.engine_args!r}; engine arguments go after `--`")
    problem = engine_args_problem(engine_args, allowed_extra=ns.allowed_engine_flags,
                                  allow_remote_code=ns.allow_remote_code)
    if problem:
        parser.error(problem)
    if ns.signature is not None and not ns.trusted_keys:
        parser.error("--signature needs at least one --trusted-key")
    if ns.expect_digest is not None:
        if ns.signature is None:
            parser.error("--expect-digest needs --signature (an unsigned model has no verified digest)")
        if not DIGEST_RE.fullmatch(ns.expect_digest):
            parser.error(f"--expect-digest must be sha256:<64 lowercase hex digits>, not {ns.expect_digest!r}")
    for name in ("drain_timeout", "drain_grace"):
        if getattr(ns, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("fetch_budget", "verify_budget", "load_budget", "engine_health_interval", "keep_alive",
                 "adapter_max_bytes"):
        if getattr(ns, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if not 0 < ns.watchdog_unready_after < ns.watchdog_restart_after:
        parser.error("need 0 < --watchdog-unready-after < --watchdog-restart-after")
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
        drain_timeout=ns.drain_timeout,
        drain_grace=ns.drain_grace,
        termination_log=ns.termination_log,
        pvc_root=ns.pvc_root,
        engine_args=engine_args,
        log_level=ns.log_level,
        allowed_engine_flags=list(ns.allowed_engine_flags),
        allow_remote_code=ns.allow_remote_code,
        verify_mode=ns.verify_mode,
        expect_digest=ns.expect_digest,
        fetch_budget=ns.fetch_budget,
        verify_budget=ns.verify_budget,
        load_budget=ns.load_budget,
        engine_health_interval=ns.engine_health_interval,
        watchdog_unready_after=ns.watchdog_unready_after,
        watchdog_restart_after=ns.watchdog_restart_after,
        keep_alive=ns.keep_alive,
        adapter_max_bytes=ns.adapter_max_bytes,
    )


def _termination_log_from(argv: Sequence[str]) -> Path:
    """--termination-log as given (even on a command line that does not parse), else the default."""
    argv = list(argv)
    argv = argv[: argv.index("--")] if "--" in argv else argv
    for i, a in enumerate(argv):
        if a == "--termination-log" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--termination-log="):
            return Path(a.split("=", 1)[1])
    return Path("/dev/termination-log")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cfg = parse_args(argv)
    except UsageError as e:
        from .exits import write_termination_log

        line = f"usage error: {e}"
        write_termination_log(_termination_log_from(argv), line)
        print(f"llmos-runtime: {line}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    logging.basicConfig(
        level=getattr(logging, str(cfg.log_level).upper(), logging.INFO),
        format="%(asctime)s llmos-runtime %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .server import run

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
