"""Admission decides again only what an event touched (issue 13): after any sequence of changes, each followed by
the scoped pass its events ask for, a full pass over every tenant finds nothing to change — same decisions, same
ledgers, no write. The controller runs on an in-memory store and a fake API (tests/support/admission_world.py);
nothing here needs a cluster."""

from __future__ import annotations

import random

import pytest

from tests.support.admission_world import World

pytestmark = pytest.mark.unit


def _state(world: World) -> tuple:
    ledgers = {t["metadata"]["name"]: (t.get("status") or {}).get("reservations") or {}
               for t in world.store["Tenant"].list()}
    # The message of an admitted decision says what the tenant used when it was admitted; the rest must match.
    decisions = {k: (d.tenant, d.admitted, d.reason, d.reserved, d.replicas, d.queue_position, d.generation, d.surge)
                 for k, d in world.decisions.items()}
    return decisions, ledgers


def test_scoped_passes_leave_nothing_for_a_full_pass_to_change():
    rng = random.Random(1313)
    world = World()
    tenants = {f"t{i}": [f"t{i}-a", f"t{i}-b"] for i in range(4)}
    for name, namespaces in tenants.items():
        world.tenant(name, namespaces, {"h100": rng.choice((4, 6, 8)), "l4": rng.choice((2, 4))})
    world.run_admission()  # the first pass decides everything
    live: list[tuple[str, str]] = []
    for step in range(120):
        action = rng.random()
        if action < 0.5 or not live:
            ns = rng.choice(rng.choice(list(tenants.values())))
            name = f"d{step}"
            world.deploy(ns, name, rng.choice((1, 1, 2)), rng.choice((1, 2)), rng.choice(("h100", "l4")))
            live.append((ns, name))
        elif action < 0.7:
            ns, name = rng.choice(live)
            spec = world.store["ModelDeployment"].get(name, ns)["spec"]
            world.deploy(ns, name, rng.choice((0, 1, 2, 3)), spec["gpu"]["count"], spec["gpu"]["class"])
        elif action < 0.9:
            ns, name = live.pop(rng.randrange(len(live)))
            world.delete(ns, name)
        else:
            name = rng.choice(list(tenants))
            world.tenant(name, tenants[name], {"h100": rng.choice((2, 4, 8)), "l4": rng.choice((0, 2, 4))},
                         priority=rng.choice((0, 10)))
            world.manager.ctx.admit_again(tenants=(name, None))  # what the Tenant reconciler asks for
        scoped = world.run_admission()
        # Only the touched tenant's ledger (and its namespaces' backstops) was written.
        touched = {w[3] for w in scoped if w[1] == "Tenant"}
        assert len(touched) <= 1, (step, scoped)
        state = _state(world)
        world.manager.ctx.scope.mark(everything=True)
        assert world.run_admission() == [], f"step {step}: a full pass still had something to write"
        assert _state(world) == state, f"step {step}: a full pass decided otherwise"
    admitted = [d for d in world.decisions.values() if d.admitted]
    assert len(admitted) > 10 and len(world.decisions) == len(live)


def test_a_failed_pass_gives_its_scope_back():
    world = World()
    world.tenant("t0", ["t0-a"], {"h100": 4})
    world.run_admission()
    world.deploy("t0-a", "d", 1, 2, "h100")

    def refuse(*args, **kwargs):
        raise RuntimeError("the API server is away")

    world.kube.patch_status, patch = refuse, world.kube.patch_status
    with pytest.raises(RuntimeError):
        world.run_admission()
    world.kube.patch_status = patch
    world.run_admission()  # the retry, as the work queue would run it
    assert world.decisions["t0-a/d"].admitted


def test_a_deleted_tenant_leaves_no_decision_behind():
    world = World()
    world.tenant("t0", ["t0-a"], {"h100": 4})
    world.tenant("t1", ["t1-a"], {"h100": 4})
    world.run_admission()
    world.deploy("t0-a", "d", 1, 2, "h100")
    world.deploy("t1-a", "e", 1, 2, "h100")
    world.run_admission()
    world.delete("t0-a", "d")
    world.delete(None, "t0", kind="Tenant")
    world.manager.ctx.admit_again(everything=True)  # what the Tenant reconciler asks for when its Tenant is gone
    world.run_admission()
    decisions = world.decisions
    assert set(decisions) == {"t1-a/e"} and decisions["t1-a/e"].admitted


