"""``llmos-runtime serve``: fetch → verify → start vLLM → self-test its guard → serve (guarded API port + health port +
adapter watcher + engine watchdog) → drain. This module runs the sequence; each step's work is elsewhere: the bytes
in weights.py, the engine process in engine.py, its guard in guard.py (checked by selftest.py), the watchdog in
monitor.py and watchdog.py, the drain in drain.py and termination.py, the health port in health.py.

Exit codes (exits.py; docs/runtime.md has the table): 0 clean stop (SIGTERM), 1 unexpected error, 2 usage, 3 model
source failed, 4 verification failed (or the files changed after verification), 5 engine failed (could not spawn,
exited — also while draining —, or its guard is not in force; a hung engine fails /healthz and the kubelet restarts
the container), 6 a startup phase ran past its budget. Every non-zero exit writes one line to ``--termination-log``
(when writable) and stderr.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from .adapters import AdapterManager
from .config import RuntimeConfig, engine_command, engine_env
from .drain import Drain, EngineExitedWhileDraining
from .engine import Engine, EngineExited
from .exits import EXIT_BUDGET, EXIT_ENGINE, EXIT_FAILURE, EXIT_SOURCE, EXIT_VERIFY, write_termination_log
from .guard import CLOSING_MARKER, DRAINING_MARKER, SERVING_MARKER, TOKEN_HEADER
from .health import HealthServer
from .integrity import IntegrityError, Snapshot, changes, snapshot
from .monitor import EngineMonitor
from .report import PodReporter
from .resources import apply_hash_threads, cpu_threads
from .selftest import guard_problem
from .sources import SourceError
from .state import RuntimeState
from .threads import in_thread
from .verify import TrustError, load_trusted_keys
from .weights import Weights

log = logging.getLogger("llmos_runtime")
T = TypeVar("T")

__all__ = ["Runtime", "run", "write_termination_log", "engine_command", "PodReporter"]


class Stopped(Exception):
    """SIGTERM arrived before the model was serving."""


class Failed(Exception):
    """A step failed; ``code`` is the exit code (the message was recorded by Runtime.fail)."""

    def __init__(self, code: int):
        self.code = code


class Runtime:
    def __init__(self, cfg: RuntimeConfig):
        self.cfg = cfg
        self.state = RuntimeState()
        self.weights = Weights(cfg)
        self.engine: Engine | None = None
        self.adapters: AdapterManager | None = None
        # The guard in the engine (guard.py) trusts calls carrying this token, and serves the public API only while
        # its marker files say so (kept in sync with the state by _sync_guard).
        self.guard_token = secrets.token_urlsafe(32)
        self.guard_dir: Path | None = None  # created by main()
        self.state.on_publish = self._sync_guard
        self.health = HealthServer(
            self.state,
            engine_url=lambda: self.engine.url if self.engine is not None else None,
            adapters=lambda: self.adapters,
            engine_headers={TOKEN_HEADER: self.guard_token},
        )
        self._runners: list[web.AppRunner] = []
        self._drain = asyncio.Event()
        self._force = asyncio.Event()
        self._watch_stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._load_started: float | None = None
        self._drain_signal = "SIGTERM"

    @property
    def engine_headers(self) -> dict[str, str]:
        """What the runtime's own calls to the engine carry: the guard's token and the engine's API key."""
        headers = {TOKEN_HEADER: self.guard_token}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        return headers

    def _sync_guard(self) -> None:
        """The guard serves new requests while `serving` exists; `closing` (after SIGTERM) ends each answer's
        connection; `draining` marks its refusals."""
        if self.guard_dir is None:
            return
        d, s = self.guard_dir, self.state
        try:
            for name, present in ((CLOSING_MARKER, s.draining), (DRAINING_MARKER, s.draining),
                                  (SERVING_MARKER, s.accepting)):
                if present:
                    (d / name).touch()
                else:
                    (d / name).unlink(missing_ok=True)
        except OSError as e:
            log.error("cannot update the guard's marker files in %s: %s", d, e)

    # ---- failure / signals -------------------------------------------------------------------------------------
    def fail(self, message: str, code: int) -> int:
        line = (message.strip().splitlines() or ["failed"])[0]
        self.state.failure = line
        self.state.set_phase("failed")
        write_termination_log(self.cfg.termination_log, line)
        print(f"llmos-runtime: {line}", file=sys.stderr, flush=True)
        return code

    def _on_signal(self, signum: int) -> None:
        if self.state.draining:
            if signum == signal.SIGINT:
                log.warning("second interrupt: stopping without waiting for in-flight requests")
                self._force.set()
            return
        self._drain_signal = signal.Signals(signum).name
        self.state.draining = True
        self.state.publish()
        self._drain.set()

    async def _until_drain(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless SIGTERM comes first (then raise Stopped)."""
        task = asyncio.ensure_future(aw)
        drain = asyncio.ensure_future(self._drain.wait())
        try:
            await asyncio.wait({task, drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        if not task.done():
            task.cancel()
            raise Stopped()
        return task.result()

    # ---- servers -----------------------------------------------------------------------------------------------
    async def _listen(self, app: web.Application, port: int) -> None:
        # keep-alive towards clients: longer than load balancers' idle timeouts, so they close first and never race
        # a close from us (the API port gets the same figure through VLLM_HTTP_TIMEOUT_KEEP_ALIVE)
        runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None, keepalive_timeout=self.cfg.keep_alive)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, self.cfg.host, port).start()

    async def _close_servers(self) -> None:
        for runner in reversed(self._runners):
            try:
                await runner.cleanup()
            except Exception:  # noqa: BLE001
                log.exception("closing a server failed")
        self._runners.clear()

    async def _report_loop(self, reporter: PodReporter, dirty: asyncio.Event) -> None:
        """Keep the pod's adapters annotation current: after every change, and every 30 s (a failed patch is
        retried; an unchanged report is not sent again)."""
        assert self.adapters is not None
        while True:
            try:
                await asyncio.wait_for(dirty.wait(), 30)
            except TimeoutError:
                pass
            dirty.clear()
            await in_thread(reporter.report, self.adapters.loaded(), self.adapters.failures())

    # ---- main --------------------------------------------------------------------------------------------------
    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            try:
                self.guard_dir = Path(tempfile.mkdtemp(prefix="llmos-guard-"))
            except OSError as e:
                return self.fail(f"cannot create the guard's directory in {tempfile.gettempdir()}: "
                                 f"{e.strerror or e}", EXIT_FAILURE)
            try:
                await self._listen(self.health.app(), self.cfg.health_port)
            except OSError as e:
                return self.fail(f"cannot listen on {self.cfg.host}: {e}", EXIT_FAILURE)
            return await self._serve_within_budgets()
        finally:
            self._watch_stop.set()
            for t in self._tasks:
                t.cancel()
            if self.engine is not None:
                await self.engine.stop(self.cfg.engine_stop_timeout)
            if self.adapters is not None:
                await self.adapters.close()
            await self._close_servers()
            self.state.set_phase("stopped" if self.state.failure is None else "failed")
            if self.guard_dir is not None:
                shutil.rmtree(self.guard_dir, ignore_errors=True)

    # ---- budgets -----------------------------------------------------------------------------------------------
    def _budget(self, phase: str) -> tuple[str, float] | None:
        cfg = self.cfg
        return {
            "fetching": ("fetch", cfg.fetch_budget),
            "verifying": ("verify", cfg.verify_budget),
            "engine-starting": ("load", cfg.load_budget),
            "loading-adapters": ("load", cfg.load_budget),
        }.get(phase)

    async def _serve_within_budgets(self) -> int:
        """Run the startup and serving; a startup phase past its budget fails /healthz and the process (exit 6),
        with a termination message naming the phase."""
        serve = asyncio.create_task(self._serve_guarded())
        while not serve.done():
            await asyncio.wait({serve}, timeout=0.2)
            budget = self._budget(self.state.phase)
            if budget is None or serve.done():
                continue
            name, seconds = budget
            # the load budget covers the engine start and the initial adapters: measured from the engine start
            started = self._load_started if name == "load" and self._load_started else self.state.phase_started
            if time.monotonic() - started > seconds:
                code = self.fail(f"startup phase {name} exceeded its budget of {seconds:.0f}s "
                                 f"(--{name}-budget); restarting", EXIT_BUDGET)
                serve.cancel()
                await asyncio.gather(serve, return_exceptions=True)
                return code
        return serve.result()

    async def _serve_guarded(self) -> int:
        try:
            return await self._serve()
        except Stopped:
            log.info("stopped before serving")
            return 0
        except Failed as e:
            return e.code
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one line in the termination log, the traceback in the log
            log.exception("unexpected error")
            return self.fail(f"unexpected error: {type(e).__name__}: {e}", EXIT_FAILURE)

    def _failed(self, message: str, code: int) -> Failed:
        return Failed(self.fail(message, code))

    # ---- the sequence ------------------------------------------------------------------------------------------
    async def _serve(self) -> int:
        apply_hash_threads(cpu_threads())
        model_dir, fetched_verified = await self._fetch()
        verified_files = await self._verify(model_dir, fetched_verified)
        await self._start_engine(model_dir)
        await self._load_adapters()
        await self._check_before_ready(model_dir, verified_files)
        return await self._serve_until_stopped()

    async def _fetch(self) -> tuple[Path, dict[str, Any] | None]:
        from llmos_signing import VerificationError

        cfg = self.cfg
        self.state.set_phase("fetching")
        t = time.monotonic()
        try:
            self.weights.trusted_keys = load_trusted_keys(cfg.trusted_keys)
            fetched = await self._until_drain(in_thread(self.weights.fetch_model))
        except SourceError as e:
            raise self._failed(f"model source failed: {e}", EXIT_SOURCE) from e
        except (IntegrityError, TrustError, VerificationError) as e:
            raise self._failed(f"model verification failed: {e}", EXIT_VERIFY) from e
        except OSError as e:  # e.g. the cache directory is not writable
            raise self._failed(f"model source failed: {e.strerror or e}: {e.filename or cfg.cache_dir}",
                               EXIT_SOURCE) from e
        self.state.metrics.phase_seconds.labels(phase="fetch").set(time.monotonic() - t)
        return fetched

    async def _verify(self, model_dir: Path, fetched_verified: dict[str, Any] | None) -> Snapshot | None:
        """Nothing starts on a mismatch. Returns the file set that was hashed (None when unsigned)."""
        from llmos_signing import VerificationError

        cfg, state = self.cfg, self.state
        state.set_phase("verifying")
        t = time.monotonic()
        verified_files: Snapshot | None = None
        if cfg.signature is None:
            log.warning("no --signature: the model is served unverified (signature policy Disabled)")
            state.verification = {"policy": "Disabled"}
        elif fetched_verified is not None:
            # verified while it was downloaded into pod-private storage: what is there now is what was hashed
            state.verification = fetched_verified
            verified_files = await in_thread(snapshot, model_dir)
            log.info("verified %s while fetching: %s", model_dir, fetched_verified)
        else:
            try:
                state.verification, verified_files = await self._until_drain(
                    in_thread(self.weights.verify_model, model_dir))
            except (VerificationError, TrustError, IntegrityError) as e:
                self.weights.evict_if_cached(model_dir)
                raise self._failed(f"model verification failed: {e}", EXIT_VERIFY) from e
        if cfg.expect_digest is not None:
            got = f"sha256:{(state.verification or {}).get('root_digest', '')}"
            if got != cfg.expect_digest:  # the files match their bundle, but it is not the revision asked for
                raise self._failed(f"model verification failed: the signature names {got}, not the expected "
                                   f"{cfg.expect_digest} (--expect-digest); refusing to serve", EXIT_VERIFY)
        state.verified = True
        state.metrics.phase_seconds.labels(phase="verify").set(time.monotonic() - t)
        return verified_files

    async def _start_engine(self, model_dir: Path) -> None:
        cfg, state = self.cfg, self.state
        state.set_phase("engine-starting")
        self._load_started = time.monotonic()
        assert self.guard_dir is not None
        empty = self.guard_dir / "sagemaker-model"  # SAGEMAKER_MODEL_PATH: nothing to load from there
        empty.mkdir(mode=0o500, exist_ok=True)
        self.engine = Engine(engine_command(cfg, model_dir),
                             engine_env(cfg, guard_dir=self.guard_dir, guard_token=self.guard_token, empty_dir=empty),
                             cfg.port, host=cfg.host, headers={TOKEN_HEADER: self.guard_token})
        try:
            await self.engine.start()
        except OSError as e:
            raise self._failed(f"engine could not be started: {e.strerror or e}: {self.engine.cmd[0]}",
                               EXIT_ENGINE) from e
        try:
            waited = await self._until_drain(self.engine.wait_healthy())
        except EngineExited as e:
            state.engine_exited = e.code
            raise self._failed(f"engine exited with code {e.code} before it was ready (see the log above)",
                               EXIT_ENGINE) from e
        state.metrics.phase_seconds.labels(phase="engine_start").set(waited)
        log.info("engine healthy after %.1fs", waited)
        problem = await self._until_drain(guard_problem(self.engine.url, self.engine_headers))
        if problem:
            raise self._failed(f"the engine's guard is not in force: {problem}; refusing to serve", EXIT_ENGINE)

    async def _load_adapters(self) -> None:
        """The initial adapter set is loaded (or reported failed) before the replica turns ready."""
        cfg, state = self.cfg, self.state
        if cfg.adapters_file is None:
            return
        assert self.engine is not None
        state.set_phase("loading-adapters")
        t = time.monotonic()
        self.adapters = AdapterManager(
            cfg.adapters_file, engine_url=self.engine.url, prepare=self.weights.prepare_adapter,
            release=self.weights.release_adapter, metrics=state.metrics, served_name=cfg.served_name,
            lora_enabled=cfg.lora_enabled, poll_interval=cfg.adapters_poll_interval, api_key=cfg.api_key,
            headers={TOKEN_HEADER: self.guard_token},
        )
        if not cfg.lora_enabled:
            log.warning("--adapters-file given but no --enable-lora in the engine arguments: adapters will fail")
        # the loaded set is also reported on the pod itself (annotation llmos.dev/adapters), when in a pod
        reporter = await in_thread(PodReporter.from_env)
        if reporter is not None:
            dirty = asyncio.Event()
            self.adapters.on_change = dirty.set
            self._tasks.append(asyncio.create_task(self._report_loop(reporter, dirty)))
        await self._until_drain(self.adapters.reconcile(force=True))
        state.metrics.phase_seconds.labels(phase="adapters").set(time.monotonic() - t)
        self._tasks.append(asyncio.create_task(self.adapters.run(self._watch_stop)))

    async def _check_before_ready(self, model_dir: Path, verified_files: Snapshot | None) -> None:
        """The files vLLM loaded are still the ones that were hashed (nothing added, removed or rewritten since)."""
        if verified_files is not None:
            problem = await in_thread(lambda: changes(verified_files, snapshot(model_dir)))
            if problem:
                raise self._failed(f"model verification failed: {problem}; refusing to serve", EXIT_VERIFY)

    async def _serve_until_stopped(self) -> int:
        cfg, state = self.cfg, self.state
        assert self.engine is not None
        monitor = EngineMonitor(cfg, state, self.engine.url, self.engine_headers,
                                on_dead=lambda line: self.fail(line, EXIT_ENGINE))
        self._tasks.append(asyncio.create_task(monitor.run()))
        state.engine_ready = True
        state.set_phase("serving")
        log.info("ready: serving %s on port %d (health port %d)", cfg.served_name, cfg.port, cfg.health_port)
        drain = asyncio.create_task(self._drain.wait())
        exited = asyncio.create_task(self.engine.wait_exit())
        self._tasks += [drain, exited]
        await asyncio.wait({drain, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done() and not drain.done():
            state.engine_exited = exited.result()
            state.publish()
            return self.fail(f"engine exited unexpectedly with code {state.engine_exited}", EXIT_ENGINE)
        return await self._drain_and_stop()

    async def _drain_and_stop(self) -> int:
        cfg, state = self.cfg, self.state
        assert self.engine is not None
        if state.failure is not None:  # judged dead (hung or silent): nothing in flight will finish
            log.warning("%s after the engine failed (%s): stopping it without a drain", self._drain_signal,
                        state.failure)
            await self.engine.stop(cfg.engine_stop_timeout)
            return EXIT_ENGINE
        state.set_phase("draining")
        self._watch_stop.set()  # the adapter watcher stops
        drain = Drain(self.engine, state, self.engine_headers, grace=cfg.drain_grace, timeout=cfg.drain_timeout,
                      force=self._force, signal_name=self._drain_signal)
        try:
            took = await drain.run()
        except EngineExitedWhileDraining as e:
            state.engine_exited = e.code
            return self.fail(str(e), EXIT_ENGINE)
        state.metrics.phase_seconds.labels(phase="drain").set(took)
        await self.engine.stop(cfg.engine_stop_timeout)
        return 0


def run(cfg: RuntimeConfig) -> int:
    runner: Any
    try:
        import uvloop  # vLLM depends on it

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        return runner(Runtime(cfg).main())
    except KeyboardInterrupt:
        return 130
