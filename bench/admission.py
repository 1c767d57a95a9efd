"""What one admission pass costs the operator, deciding everything against deciding only the tenant an event touched
(issue 13: "admission that costs in proportion to the change"), at growing numbers of ModelDeployments.

The controller runs on an in-memory store with a fake API (tests/support/admission_world.py): this measures the
operator's own CPU per pass — parsing, `quota.admit`, Tenant status, decisions — not the API server. Both passes
run side by side in one process, several times each; the median is printed.

    .venv/bin/python bench/admission.py                 # 100, 1,000 and 10,000 deployments (10 per tenant)
    .venv/bin/python bench/admission.py --sizes 1000 --reps 9
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "runtime")]

from tests.support.admission_world import World  # noqa: E402


def measure(deployments: int, reps: int) -> dict[str, float]:
    rng = random.Random(deployments)
    tenants = max(1, deployments // 10)
    world = World()
    for i in range(tenants):
        world.tenant(f"t{i}", [f"t{i}-a"], {"h100": 40, "l4": 20})
    world.run_admission()
    for i in range(deployments):
        world.deploy(f"t{i % tenants}-a", f"d{i}", 1, rng.choice((1, 2)), rng.choice(("h100", "l4")))
    started = time.perf_counter()
    world.run_admission()
    first = time.perf_counter() - started
    full, scoped = [], []
    for rep in range(reps):
        # A full pass with nothing to change (a resync), then one new deployment decided on its own.
        world.manager.ctx.scope.mark(everything=True)
        started = time.perf_counter()
        world.run_admission()
        full.append(time.perf_counter() - started)
        world.deploy(f"t{rep % tenants}-a", f"new{rep}", 1, 1, "h100")
        started = time.perf_counter()
        world.run_admission()
        scoped.append(time.perf_counter() - started)
    return {"tenants": tenants, "first_ms": first * 1000, "full_ms": statistics.median(full) * 1000,
            "scoped_ms": statistics.median(scoped) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"{'deployments':>11} {'tenants':>8} {'first pass ms':>14} {'full pass ms':>13} {'scoped pass ms':>15} "
          f"{'full/scoped':>12}")
    for size in args.sizes:
        r = measure(size, args.reps)
        print(f"{size:>11} {r['tenants']:>8} {r['first_ms']:>14.1f} {r['full_ms']:>13.1f} {r['scoped_ms']:>15.2f} "
              f"{r['full_ms'] / r['scoped_ms']:>11.0f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