def test_a_departing_pod_keeps_its_gpus_until_its_deletion_runs_a_pass_that_frees_them():
    world = World()
    world.tenant("t", ["t-a"], {"h100": 4})
    world.deploy("t-a", "first", 1, 4, "h100")
    world.run_admission()
    world.pod("t-a", "first", "first-0", 4)
    world.deploy("t-a", "second", 1, 4, "h100")
    world.run_admission()
    world.delete("t-a", "first")  # its pod is still terminating
    world.run_admission()
    ledger = world.store["Tenant"].get("t")["status"]["reservations"]
    # Counted by the pod, with the class of the node it runs on.
    assert ledger == {"t-a/first-0#pod": {"class": "h100", "gpus": 4, "uid": ledger["t-a/first-0#pod"]["uid"],
                                          "kind": "pod"}}
    assert not world.decisions["t-a/second"].admitted
    world.pod("t-a", "first", "first-0", 4, event="DELETED")
    world.handle("GPUPods", "t-a")  # the pod's event queues this; it asks admission to count again
    world.drain()
    ledger = world.store["Tenant"].get("t")["status"]["reservations"]
    assert set(ledger) == {"t-a/second"} and world.decisions["t-a/second"].admitted


def test_admission_pending_is_said_only_when_admission_is_slow(monkeypatch):
    # Issue 13: a 1,000-deployment burst wrote `AdmissionPending` 1,000 times, each followed within moments by the
    # decision's own status. Now only a generation still undecided after the grace period gets it.
    import time

    from llmos_operator.controller import model_deployment

    monkeypatch.setattr(model_deployment, "ADMISSION_PENDING_GRACE_SECONDS", 0.2)
    world = World()
    world.tenant("t", ["t-a"], {"h100": 4})
    world.run_admission()

    def reconcile(name: str) -> list[tuple]:
        before = len(world.kube.writes)
        world.manager.handle(("ModelDeployment", "t-a", name))
        return [w for w in world.kube.writes[before:] if w[:2] == ("status", "ModelDeployment")]

    def reasons(name: str) -> list[str]:
        obj = world.store["ModelDeployment"].get(name, "t-a")
        return [c["reason"] for c in (obj.get("status") or {}).get("conditions") or []]

    world.deploy("t-a", "quick", 1, 1, "h100")
    assert reconcile("quick") == []  # undecided, within the grace: nothing written yet
    world.run_admission()
    reconcile("quick")
    assert "AdmissionPending" not in reasons("quick")

    world.deploy("t-a", "slow", 1, 1, "h100")
    assert reconcile("slow") == []
    time.sleep(0.25)  # admission has not run: past the grace, the deployment says it waits
    assert reconcile("slow") == [("status", "ModelDeployment", "t-a", "slow")]
    assert reasons("slow") == ["AdmissionPending"]


def test_what_was_applied_is_remembered_per_deployment_and_forgotten_with_it():
    # No fixed cap: at 10,000 deployments a cap of 50,000 children was reached, and clearing it re-applied every child.
    world = World()
    world.tenant("t", ["t-a"], {"h100": 4})
    world.deploy("t-a", "d", 1, 1, "h100")
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "d", "namespace": "t-a", "labels": {"llmos.dev/model-deployment": "d"}},
               "spec": {"ports": [{"port": 8000}]}}
    owner = {"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "d",
                                                                                      "uid": "uid-mdep-t-a-d"}}

    writer = world.manager.model_deployments.children

    def apply() -> int:
        before = len(world.kube.writes)
        writer.apply(service, owner)
        return len(world.kube.writes) - before

    assert apply() == 1
    assert apply() == 0  # the same rendering, the stored child unchanged: nothing written
    world.delete("t-a", "d")
    world.manager.handle(("ModelDeployment", "t-a", "d"))  # forgets what it applied for "d"
    assert apply() == 1


def test_reconciling_an_unchanged_tenant_asks_no_admission_pass():
    # A resync reconciles every Tenant every 10 minutes; at 1,000 tenants each of those reconciles ran an admission
    # pass that listed every deployment, and kept an idle operator at 24 % of a core.
    from llmos_operator.controller.state import ADMISSION

    world = World()
    world.tenant("t", ["t-a"], {"h100": 4})
    queue = world.manager.queue

    def reconcile_tenant() -> set:
        """What the reconcile queued."""
        while (key := queue.get(timeout=0)) is not None:
            queue.done(key)
        world.manager.handle(("Tenant", "t"))
        return set(queue._queued)

    assert ADMISSION in reconcile_tenant()  # first reconcile: admission decides the tenant
    world.run_admission()
    assert ADMISSION not in reconcile_tenant()  # nothing it reads changed
    world.tenant("t", ["t-a"], {"h100": 8})  # a new quota (generation 2)
    assert ADMISSION in reconcile_tenant()
