"""GPU time per tenant and class (core/usage.py), kept by the active operator: every ``TICK_SECONDS`` it reads the
ledgers (Tenants' ``status.reservations``) and the ready replicas of each tenant's ModelDeployments from the store,
integrates, and writes the period's GPU-hours into ``Tenant.status.usage`` (a merge patch of those fields only), from
which a restarted operator continues. A change of the ledger is written by admission, with the ledger (``fold``); the
meter writes when the reserved GPUs changed otherwise (at most every
``CHANGE_WRITE_SECONDS``, so a burst of admissions is not a burst of writes); when only the serving ones changed, once
they have not changed for ``SERVING_SETTLE_SECONDS`` (a burst of replicas turning ready is one write), else at most
every ``SERVING_CHANGE_WRITE_SECONDS``; and otherwise every ``PERSIST_SECONDS`` — with unchanged GPUs the stored
figures already let a restarted operator integrate the time it was away exactly, so the periodic write only refreshes
what `kubectl get tenant -o yaml` shows (every minute for 100 tenants was 1.7 requests/s of an idle operator).
Prometheus reads the counters ``llmos_tenant_gpu_seconds_{reserved,serving}_total`` (the period's GPU-seconds,
integrated up to the instant of the scrape: exact between two looks, since what held in between is known) and the gauges
``llmos_tenant_gpus_{reserved,serving}``."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.usage import TenantGPUTime, reserved_gpus
from .state import Context

log = logging.getLogger("llmos.controller.usage")
TICK_SECONDS = float(os.environ.get("LLMOS_USAGE_TICK_SECONDS", "5"))
PERSIST_SECONDS = float(os.environ.get("LLMOS_USAGE_PERSIST_SECONDS", "900"))
CHANGE_WRITE_SECONDS = float(os.environ.get("LLMOS_USAGE_CHANGE_WRITE_SECONDS", "2"))
# Serving GPUs follow every replica turning ready (a trickle of changes while a burst of deployments starts, each a
# Tenant write at 2 s); what is billed is the reserved GPUs, so a change of the serving ones alone waits longer. After
# an operator crash the serving GPU-seconds may be off by at most this window times the GPUs that changed in it.
SERVING_CHANGE_WRITE_SECONDS = float(os.environ.get("LLMOS_USAGE_SERVING_WRITE_SECONDS", "60"))
SERVING_SETTLE_SECONDS = 5.0  # ...or sooner, once the serving GPUs have not changed for this long


class UsageMeter(Collector):
    def __init__(self, ctx: Context, clock=time.time):
        self.ctx, self.clock = ctx, clock
        self._lock = threading.Lock()
        self._states: dict[str, TenantGPUTime] = {}
        self._persisted: dict[str, tuple[float, tuple]] = {}  # tenant → (when, the GPUs then) as last written
        self._serving_changed: dict[str, float] = {}  # tenant → when its serving GPUs last changed
        self._serving: dict[str, tuple[int, dict[str, int]]] = {}  # namespace → (its store version, serving GPUs)
        self._reserved: dict[str, tuple[str | None, dict[str, int]]] = {}  # tenant → (resourceVersion, ledger GPUs)
        self._stop = threading.Event()

    # What holds now ---------------------------------------------------------------------------------------------

    def observe(self) -> dict[str, tuple[dict[str, int], dict[str, int], dict]]:
        """tenant → (GPUs reserved per class, GPUs serving per class, its stored usage status)."""
        store = self.ctx.cache["ModelDeployment"]
        serving: dict[str, dict[str, int]] = {}
        seen_namespaces = set()
        for ns, tenant in self.ctx.cache.labelled_namespaces().items():
            seen_namespaces.add(ns)
            version = store.namespace_version(ns)
            known = self._serving.get(ns)
            if known is None or known[0] != version:  # only namespaces whose deployments changed are read again
                known = self._serving[ns] = (version, _serving_gpus(store.list(ns)))
            per = serving.setdefault(tenant, {})
            for gpu_class, gpus in known[1].items():
                per[gpu_class] = per.get(gpu_class, 0) + gpus
        for ns in set(self._serving) - seen_namespaces:
            del self._serving[ns]
        out = {}
        for raw in self.ctx.cache["Tenant"].list():
            meta, status = raw["metadata"], raw.get("status") or {}
            name, version = meta["name"], meta.get("resourceVersion")
            ledger = self._reserved.get(name)
            if ledger is None or ledger[0] != version:
                ledger = self._reserved[name] = (version, reserved_gpus(status.get("reservations") or {}))
            out[name] = (ledger[1], serving.get(name, {}), status.get("usage") or {})
        for name in set(self._reserved) - set(out):
            del self._reserved[name]
        return out

    # The loop ---------------------------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        seen = self.observe()
        with self._lock:
            for name in set(self._states) - set(seen):  # a Tenant deleted: its series go with it
                self._states.pop(name, None)
                self._persisted.pop(name, None)
                self._serving_changed.pop(name, None)
            for name, (reserved, serving, stored) in seen.items():
                state = self._states.get(name)
                if state is None:
                    state = TenantGPUTime.from_status(stored) or TenantGPUTime.starting(now)
                elif state.reserved == reserved and state.serving == serving:
                    continue  # integrating is lazy: a later advance counts the same (integrating every tenant
                    # at every change of any: ~13 % of the operator's GIL samples in a burst of 1,000)
                if state.serving != serving:
                    self._serving_changed[name] = now
                self._states[name] = state.advance(now, reserved, serving)
            # written when `_due` says: a restarted operator integrates the time it was away with the GPUs last
            # written, which are then the ones that held
            due = [n for n, s in self._states.items() if self._due(n, s, now)]
        for name in due:
            self.persist(name, now)

    def _due(self, name: str, state: TenantGPUTime, now: float) -> bool:
        written_at, gpus = self._persisted.get(name, (0.0, ((), ())))
        reserved, serving = _gpus(state)
        if gpus[0] != reserved:
            return now - written_at >= CHANGE_WRITE_SECONDS
        if gpus[1] != serving:
            # once its replicas stopped changing (a burst of them turning ready is one write), else at the latest
            settled = now - self._serving_changed.get(name, 0.0) >= SERVING_SETTLE_SECONDS
            return now - written_at >= (CHANGE_WRITE_SECONDS if settled else SERVING_CHANGE_WRITE_SECONDS)
        return now - written_at >= PERSIST_SECONDS

    def fold(self, name: str, stored: dict, reserved: dict[str, int]) -> TenantGPUTime:
        """The GPU time to write with admission's ledger write of Tenant ``name`` (whose reserved GPUs become
        ``reserved``): integrated up to now with what held, then holding the new GPUs — one Tenant write where a
        change of the ledger was two (admission's, then this meter's; ~300 of the 540 Tenant writes of a
        1,000-deployment burst). ``stored``: the usage status as read. Recorded by :meth:`folded` once written."""
        now = self.clock()
        with self._lock:
            state = self._states.get(name) or TenantGPUTime.from_status(stored) or TenantGPUTime.starting(now)
        return state.advance(now, reserved)

    def folded(self, name: str, state: TenantGPUTime) -> None:
        """Admission wrote ``state`` (from :meth:`fold`): what the meter holds and has persisted. A look that came
        in between (it read the ledger of before) is kept; the next look advances it to the new ledger."""
        with self._lock:
            current = self._states.get(name)
            if current is None or current.at <= state.at:
                self._states[name] = state
            self._persisted[name] = (state.at, _gpus(state))

    def persist(self, name: str, now: float | None = None) -> None:
        with self._lock:
            state = self._states.get(name)
            if state is None:
                return
            state = self._states[name] = state.advance(self.clock() if now is None else now)
        try:
            self.ctx.kube.patch_status("Tenant", name, None, {"usage": state.to_status()})
            with self._lock:
                self._persisted[name] = (state.at, _gpus(state))
        except Exception as exc:  # noqa: BLE001 — the next tick writes again; the counters are unaffected
            log.warning("could not write the GPU time of tenant %s: %s", name, exc)

    def start(self) -> None:
        threading.Thread(target=self._run, name="llmos-usage", daemon=True).start()

    def register(self) -> None:
        """Serve the counters on the process's /metrics (the operator process; not in-memory test managers)."""
        REGISTRY.register(self)

    def stop(self) -> None:
        self._stop.set()

    def _versions(self) -> tuple[int, int, int]:
        return (self.ctx.cache["Tenant"].version, self.ctx.cache["ModelDeployment"].version,
                self.ctx.cache["Namespace"].version)

    def _run(self) -> None:
        """A look at every change of what is integrated (a ledger written, a replica ready: the time between the
        change and the look is counted with what held before, so looks follow changes closely), else every tick."""
        seen, last = None, 0.0
        while not self._stop.wait(0.2):
            versions = self._versions()
            if versions == seen and time.monotonic() - last < TICK_SECONDS:
                continue
            seen, last = versions, time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 — the next look tries again
                log.warning("metering GPU time failed", exc_info=True)

    # Prometheus -------------------------------------------------------------------------------------------------

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        now = self.clock()
        with self._lock:
            states = {n: s.advance(now) for n, s in self._states.items()}  # up to this instant, not stored
        labels = ["tenant", "gpu_class"]
        res = CounterMetricFamily("llmos_tenant_gpu_seconds_reserved", "GPU-seconds the tenant's ledger reserved "
                                  "this period (a calendar month, UTC)", labels=labels)
        srv = CounterMetricFamily("llmos_tenant_gpu_seconds_serving", "GPU-seconds of the tenant's ready replicas "
                                  "this period (a calendar month, UTC)", labels=labels)
        g_res = GaugeMetricFamily("llmos_tenant_gpus_reserved", "GPUs the tenant's ledger reserves", labels=labels)
        g_srv = GaugeMetricFamily("llmos_tenant_gpus_serving", "GPUs of the tenant's ready replicas", labels=labels)
        for name, s in sorted(states.items()):
            for cls in sorted(s.classes()):
                res.add_metric([name, cls], s.reserved_seconds.get(cls, 0.0))
                srv.add_metric([name, cls], s.serving_seconds.get(cls, 0.0))
                g_res.add_metric([name, cls], s.reserved.get(cls, 0))
                g_srv.add_metric([name, cls], s.serving.get(cls, 0))
        yield from (res, srv, g_res, g_srv)


def _serving_gpus(deployments: list[dict]) -> dict[str, int]:
    """GPUs of the ready replicas of one namespace's ModelDeployments, per class."""
    out: dict[str, int] = {}
    for raw in deployments:
        spec, status = raw.get("spec") or {}, raw.get("status") or {}
        gpu = spec.get("gpu") or {}
        ready = int(status.get("readyReplicas") or 0)
        if ready and gpu.get("class"):
            out[gpu["class"]] = out.get(gpu["class"], 0) + ready * int(gpu.get("count") or 0)
    return out


def _gpus(state: TenantGPUTime) -> tuple:
    return tuple(sorted(state.reserved.items())), tuple(sorted(state.serving.items()))
