"""``llmos-runtime serve``: fetch → verify → start vLLM → serve (guarded API port + health port + adapter watcher) →
drain.

Exit codes (docs/runtime.md has the table): 0 clean stop (SIGTERM), 1 unexpected error, 2 usage (bad command line
or refused engine argument), 3 model source failed (cache directory not writable included), 4 verification failed
(or the files changed after verification), 5 engine failed (could not spawn, exited, or wedged), 6 a startup phase
ran past its budget. Every non-zero exit writes one line to ``--termination-log`` (when writable) and stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import tempfile
import sys
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from aiohttp import web

from .adapters import AdapterManager, AdapterSpec
from .config import RuntimeConfig, engine_command, engine_env
from .engine import Engine, EngineExited
from .health import HealthServer
from .integrity import IntegrityError, Snapshot, changes, private_copy, resolve_once, snapshot
from .guard import DRAINING_MARKER, INFLIGHT_PATH, SERVING_MARKER, TOKEN_HEADER
from .report import PodReporter
from .resources import apply_hash_threads, cpu_threads
from .sources import LOCAL_SCHEMES, SourceError, cache_key, parse_source, resolve_source, resolve_source_verified
from .state import RuntimeState
from .verify import TrustError, load_trusted_keys, verify_dir

FLUSH_GRACE_SECONDS = 1.0  # after the last in-flight request ends, before the engine is stopped
log = logging.getLogger("llmos_runtime")

EXIT_FAILURE = 1
EXIT_SOURCE = 3
EXIT_VERIFY = 4
EXIT_ENGINE = 5
EXIT_BUDGET = 6
TERMINATION_LOG_LIMIT = 4096  # what the kubelet reads of /dev/termination-log

T = TypeVar("T")


def write_termination_log(path: Path | None, line: str) -> None:
    if path is None:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(line.encode("utf-8")[: TERMINATION_LOG_LIMIT - 1].decode("utf-8", "ignore") + "\n")
    except OSError as e:
        log.debug("termination log %s not writable: %s", path, e)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a daemon thread (a download or a hash of many GB must not keep a stopping process alive,
    which an executor thread would)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def target() -> None:
        try:
            r = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, r, None)

    threading.Thread(target=target, daemon=True, name=f"llmos-{getattr(fn, '__name__', 'work')}").start()
    return await fut


class Stopped(Exception):
    """SIGTERM arrived before the model was serving."""


class Runtime:
    def __init__(self, cfg: RuntimeConfig):
        self.cfg = cfg
        self.state = RuntimeState()
        self.engine: Engine | None = None
        self.adapters: AdapterManager | None = None
        # The guard in the engine (guard.py) trusts calls carrying this token, and serves the public API only while
        # the marker file `serving` exists in guard_dir (kept in sync with state.ready by _sync_guard).
        self.guard_token = secrets.token_urlsafe(32)
        self.guard_dir: Path | None = None  # created by main()
        self.state.on_publish = self._sync_guard
        self.health = HealthServer(
            self.state,
            engine_url=lambda: self.engine.url if self.engine is not None else None,
            adapters=lambda: self.adapters,
            engine_headers={TOKEN_HEADER: self.guard_token},
        )
        self.trusted_keys: dict[str, bytes] = {}
        self._runners: list[web.AppRunner] = []
        self._drain: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._watch_stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._report_dirty: asyncio.Event | None = None
        self._load_started: float | None = None
        self._drain_signal = "SIGTERM"

    def _sync_guard(self) -> None:
        """The engine's guard serves requests only while the replica is ready (one marker file)."""
        if self.guard_dir is None:
            return
        serving, draining = self.guard_dir / SERVING_MARKER, self.guard_dir / DRAINING_MARKER
        try:
            if self.state.draining:
                draining.touch()
            if self.state.ready:
                serving.touch()
            else:
                serving.unlink(missing_ok=True)
        except OSError as e:
            log.error("cannot update the guard's marker files in %s: %s", self.guard_dir, e)

    async def _engine_inflight(self) -> int | None:
        """Requests in flight in the engine's public API (from the guard), or None if it cannot be asked."""
        import aiohttp

        assert self.engine is not None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
                async with s.get(self.engine.url + INFLIGHT_PATH, headers={TOKEN_HEADER: self.guard_token}) as r:
                    return int((await r.json())["inflight"]) if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError):
            return None

    # ---- failure / signals -------------------------------------------------------------------------------------
    def fail(self, message: str, code: int) -> int:
        line = (message.strip().splitlines() or ["failed"])[0]
        self.state.failure = line
        self.state.set_phase("failed")
        write_termination_log(self.cfg.termination_log, line)
        print(f"llmos-runtime: {line}", file=sys.stderr, flush=True)
        return code

    def _on_signal(self, signum: int) -> None:
        assert self._drain is not None and self._force is not None
        if self.state.draining:
            if signum == signal.SIGINT:
                log.warning("second interrupt: stopping without waiting for in-flight requests")
                self._force.set()
            return
        self._drain_signal = signal.Signals(signum).name  # logged with the in-flight count once the guard answers
        self.state.draining = True
        self.state.publish()
        self._drain.set()

    async def _until_drain(self, aw: Awaitable[T]) -> T:
        """Await ``aw`` unless SIGTERM comes first (then raise Stopped)."""
        assert self._drain is not None
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
        # keep-alive towards clients: longer than typical load balancers' idle timeouts (60 s), so the LB closes
        # first and never races a close from us
        runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None, keepalive_timeout=75)
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

    # ---- adapters ----------------------------------------------------------------------------------------------
    async def _prepare_adapter(self, spec: AdapterSpec) -> tuple[Path, dict[str, Any] | None]:
        from llmos_signing import VerificationError

        from .adapters import AdapterVerificationError

        cfg = self.cfg
        try:
            path = await in_thread(lambda: resolve_source(spec.source, revision=spec.revision,
                                                          cache_dir=cfg.cache_dir, pvc_root=cfg.pvc_root))
        except SourceError as e:
            raise RuntimeError(f"source: {e}") from e
        path = resolve_once(path)
        if spec.signature is None:
            return path, None
        def verify() -> dict[str, Any]:
            before = snapshot(path)
            summary = verify_dir(path, spec.signature, self.trusted_keys, what=f"adapter {spec.name}")
            problem = changes(before, snapshot(path))  # the hashed files are the files that are there now
            if problem:
                raise IntegrityError(problem)
            return summary

        try:
            summary = await in_thread(verify)
        except (VerificationError, TrustError, IntegrityError) as e:
            self._evict_if_cached(path)
            raise AdapterVerificationError(f"verification failed: {e}") from e
        return path, summary

    def _evict_if_cached(self, path: Path) -> None:
        """A download that failed verification is removed: the next start fetches it again."""
        models = (self.cfg.cache_dir / "models").resolve()
        if path.parent == models and path.is_dir():
            log.warning("removing %s from the cache: it failed verification", path)
            shutil.rmtree(path, ignore_errors=True)

    async def _report_loop(self, reporter: PodReporter) -> None:
        """Keep the pod's adapters annotation current: after every change, and every 30 s (a failed patch is
        retried; an unchanged report is not sent again)."""
        assert self._report_dirty is not None and self.adapters is not None
        while True:
            try:
                await asyncio.wait_for(self._report_dirty.wait(), 30)
            except asyncio.TimeoutError:
                pass
            self._report_dirty.clear()
            await in_thread(reporter.report, self.adapters.loaded(), self.adapters.failures())

    # ---- main --------------------------------------------------------------------------------------------------
    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self._drain, self._force, self._watch_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
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

    # ---- budgets and health -----------------------------------------------------------------------------------
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
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - one line in the termination log, the traceback in the log
            log.exception("unexpected error")
            return self.fail(f"unexpected error: {type(e).__name__}: {e}", EXIT_FAILURE)

    async def _watch_engine(self) -> None:
        """After ready, poll the engine's /health: --engine-unready-after failures in a row turn the replica not
        ready, --engine-dead-after turn /healthz red (the kubelet restarts the pod) with a termination message."""
        cfg, state = self.cfg, self.state
        assert self.engine is not None
        import aiohttp

        interval = cfg.engine_health_interval
        fails = 0
        timeout = aiohttp.ClientTimeout(total=max(0.5, interval * 0.8))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                started = time.monotonic()
                try:
                    async with session.get(self.engine.url + "/health",
                                           headers={TOKEN_HEADER: self.guard_token}) as r:
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    if fails >= cfg.engine_unready_after:
                        log.warning("engine answers /health again: ready")
                    fails = 0
                    if not state.engine_healthy:
                        state.engine_healthy = True
                        state.publish()
                elif not state.draining:  # while draining the engine is being stopped on purpose
                    fails += 1
                    if fails == cfg.engine_unready_after:
                        log.error("engine did not answer /health %d times in a row: not ready", fails)
                        state.engine_healthy = False
                        state.publish()
                    if fails >= cfg.engine_dead_after and state.failure is None:
                        self.fail(f"engine did not answer /health {fails} times in a row "
                                  f"(~{fails * interval:.0f}s): wedged; restarting", EXIT_ENGINE)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    # ---- the model's bytes --------------------------------------------------------------------------------------
    def _fetch_model(self) -> tuple[Path, dict[str, Any] | None]:
        """Resolve (and, for remote sources, download) the model; returns its real path, resolved once, and the
        verification summary when the download itself was verified (remote + signature: one pass)."""
        cfg = self.cfg
        signed = None
        if cfg.signature is not None and parse_source(cfg.source).scheme not in LOCAL_SCHEMES:
            # the bundle first: then exactly the signed files are fetched, and verified while they are written
            from llmos_signing import verify_bundle

            try:
                bundle = cfg.signature.read_bytes()
            except OSError as e:
                raise TrustError(f"cannot read signature {cfg.signature}: {e.strerror or e}") from e
            signed = verify_bundle(bundle, self.trusted_keys)
        local, verified = resolve_source_verified(cfg.source, revision=cfg.revision, cache_dir=cfg.cache_dir,
                                                  pvc_root=cfg.pvc_root, signed=signed)
        local = resolve_once(local)
        if cfg.verify_mode == "copy" and parse_source(cfg.source).scheme in LOCAL_SCHEMES:
            dest = cfg.cache_dir / "private" / cache_key(parse_source(cfg.source, cfg.revision))
            started = time.monotonic()
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                exclude: frozenset[str] = frozenset()
                if cfg.signature is not None:  # a signature kept inside the model directory is not a model file
                    sig = resolve_once(cfg.signature)
                    if sig.is_relative_to(local):
                        exclude = frozenset({os.path.normpath(sig.relative_to(local))})
                private_copy(local, dest, exclude=exclude)
            except OSError as e:
                raise SourceError(f"cannot copy {local} into pod-private storage {dest}: {e.strerror or e}") from e
            log.info("copied %s into pod-private %s in %.1fs (--verify-mode copy)", local, dest,
                     time.monotonic() - started)
            return resolve_once(dest), None
        return local, verified

    def _verify_model(self, model_dir: Path) -> tuple[dict[str, Any], Snapshot]:
        """Snapshot, verify, snapshot again: the hashed files are the files that are there now."""
        before = snapshot(model_dir)
        summary = verify_dir(model_dir, self.cfg.signature, self.trusted_keys)
        problem = changes(before, snapshot(model_dir))
        if problem:
            raise IntegrityError(problem)
        return summary, before

    async def _serve(self) -> int:
        from llmos_signing import VerificationError

        cfg, state, m = self.cfg, self.state, self.state.metrics
        apply_hash_threads(cpu_threads())

        # 1. fetch
        state.set_phase("fetching")
        t = time.monotonic()
        try:
            self.trusted_keys = load_trusted_keys(cfg.trusted_keys)
            model_dir, fetched_verified = await self._until_drain(in_thread(self._fetch_model))
        except SourceError as e:
            return self.fail(f"model source failed: {e}", EXIT_SOURCE)
        except (IntegrityError, TrustError, VerificationError) as e:
            return self.fail(f"model verification failed: {e}", EXIT_VERIFY)
        except OSError as e:  # e.g. the cache directory is not writable
            return self.fail(f"model source failed: {e.strerror or e}: {e.filename or cfg.cache_dir}", EXIT_SOURCE)
        m.phase_seconds.labels(phase="fetch").set(time.monotonic() - t)

        # 2. verify — nothing starts on a mismatch
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
                    in_thread(self._verify_model, model_dir)
                )
            except (VerificationError, TrustError, IntegrityError) as e:
                self._evict_if_cached(model_dir)
                return self.fail(f"model verification failed: {e}", EXIT_VERIFY)
        if cfg.expect_digest is not None:
            got = f"sha256:{(state.verification or {}).get('root_digest', '')}"
            if got != cfg.expect_digest:  # the files match their bundle, but it is not the revision asked for
                return self.fail(f"model verification failed: the signature names {got}, not the expected "
                                 f"{cfg.expect_digest} (--expect-digest); refusing to serve", EXIT_VERIFY)
        state.verified = True
        m.phase_seconds.labels(phase="verify").set(time.monotonic() - t)

        # 3. engine
        state.set_phase("engine-starting")
        self._load_started = time.monotonic()
        assert self.guard_dir is not None
        self.engine = Engine(engine_command(cfg, model_dir),
                             engine_env(cfg, guard_dir=self.guard_dir, guard_token=self.guard_token),
                             cfg.port, host=cfg.host, headers={TOKEN_HEADER: self.guard_token})
        try:
            await self.engine.start()
        except OSError as e:
            return self.fail(f"engine could not be started: {e.strerror or e}: {self.engine.cmd[0]}", EXIT_ENGINE)
        try:
            waited = await self._until_drain(self.engine.wait_healthy())
        except EngineExited as e:
            state.engine_exited = e.code
            return self.fail(f"engine exited with code {e.code} before it was ready (see the log above)", EXIT_ENGINE)
        m.phase_seconds.labels(phase="engine_start").set(waited)
        log.info("engine healthy after %.1fs", waited)

        # 4. adapters (the initial set is loaded before the replica turns ready)
        if cfg.adapters_file is not None:
            state.set_phase("loading-adapters")
            t = time.monotonic()
            self.adapters = AdapterManager(
                cfg.adapters_file,
                engine_url=self.engine.url,
                prepare=self._prepare_adapter,
                metrics=m,
                served_name=cfg.served_name,
                lora_enabled=cfg.lora_enabled,
                poll_interval=cfg.adapters_poll_interval,
                api_key=cfg.api_key,
                headers={TOKEN_HEADER: self.guard_token},
            )
            if not cfg.lora_enabled:
                log.warning("--adapters-file given but no --enable-lora in the engine arguments: adapters will fail")
            # the loaded set is also reported on the pod itself (annotation llmos.dev/adapters), when in a pod
            reporter = await in_thread(PodReporter.from_env)
            if reporter is not None:
                self._report_dirty = asyncio.Event()
                self.adapters.on_change = self._report_dirty.set
                self._tasks.append(asyncio.create_task(self._report_loop(reporter)))
            await self._until_drain(self.adapters.reconcile(force=True))
            m.phase_seconds.labels(phase="adapters").set(time.monotonic() - t)
            self._tasks.append(asyncio.create_task(self.adapters.run(self._watch_stop)))

        # 5. the files vLLM loaded are still the ones that were hashed (nothing added, removed or rewritten since)
        if verified_files is not None:
            problem = await in_thread(lambda: changes(verified_files, snapshot(model_dir)))
            if problem:
                return self.fail(f"model verification failed: {problem}; refusing to serve", EXIT_VERIFY)

        # 6. serve until SIGTERM or the engine dies
        self._tasks.append(asyncio.create_task(self._watch_engine()))
        state.engine_ready = True
        state.set_phase("serving")
        log.info("ready: serving %s on port %d (health port %d)", cfg.served_name, cfg.port, cfg.health_port)
        assert self._drain is not None
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
        assert self._force is not None and self._watch_stop is not None and self.engine is not None
        state.set_phase("draining")
        self._watch_stop.set()
        t = time.monotonic()
        inflight: int | None = None
        # new requests get 503 from the guard already; wait for the ones in flight (streams included) to finish
        first = True
        while time.monotonic() - t < cfg.drain_timeout and not self._force.is_set():
            inflight = await self._engine_inflight()
            if first:
                log.info("%s: draining (not ready; new requests refused; %s in flight)", self._drain_signal,
                         "?" if inflight is None else inflight)
                first = False
            if inflight == 0 or self.engine.returncode is not None:
                break
            try:
                await asyncio.wait_for(self._force.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
        if inflight:
            log.warning("%d request(s) still in flight after %.1fs; stopping the engine anyway",
                        inflight, time.monotonic() - t)
        else:
            log.info("drained in %.2fs", time.monotonic() - t)
            # The count falls when a response's last chunk is handed to the server, which may not have written it
            # to the socket yet: stopping vLLM's process at once could cut a stream's final bytes.
            await asyncio.sleep(FLUSH_GRACE_SECONDS)
        state.metrics.phase_seconds.labels(phase="drain").set(time.monotonic() - t)
        await self.engine.stop(cfg.engine_stop_timeout)
        return 0


def run(cfg: RuntimeConfig) -> int:
    try:
        import uvloop  # vLLM depends on it
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            return uvloop.run(Runtime(cfg).main())
        return asyncio.run(Runtime(cfg).main())
    except KeyboardInterrupt:
        return 130
