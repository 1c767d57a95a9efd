"""The runtime's own Prometheus metrics (prefix ``llmos_runtime_``), in a registry of their own so that they can be
appended to the engine's exposition without clashing with its ``process_*``/``python_*`` series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest


class RuntimeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.ready = Gauge("llmos_runtime_ready", "1 when /readyz answers 200", registry=r)
        self.draining = Gauge("llmos_runtime_draining", "1 after SIGTERM", registry=r)
        self.engine_state = Enum(
            "llmos_runtime_engine_state", "the engine watchdog's judgement (hung: requests in flight and no token; "
            "silent: no /health answer; unhealthy: /health said so)", states=["ok", "hung", "silent", "unhealthy"],
            registry=r,
        )
        self.engine_stalled_seconds = Gauge(
            "llmos_runtime_engine_stalled_seconds", "seconds with requests waiting on the engine and no token "
            "generated (0 while idle or progressing)", registry=r,
        )
        self.engine_waiting_requests = Gauge(
            "llmos_runtime_engine_waiting_requests", "requests waiting on the engine, as the watchdog last saw them",
            registry=r,
        )
        self.verified = Gauge("llmos_runtime_model_verified", "1 when the model's signature was verified", registry=r)
        self.phase_seconds = Gauge(
            "llmos_runtime_startup_phase_seconds", "duration of each startup phase", ["phase"], registry=r
        )
        self.adapters_loaded = Gauge("llmos_runtime_adapters_loaded", "adapters currently loaded", registry=r)
        self.adapters_failed = Gauge("llmos_runtime_adapters_failed", "adapters wanted but not loaded", registry=r)
        self.adapters_foreign_unloaded = Counter(
            "llmos_runtime_adapters_foreign_unloaded",
            "adapters found loaded in the engine that the runtime did not verify and load, unloaded", registry=r
        )
        self.adapter_loads = Counter(
            "llmos_runtime_adapter_loads", "adapter load attempts, by result", ["result"], registry=r
        )
        self.adapter_load_seconds = Histogram(
            "llmos_runtime_adapter_load_seconds",
            "fetch + verify + engine load of one adapter",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )

    def exposition(self, names: list[str] | None = None) -> bytes:
        """The runtime's series (``names``: only those, as ``/metrics?name[]=…`` asks)."""
        return generate_latest(self.registry.restricted_registry(names) if names else self.registry)
