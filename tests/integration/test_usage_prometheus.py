"""GPU time billed from a real Prometheus (Debian's package) scraping the operator: a tenant's deployment admitted,
scaled up, the operator SIGKILLed and restarted, the deployment deleted; `llmos usage` prints GPU-hours reserved
equal to the integral of the ledger the test watched (Tenant.status.reservations over time) within 1 %, and the
period's GPU-hours in Tenant.status.usage carry on across the restart."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import threading
import time

import pytest

from tests.support.prometheus import Prometheus
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


class LedgerWatch:
    """Polls the Tenant's ledger every 50 ms; keeps (time, GPUs reserved) at each change."""

    def __init__(self, objects, tenant: str):
        self.objects, self.tenant = objects, tenant
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _gpus(self) -> int:
        res = (self.objects.get("tenants", self.tenant).get("status") or {}).get("reservations") or {}
        return sum(int(e.get("gpus") or 0) for e in res.values())

    def _run(self):
        last = None
        while not self._stop.is_set():
            try:
                g = self._gpus()
            except Exception:  # noqa: BLE001 — the API server is there; try again
                g = last
            if g != last:
                self.changes.append((time.time(), g))
                last = g
            time.sleep(0.05)

    def integral(self, start: float, end: float) -> float:
        total, points = 0.0, self.changes + [(end, 0)]
        for (t0, g), (t1, _) in zip(points, points[1:], strict=False):
            total += g * max(0.0, min(t1, end) - max(t0, start))
        return total

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def _usage_csv(prom: Prometheus, tenant: str, start: float, end: float) -> list[dict]:
    from datetime import UTC, datetime

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    out = subprocess.run([sys.executable, "-m", "llmos_operator.cli", "usage", "--prometheus", prom.url,
                          "--tenant", tenant, "--from", iso(start), "--to", iso(end), "--csv"],
                         capture_output=True, text=True, check=True).stdout
    return list(csv.DictReader(io.StringIO(out)))


def test_gpu_hours_billed_equal_the_ledgers_integral_across_an_operator_restart(objects, namespace, operator,
                                                                                 tmp_path):
    prom = Prometheus(tmp_path / "prometheus", {"operator": [f"127.0.0.1:{operator.metrics_port}"]}).start()
    try:
        objects.tenant(gpus={"h100": 8})
        objects.model()
        with LedgerWatch(objects, namespace) as ledger:
            start = time.time()
            time.sleep(3)
            objects.deployment("chat", replicas=2, count=2)  # 4 GPUs
            wait_for(lambda: ledger.changes and ledger.changes[-1][1] == 4, timeout=30, message="4 GPUs reserved")
            time.sleep(20)
            objects.patch("modeldeployments", "chat", {"spec": {"replicas": 3}})  # 6
            wait_for(lambda: ledger.changes[-1][1] == 6, timeout=30, message="6 GPUs reserved")
            time.sleep(10)
            operator.kill()  # GPUs stay reserved while no operator runs
            time.sleep(10)
            operator.start()
            time.sleep(10)
            objects.delete("modeldeployments", "chat")
            wait_for(lambda: ledger.changes[-1][1] == 0, timeout=60, message="nothing reserved")
            time.sleep(5)
            end = time.time()
        time.sleep(3)  # Prometheus scrapes past the end
        rows = [r for r in _usage_csv(prom, namespace, start, end) if r["section"] == "gpu"]
        billed = {r["gpu_class"]: (float(r["gpu_hours_reserved"]), float(r["gpu_hours_serving"])) for r in rows}
        integral = ledger.integral(start, end) / 3600
        print(f"\nledger integral {integral * 3600:.1f} GPU-s, billed {billed['h100'][0] * 3600:.1f} GPU-s reserved, "
              f"{billed['h100'][1] * 3600:.1f} GPU-s serving; ledger changes "
              f"{[(round(t - start, 1), g) for t, g in ledger.changes]}")
        assert billed["h100"][0] == pytest.approx(integral, rel=0.01)
        assert 0 <= billed["h100"][1] <= billed["h100"][0] * 1.01
        usage = objects.get("tenants", namespace)["status"]["usage"]
        assert usage["period"] == time.strftime("%Y-%m", time.gmtime()) and usage["gpuHours"]["h100"]["reserved"] > 0
    finally:
        prom.stop()
