"""The autoscaler: every ``autoscaler.pollSeconds`` it reads the load of each ready replica of each ModelDeployment
with ``spec.autoscaling`` (vLLM's gauges on the runtime's health port, ``/metrics``), decides the replica count
(``core/autoscaling.py``, the HPA's algorithm) and, when it changes, records it in ``status.autoscaling`` — and
nothing else. That record is a new demand: the watch event runs an admission pass (which grants what the tenant's
quota allows, in part if need be), and the deployment reconciler applies what admission granted. So a scale-up
never bypasses the quota, and a restarted operator asks for the same count before it has read any load.

Reading is cheap and bounded: one thread with its own event loop, one HTTP client (aiohttp, keep-alive), at most
``maxConcurrent`` reads in flight, each within ``timeoutSeconds`` and ``maxResponseBytes`` (scanned as it arrives,
never held whole), no redirects followed, no proxies; only pods whose controller chain is the deployment's own (by
uid) are read. The reads name the three gauges (``?name[]=…``): vLLM then answers with those alone.

What the reconciler says about it (ScalingActive, ScalingLimited) comes from the report each round leaves in the
shared state; only the reconciler writes conditions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .. import metrics
from ..api.names import LABEL_MODEL_DEPLOYMENT
from ..api.types import InvalidObject, ModelDeployment
from ..core.autoscaling import (
    FOLLOWING_LOAD,
    METRICS_UNAVAILABLE,
    NO_READY_REPLICA,
    AutoscalerReport,
    History,
    Load,
    Replicas,
    ScaleDecision,
    decide,
    external_autoscalers,
    observe,
    replicas_of,
    wanted_replicas,
)
from ..core.engine_metrics import QUERY, MetricsScanner
from ..core.status import now_rfc3339
from .state import Context

log = logging.getLogger("llmos.controller.autoscaler")
CHUNK = 64 * 1024


@dataclass
class _Target:
    mdep: ModelDeployment
    raw: dict
    current: int
    replicas: Replicas
    loads: list[Load | None]
    errors: list[str]


class Autoscaler:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.config = ctx.config.autoscaler
        self._histories: dict[str, tuple[str, History]] = {}  # key → (uid, recommendations of the last window)
        self._series: set[tuple[str, str]] = set()  # (namespace, name) with per-deployment gauges set
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        # (versions of the stores read, the targets found then): a steady fleet is not searched again every round
        self._memo: tuple[tuple[int, ...], list[tuple[ModelDeployment, dict, int, Replicas]]] | None = None
        self._urls: dict[str, URL] = {}  # pod IP → the URL read there, built once

    def start(self) -> None:
        if not self.config.enabled:
            return
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="llmos-autoscaler",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.poll_seconds + self.config.timeout_seconds + 5)

    def _session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.config.max_concurrent,
                                         keepalive_timeout=3 * self.config.poll_seconds)
        # trust_env stays off: no proxy from the environment; no cookies kept from what a pod answers; identity
        # encoding: the answers are small
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            headers={"User-Agent": "llmos-operator", "Accept-Encoding": "identity"},
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)

    def run_once(self) -> None:
        """One round in the calling thread (tests, benchmarks)."""
        async def once() -> None:
            async with self._session() as session:
                await self.round(session, asyncio.Semaphore(self.config.max_concurrent))
        asyncio.run(once())

    async def _main(self) -> None:
        async with self._session() as session:
            semaphore = asyncio.Semaphore(self.config.max_concurrent)
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self.round(session, semaphore)
                except Exception:  # noqa: BLE001 — a round that failed is logged; the next one tries again
                    log.exception("autoscaler round failed")
                metrics.AUTOSCALER_ROUND_SECONDS.observe(time.monotonic() - started)
                self.rounds += 1
                left = self.config.poll_seconds - (time.monotonic() - started)
                await asyncio.sleep(max(left, 0.05))

    # One round ------------------------------------------------------------------------------------------------------

    async def round(self, session: aiohttp.ClientSession, semaphore: asyncio.Semaphore) -> None:
        targets = self._targets()
        reads = [(t, ip) for t in targets for _, ip in t.replicas.ready]
        urls = {ip: self._urls.get(ip) or _url(ip, self.ctx.config.runtime.health_port) for _, ip in reads}
        self._urls = urls
        answers = await asyncio.gather(*(self._read(session, semaphore, urls[ip]) for _, ip in reads))
        for (target, _), (load, error) in zip(reads, answers, strict=True):
            target.loads.append(load)
            if error:
                target.errors.append(error)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        for target in targets:
            decision = self._decide(target, now)
            if decision is not None and decision.desired != target.current:
                await loop.run_in_executor(None, self._record, target, decision)
        self._forget_others({(t.mdep.metadata.namespace or "", t.mdep.metadata.name) for t in targets})
        metrics.AUTOSCALER_DEPLOYMENTS.set(len(targets))

    def _targets(self) -> list[_Target]:
        """The deployments to decide for this round, with the replicas to read (from the store; recomputed only when
        a store it reads changed since the last round)."""
        cache = self.ctx.cache
        versions = tuple(cache[kind].version for kind in self._STORES)
        if self._memo is None or self._memo[0] != versions:
            self._memo = (versions, self._find_targets())
        return [_Target(mdep, raw, current, replicas, [], []) for mdep, raw, current, replicas in self._memo[1]]

    _STORES = ("ModelDeployment", "Pod", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler")

    def _find_targets(self) -> list[tuple[ModelDeployment, dict, int, Replicas]]:
        cache, out = self.ctx.cache, []
        pods_by_namespace: dict[str, dict[str, list[dict]]] = {}
        for raw in cache["ModelDeployment"].list():
            if not (raw.get("spec") or {}).get("autoscaling") or raw["metadata"].get("deletionTimestamp"):
                continue
            try:
                mdep = cache.parse(ModelDeployment, raw)
            except InvalidObject:
                continue
            ns, name = mdep.metadata.namespace or "", mdep.metadata.name
            if external_autoscalers(cache["HorizontalPodAutoscaler"].list(ns), name):
                continue  # reported by the reconciler (ScalingActive=False): the count holds
            if ns not in pods_by_namespace:  # each namespace's pods grouped by deployment, once
                grouped: dict[str, list[dict]] = {}
                for pod in cache["Pod"].list(ns):
                    owner = ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_MODEL_DEPLOYMENT)
                    if owner:
                        grouped.setdefault(owner, []).append(pod)
                pods_by_namespace[ns] = grouped
            pods = pods_by_namespace[ns].get(name, [])
            replicas = replicas_of(pods, functools.partial(self._lookup, ns), mdep.metadata.uid or "")
            out.append((mdep, raw, wanted_replicas(mdep), replicas))
        return out

    def _lookup(self, namespace: str, kind: str, name: str) -> dict | None:
        return self.ctx.cache[kind].get(name, namespace)

    async def _read(self, session: aiohttp.ClientSession, semaphore: asyncio.Semaphore,
                    url: URL) -> tuple[Load | None, str | None]:
        """One replica's load, or why not."""
        async with semaphore:
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status != 200:
                        metrics.AUTOSCALER_READS.labels("http_error").inc()
                        return None, f"HTTP {response.status} from {url}"
                    scanner, read = MetricsScanner(), 0
                    async for chunk in response.content.iter_chunked(CHUNK):
                        read += len(chunk)
                        if read > self.config.max_response_bytes:
                            metrics.AUTOSCALER_READS.labels("too_large").inc()
                            return None, f"{url} answered more than {self.config.max_response_bytes} bytes"
                        scanner.feed(chunk)
                    metrics.AUTOSCALER_READS.labels("ok").inc()
                    return scanner.load(), None
            except TimeoutError:
                metrics.AUTOSCALER_READS.labels("timeout").inc()
                return None, f"{url} did not answer within {self.config.timeout_seconds:g} s"
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                metrics.AUTOSCALER_READS.labels("error").inc()
                return None, f"{url}: {type(exc).__name__}: {exc}"[:300]

    # Deciding -------------------------------------------------------------------------------------------------------

    def _decide(self, target: _Target, now: float) -> ScaleDecision | None:
        mdep, key = target.mdep, target.mdep.key
        spec = mdep.spec.autoscaling
        assert spec is not None
        uid = mdep.metadata.uid or ""
        known = self._histories.get(key)
        history = known[1] if known is not None and known[0] == uid else History.starting_at(now, target.current)
        obs = observe(target.loads, spec.metric, target.replicas.starting)
        decision = decide(spec, target.current, obs, history, now, scale_down_allowed=not target.replicas.rolling)
        self._histories[key] = (uid, decision.history)
        self._report(target, decision)
        labels = (mdep.metadata.namespace or "", mdep.metadata.name)
        metrics.AUTOSCALER_DESIRED.labels(*labels).set(decision.desired)
        if decision.recommendation.value is not None:
            metrics.AUTOSCALER_VALUE.labels(*labels, spec.metric).set(decision.recommendation.value)
        granted = self.ctx.state.decision(key, uid)
        metrics.AUTOSCALER_GRANTED.labels(*labels).set(granted.replicas if granted is not None else 0)
        self._series.add(labels)
        return decision if decision.recommendation.replicas is not None else None

    def _report(self, target: _Target, decision: ScaleDecision) -> None:
        """What the reconciler says in ScalingActive/ScalingLimited; a change wakes it."""
        mdep, current = target.mdep, target.current
        if decision.recommendation.replicas is not None:
            report = AutoscalerReport(True, FOLLOWING_LOAD, "", capped_at_max=decision.capped_at_max)
        elif not target.replicas.ready:
            report = AutoscalerReport(False, NO_READY_REPLICA,
                                      f"no ready replica to read the load from: the count holds at {current}")
        else:
            report = AutoscalerReport(False, METRICS_UNAVAILABLE,
                                      f"no ready replica answered with {mdep.spec.autoscaling.metric} "  # type: ignore[union-attr]
                                      f"({target.errors[0] if target.errors else 'the engine does not report it'})"
                                      f": the count holds at {current}")
        if self.ctx.state.set_autoscaler_report(mdep.key, mdep.metadata.uid, report):
            self.ctx.wake("ModelDeployment", mdep.metadata.namespace, mdep.metadata.name)

    def _record(self, target: _Target, decision: ScaleDecision) -> None:
        """The new count in ``status.autoscaling`` (only the autoscaler writes it), and an Event."""
        mdep, rec = target.mdep, decision.recommendation
        spec = mdep.spec.autoscaling
        assert spec is not None and rec.value is not None
        measured = sum(1 for load in target.loads if load is not None)
        try:
            self.ctx.kube.patch_status("ModelDeployment", mdep.metadata.name, mdep.metadata.namespace, {
                "autoscaling": {"desiredReplicas": decision.desired, "metricValue": round(rec.value, 4),
                                "measuredReplicas": measured, "lastScaleTime": now_rfc3339()}})
        except Exception as exc:  # noqa: BLE001 — the next round decides (and writes) again
            log.warning("%s: could not record %d replicas: %s", mdep.key, decision.desired, exc)
            return
        up = decision.desired > target.current
        metrics.AUTOSCALER_DECISIONS.labels("up" if up else "down").inc()
        log.info("%s: %d → %d replicas (%s %.3g per ready replica, %d read, target %g)", mdep.key, target.current,
                 decision.desired, spec.metric, rec.value, measured, spec.target)
        self.ctx.events(target.raw, "Normal", "ScaledUp" if up else "ScaledDown",
                        f"desired replicas {target.current} → {decision.desired}: {spec.metric} {rec.value:.3g} per "
                        f"ready replica ({measured} read), target {spec.target:g}")

    def _forget_others(self, live: set[tuple[str, str]]) -> None:
        """Deployments no longer autoscaled (or gone): their history, report and gauges go."""
        for key in [k for k in self._histories if tuple(k.split("/", 1)) not in live]:
            del self._histories[key]
            self.ctx.state.set_autoscaler_report(key, None, None)
        for labels in self._series - live:
            for gauge in (metrics.AUTOSCALER_DESIRED, metrics.AUTOSCALER_GRANTED):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
            for metric in ("waitingRequests", "runningRequests", "kvCacheUsage"):
                try:
                    metrics.AUTOSCALER_VALUE.remove(*labels, metric)
                except KeyError:
                    pass
        self._series &= live


def _url(ip: str, port: int) -> URL:
    host = f"[{ip}]" if ":" in ip else ip
    return URL(f"http://{host}:{port}/metrics?{QUERY}", encoded=True)
