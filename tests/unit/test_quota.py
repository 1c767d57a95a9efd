"""Quota admission: decisions, order, scale-up/down, the ledger, restarts, and random sequences."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from llmos_operator.api import parse_as
from llmos_operator.api.types import ModelDeployment, Tenant
from llmos_operator.core.ownership import namespace_owners
from llmos_operator.core.quota import (
    ADMITTED,
    INSUFFICIENT_CAPACITY,
    NO_TENANT,
    QUOTA_EXCEEDED,
    TENANT_CORDONED,
    TOO_MANY_DEPLOYMENTS,
    UNKNOWN_GPU_CLASS,
    LedgerError,
    Request,
    TenantInfo,
    admit,
    gpu_summary,
    merge_ledgers,
    parse_ledger,
    reconcile_ledger,
    usage,
)

pytestmark = pytest.mark.unit

CLASSES = {"h100", "l4"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def req(name, gpus=1, replicas=1, cls="h100", tenant="a", ns=None, t=0, uid=None):
    return Request(namespace=ns or f"{tenant}-ns", name=name, uid=uid or f"uid-{name}", tenant=tenant,
                   gpu_class=cls, replicas=replicas, gpus_per_replica=gpus, created=T0 + timedelta(seconds=t))


def tenants(**quotas):
    return {name: TenantInfo(name=name, gpus=q) for name, q in quotas.items()}


def run(requests, ledger=None, tns=None, **kw):
    return admit(requests, ledger or {}, tns if tns is not None else tenants(a={"h100": 8, "l4": 4}), CLASSES, **kw)


def test_admits_what_fits_and_queues_the_rest_in_creation_order():
    r = run([req("x", gpus=4, t=0), req("y", gpus=4, t=1), req("z", gpus=2, t=2)])
    d = r.decisions
    assert d["a-ns/x"].reason == ADMITTED and d["a-ns/y"].reason == ADMITTED
    assert not d["a-ns/z"].admitted and d["a-ns/z"].reason == QUOTA_EXCEEDED
    assert d["a-ns/z"].queue_position == 1
    assert d["a-ns/z"].replicas == 0 and d["a-ns/z"].reserved == 0
    msg = d["a-ns/z"].message
    assert "h100" in msg and "needs 2" in msg and "uses 8 of its 8" in msg  # class, requested, used, limit
    assert r.ledger == {"a-ns/x": {"class": "h100", "gpus": 4, "uid": "uid-x"},
                        "a-ns/y": {"class": "h100", "gpus": 4, "uid": "uid-y"}}
    assert r.usage("a") == {"h100": 8}
    assert r.admitted_count("a") == 2 and r.queued_count("a") == 1


def test_demand_is_replicas_times_gpus():
    r = run([req("x", gpus=2, replicas=3)])
    assert r.decisions["a-ns/x"].reserved == 6 and r.decisions["a-ns/x"].replicas == 3
    r = run([req("x", gpus=3, replicas=3)])
    assert r.decisions["a-ns/x"].reason == QUOTA_EXCEEDED


def test_ties_on_creation_time_break_by_name():
    r = run([req("b", gpus=8), req("a", gpus=8)])
    assert r.decisions["a-ns/a"].admitted and not r.decisions["a-ns/b"].admitted


def test_strict_order_within_a_pool_and_backfill_option():
    reqs = [req("big", gpus=8, t=1), req("small", gpus=2, t=2)]
    ledger = {"a-ns/old": {"class": "h100", "gpus": 4, "uid": "uid-old"}}
    reqs.append(req("old", gpus=4, t=0))
    strict = run(reqs, ledger)
    assert strict.decisions["a-ns/big"].queue_position == 1
    small = strict.decisions["a-ns/small"]
    assert small.reason == QUOTA_EXCEEDED and small.queue_position == 2 and "waits behind a-ns/big" in small.message
    loose = run(reqs, ledger, backfill=True)
    assert loose.decisions["a-ns/small"].admitted


def test_other_classes_and_tenants_are_not_blocked():
    tns = tenants(a={"h100": 4, "l4": 4}, b={"h100": 4})
    r = run([req("big", gpus=8, t=0), req("l4", gpus=4, cls="l4", t=1), req("b1", gpus=4, tenant="b", t=2)], tns=tns)
    assert not r.decisions["a-ns/big"].admitted
    assert r.decisions["a-ns/l4"].admitted and r.decisions["b-ns/b1"].admitted


def test_queued_is_admitted_when_quota_frees():
    first = run([req("x", gpus=8, t=0), req("y", gpus=8, t=1)])
    assert not first.decisions["a-ns/y"].admitted
    # x is deleted: it is no longer among the requests.
    second = run([req("y", gpus=8, t=1)], first.ledger)
    assert second.decisions["a-ns/y"].admitted and second.dropped == ["a-ns/x"]


def test_quota_raise_admits_the_queue():
    first = run([req("x", gpus=8, t=0), req("y", gpus=4, t=1)])
    second = run([req("x", gpus=8, t=0), req("y", gpus=4, t=1)], first.ledger, tns=tenants(a={"h100": 12}))
    assert second.decisions["a-ns/y"].admitted


def test_scale_up_is_admitted_for_the_difference_only():
    first = run([req("x", gpus=2, replicas=2, t=0), req("y", gpus=2, replicas=1, t=1)])
    assert first.usage("a") == {"h100": 6}
    up = run([req("x", gpus=2, replicas=3, t=0), req("y", gpus=2, replicas=1, t=1)], first.ledger)
    assert up.decisions["a-ns/x"].reason == ADMITTED and up.ledger["a-ns/x"]["gpus"] == 6
    assert up.usage("a") == {"h100": 8}


def test_scale_up_that_does_not_fit_keeps_the_old_reservation():
    first = run([req("x", gpus=2, replicas=2, t=0), req("y", gpus=4, t=1)])
    up = run([req("x", gpus=2, replicas=4, t=0), req("y", gpus=4, t=1)], first.ledger)
    d = up.decisions["a-ns/x"]
    assert d.admitted and d.reason == QUOTA_EXCEEDED
    assert d.reserved == 4 and d.replicas == 2 and d.requested == 8
    assert "2 of 4 replicas granted" in d.message and "needs 4 more h100 GPUs" in d.message
    assert up.ledger["a-ns/x"]["gpus"] == 4
    assert up.admitted_count("a") == 2 and up.queued_count("a") == 0


def test_scale_down_frees_at_once_and_lets_the_queue_in():
    first = run([req("x", gpus=2, replicas=4, t=0), req("y", gpus=4, t=1)])
    assert not first.decisions["a-ns/y"].admitted
    down = run([req("x", gpus=2, replicas=2, t=0), req("y", gpus=4, t=1)], first.ledger)
    assert down.ledger["a-ns/x"]["gpus"] == 4 and down.decisions["a-ns/y"].admitted


def test_a_deleted_deployments_terminating_pods_keep_their_gpus_until_they_are_gone():
    """A terminating pod still has its GPUs: what it holds stays reserved (#releasing) and the queue waits."""
    first = run([req("x", gpus=8, t=0), req("y", gpus=8, t=1)])
    # x is deleted; its pod (8 GPUs) is still terminating
    draining = run([req("y", gpus=8, t=1)], first.ledger, held_by_pods={"a-ns/x": ("a", 8)})
    assert not draining.decisions["a-ns/y"].admitted and draining.decisions["a-ns/y"].reason == QUOTA_EXCEEDED
    assert draining.ledger == {"a-ns/x#releasing": {"class": "h100", "gpus": 8, "uid": "uid-x", "kind": "releasing"}}
    assert draining.ledger_for("a") == draining.ledger and draining.usage("a") == {"h100": 8}
    assert parse_ledger(draining.ledger) == draining.ledger  # it round-trips through Tenant status
    # the pod is gone: the entry goes, y is admitted
    gone = run([req("y", gpus=8, t=1)], draining.ledger, held_by_pods={})
    assert gone.decisions["a-ns/y"].admitted and "a-ns/x#releasing" not in gone.ledger


def test_a_scale_down_keeps_what_the_departing_replicas_hold_and_never_more_than_was_reserved():
    first = run([req("x", gpus=2, replicas=4, t=0), req("y", gpus=4, t=1)])
    down = run([req("x", gpus=2, replicas=2, t=0), req("y", gpus=4, t=1)], first.ledger,
               held_by_pods={"a-ns/x": ("a", 8)})
    assert down.ledger["a-ns/x"]["gpus"] == 4 and down.ledger["a-ns/x#releasing"]["gpus"] == 4
    assert not down.decisions["a-ns/y"].admitted
    # one departing pod left; pods that somehow hold more than was ever reserved add nothing
    half = run([req("x", gpus=2, replicas=2, t=0), req("y", gpus=4, t=1)], down.ledger,
               held_by_pods={"a-ns/x": ("a", 6)})
    assert half.ledger["a-ns/x#releasing"]["gpus"] == 2 and not half.decisions["a-ns/y"].admitted
    more = run([req("x", gpus=2, replicas=2, t=0)], half.ledger, held_by_pods={"a-ns/x": ("a", 20)})
    assert more.ledger["a-ns/x#releasing"]["gpus"] == 2
    # pods of a deployment the ledger never held (not admitted: none should run) reserve nothing
    none = run([req("y", gpus=4, t=1)], {}, held_by_pods={"a-ns/z": ("a", 4)})
    assert none.decisions["a-ns/y"].admitted and none.ledger == {"a-ns/y": {"class": "h100", "gpus": 4,
                                                                             "uid": "uid-y"}}


def test_a_releasing_entry_does_not_count_as_a_deployment():
    tns = {"a": TenantInfo(name="a", gpus={"h100": 8}, max_model_deployments=1)}
    first = run([req("x", gpus=2, t=0)], tns=tns)
    after = run([req("y", gpus=2, t=1)], first.ledger, tns=tns, held_by_pods={"a-ns/x": ("a", 2)})
    assert after.decisions["a-ns/y"].admitted and after.usage("a") == {"h100": 4}


def test_reasons():
    tns = {"a": TenantInfo("a", {"h100": 8}, max_model_deployments=1), "c": TenantInfo("c", {"h100": 8}, cordoned=True)}
    r = run([req("x", t=0), req("y", t=1), req("u", cls="a100", t=2, ns="a-ns"),
             req("n", tenant=None, ns="stray"), req("z", tenant="c")], tns=tns)
    d = r.decisions
    assert d["a-ns/x"].reason == ADMITTED
    assert d["a-ns/y"].reason == TOO_MANY_DEPLOYMENTS and "limit (quota.maxModelDeployments) is 1" in d["a-ns/y"].message
    assert d["a-ns/u"].reason == UNKNOWN_GPU_CLASS and "'a100'" in d["a-ns/u"].message
    assert d["stray/n"].reason == NO_TENANT and "stray" in d["stray/n"].message
    assert d["c-ns/z"].reason == TENANT_CORDONED
    assert all(not d[k].admitted for k in ("a-ns/y", "a-ns/u", "stray/n", "c-ns/z"))
    assert d["a-ns/y"].queue_position is None


def test_class_without_quota_means_zero():
    r = run([req("x", cls="l4")], tns=tenants(a={"h100": 8}))
    assert r.decisions["a-ns/x"].reason == QUOTA_EXCEEDED and "uses 0 of its 0 l4" in r.decisions["a-ns/x"].message


def test_cordoned_tenant_keeps_running_deployments_but_refuses_scale_up():
    first = run([req("x", gpus=2)])
    cordoned = {"a": TenantInfo("a", {"h100": 8}, cordoned=True)}
    same = run([req("x", gpus=2)], first.ledger, tns=cordoned)
    assert same.decisions["a-ns/x"].reason == ADMITTED
    up = run([req("x", gpus=2, replicas=2)], first.ledger, tns=cordoned)
    assert up.decisions["a-ns/x"].admitted and up.decisions["a-ns/x"].reason == TENANT_CORDONED
    assert up.decisions["a-ns/x"].replicas == 1


def test_lowering_quota_evicts_nothing():
    first = run([req("x", gpus=8)])
    low = run([req("x", gpus=8), req("y", gpus=1, t=1)], first.ledger, tns=tenants(a={"h100": 4}))
    assert low.decisions["a-ns/x"].admitted and not low.decisions["a-ns/y"].admitted
    assert "uses 8 of its 4" in low.decisions["a-ns/y"].message


def test_recreated_deployment_with_the_same_name_starts_over():
    first = run([req("x", gpus=8, uid="one"), req("y", gpus=8, t=1)])
    again = run([req("x", gpus=8, uid="two", t=5), req("y", gpus=8, t=1)], first.ledger)
    assert again.dropped == ["a-ns/x"]
    assert again.decisions["a-ns/y"].admitted and not again.decisions["a-ns/x"].admitted


def test_class_change_drops_the_old_reservation():
    first = run([req("x", gpus=4, cls="h100")])
    moved = run([req("x", gpus=4, cls="l4")], first.ledger)
    assert moved.ledger["a-ns/x"]["class"] == "l4" and moved.usage("a") == {"l4": 4}


def test_priority_matters_when_cluster_capacity_is_short():
    tns = {"lo": TenantInfo("lo", {"h100": 8}, priority=0), "hi": TenantInfo("hi", {"h100": 8}, priority=10)}
    reqs = [req("old", gpus=6, tenant="lo", t=0), req("new", gpus=6, tenant="hi", t=5)]
    r = run(reqs, tns=tns, capacity={"h100": 8})
    assert r.decisions["hi-ns/new"].admitted
    lo = r.decisions["lo-ns/old"]
    assert lo.reason == INSUFFICIENT_CAPACITY and "6 of the cluster's 8" in lo.message and lo.queue_position == 1
    assert run(reqs, tns=tns).decisions["lo-ns/old"].admitted  # without a capacity both fit


def test_admission_is_deterministic_and_idempotent():
    reqs = [req(f"d{i}", gpus=1 + i % 3, t=i % 4) for i in range(12)]
    one = run(reqs)
    assert run(list(reversed(reqs))) == one
    again = run(reqs, one.ledger)  # a restarted operator reading the persisted ledger
    assert again.ledger == one.ledger
    assert {k: d.admitted for k, d in again.decisions.items()} == {k: d.admitted for k, d in one.decisions.items()}


def test_thirty_concurrent_creations_against_eight_gpus():
    reqs = [req(f"m{i:02d}", gpus=1 + i % 2, t=0) for i in range(30)]
    r = run(reqs, tns=tenants(a={"h100": 8}))
    assert r.usage("a")["h100"] <= 8
    admitted = sorted(k for k, d in r.decisions.items() if d.admitted)
    # Same creation second: name order. m00(1) m01(2) m02(1) m03(2) = 6, m04(1) = 7, m05(2) does not fit → blocks.
    assert admitted == ["a-ns/m00", "a-ns/m01", "a-ns/m02", "a-ns/m03", "a-ns/m04"]
    # An operator restarted mid-way, with only part of the ledger written, still never exceeds the quota.
    partial = dict(list(r.ledger.items())[:2])
    r2 = run(reqs, partial, tns=tenants(a={"h100": 8}))
    assert r2.usage("a")["h100"] <= 8


def test_duplicate_requests_are_refused():
    with pytest.raises(ValueError):
        run([req("x"), req("x")])


def test_random_sequences_never_exceed_quota():
    rng = random.Random(4)
    quotas = {"a": {"h100": 8, "l4": 4}, "b": {"h100": 4}}
    for _ in range(60):
        live: dict[str, Request] = {}
        ledger: dict = {}
        tns = tenants(**quotas)
        for step in range(40):
            op = rng.random()
            if op < 0.45 or not live:
                tenant = rng.choice(["a", "b"])
                name = f"d{step}"
                r = req(name, gpus=rng.choice([1, 2, 4]), replicas=rng.randint(0, 3), cls=rng.choice(["h100", "l4"]),
                        tenant=tenant, t=step)
                live[r.key] = r
            elif op < 0.7:
                live.pop(rng.choice(sorted(live)))
            else:
                key = rng.choice(sorted(live))
                old = live[key]
                live[key] = Request(old.namespace, old.name, old.uid, old.tenant, old.gpu_class,
                                    rng.randint(0, 4), old.gpus_per_replica, old.created,
                                    min_replicas=rng.choice([None, 1, 2]), partial=rng.random() < 0.8)
            before = {k: v["gpus"] for k, v in ledger.items()}
            result = admit(live.values(), ledger, tns, CLASSES)
            for t, q in quotas.items():
                for cls, used in result.usage(t).items():
                    assert used <= q.get(cls, 0), (t, cls, used)
            for key, d in result.decisions.items():
                r = live[key]
                assert (key in result.ledger) == d.admitted
                if d.admitted:
                    assert result.ledger[key]["gpus"] == d.reserved
                    assert d.replicas * r.gpus_per_replica <= d.reserved and d.replicas <= r.replicas
                    if d.reason == ADMITTED:
                        assert d.reserved == r.demand
                    elif key in before:  # a waiting scale-up keeps what it had, plus whole replicas that fit
                        assert before[key] <= d.reserved < r.demand
                        assert (d.reserved - before[key]) % r.gpus_per_replica == 0
                        assert r.partial or d.reserved == before[key]
                    else:  # a first admission in part: at least its min_replicas
                        assert r.min_replicas is not None and d.replicas >= min(r.min_replicas, r.replicas)
            # Pure: a second pass over its own output changes nothing.
            assert admit(live.values(), result.ledger, tns, CLASSES).ledger == result.ledger
            ledger = result.ledger


# --- the ledger ----------------------------------------------------------------------------------------------------


def test_ledger_helpers():
    ledger = parse_ledger({"a/x": {"class": "h100", "gpus": 4, "uid": "1"}, "b/y": {"class": "l4", "gpus": 2, "uid": "2"},
                           "a/z": {"class": "h100", "gpus": 1, "uid": "3"}})
    assert usage(ledger) == {"h100": 5, "l4": 2}
    kept, dropped = reconcile_ledger(ledger, {"a/x": "1", "b/y": "other"})
    assert list(kept) == ["a/x"] and dropped == ["a/z", "b/y"]
    parts = [{k: v for k, v in ledger.items() if k.startswith("a/")}, {k: v for k, v in ledger.items() if k.startswith("b/")}]
    assert merge_ledgers(parts) == ledger
    with pytest.raises(LedgerError):
        merge_ledgers([{"a/x": {"class": "h100", "gpus": 1, "uid": "1"}}, {"a/x": {"class": "h100", "gpus": 2, "uid": "1"}}])
    assert parse_ledger(None) == {}


@pytest.mark.parametrize("bad", [{"x": {"class": "h100", "gpus": 1, "uid": "u"}},
                                 {"a/x": {"class": "h100", "gpus": "1", "uid": "u"}},
                                 {"a/x": {"class": "h100", "gpus": -1, "uid": "u"}},
                                 {"a/x": {"gpus": 1, "uid": "u"}}])
def test_malformed_ledger_raises_rather_than_forgetting(bad):
    with pytest.raises(LedgerError):
        parse_ledger(bad)


def test_ledger_is_what_the_tenant_status_schema_holds():
    result = run([req("x", gpus=2)])
    tenant = parse_as(Tenant, {"kind": "Tenant", "metadata": {"name": "a"},
                               "status": {"reservations": result.ledger_for("a")}})
    assert {k: v.to_dict() for k, v in tenant.status.reservations.items()} == result.ledger


def test_request_from_model_deployment():
    m = parse_as(ModelDeployment, {
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "a1", "uid": "u", "creationTimestamp": "2026-01-02T03:04:05Z"},
        "spec": {"model": "m", "replicas": 3, "gpu": {"class": "l4", "count": 2}}})
    r = Request.from_model_deployment(m, "a")
    assert (r.key, r.demand, r.gpu_class, r.tenant) == ("a1/chat", 6, "l4", "a")
    assert r.created == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert TenantInfo.from_tenant(parse_as(Tenant, {"kind": "Tenant", "metadata": {"name": "a"},
                                                    "spec": {"quota": {"gpus": {"l4": 2}}, "priority": 3}})) == \
        TenantInfo("a", {"l4": 2}, None, 3, False)


def test_gpu_summary():
    assert gpu_summary({"h100": 4}, {"h100": 8, "l4": 4}) == "h100 4/8, l4 0/4"
    assert gpu_summary({"a100": 1}, {}) == "a100 1/0"


def tenant(name, namespaces, created):
    return parse_as(Tenant, {"kind": "Tenant", "metadata": {"name": name, "creationTimestamp": created},
                             "spec": {"namespaces": namespaces}})


def test_namespace_owners_first_claim_wins_and_the_label_keeps_it():
    a = tenant("a", ["shared", "a1"], "2026-01-01T00:00:00Z")
    b = tenant("b", ["shared", "b1"], "2026-01-02T00:00:00Z")
    owners, conflicts = namespace_owners([b, a])
    assert owners == {"a1": "a", "b1": "b", "shared": "a"}
    assert conflicts == {"b": {"shared": "a"}}
    owners, conflicts = namespace_owners([a, b], current={"shared": "b"})
    assert owners["shared"] == "b" and conflicts == {"a": {"shared": "b"}}
    owners, _ = namespace_owners([a, b], current={"shared": "gone"})
    assert owners["shared"] == "a"


# ---------------------------------------------------------------------------------------------------------------------
# Issue 11: frozen reservations, surge entries, generations

from dataclasses import replace as _replace  # noqa: E402

from llmos_operator.core.quota import RESERVATION_HELD, surge_key  # noqa: E402


def test_a_frozen_deployment_keeps_its_reservation_even_when_the_queue_wants_it():
    first = run([req("x", gpus=8)])
    # x's Model has a new revision not verified yet: an admission pass in that window must not free its 8 GPUs.
    frozen = _replace(req("x", gpus=8), frozen=("ModelNotVerified", "Model m's revision 2 is not verified yet"))
    r = run([frozen, req("y", gpus=8, t=1)], ledger=first.ledger)
    assert r.ledger["a-ns/x"]["gpus"] == 8 and r.decisions["a-ns/x"].admitted
    assert not r.decisions["a-ns/y"].admitted


def test_a_frozen_deployment_neither_grows_nor_shrinks_and_says_the_change_waits():
    first = run([req("x", gpus=2, replicas=2)])
    grown = _replace(req("x", gpus=2, replicas=3), frozen=("ModelNotVerified", "revision 2 is not verified"))
    r = run([grown], ledger=first.ledger)
    d = r.decisions["a-ns/x"]
    assert r.ledger["a-ns/x"]["gpus"] == 4 and d.admitted and d.reason == RESERVATION_HELD and d.replicas == 2
    assert "revision 2 is not verified" in d.message
    shrunk = _replace(req("x", gpus=2, replicas=1), frozen=("ModelNotVerified", "pending"))
    assert run([shrunk], ledger=first.ledger).ledger["a-ns/x"]["gpus"] == 4


def test_a_frozen_deployment_without_a_reservation_waits_with_the_reason_given():
    r = run([_replace(req("x"), frozen=("ModelNotVerified", "not verified yet"))])
    assert not r.decisions["a-ns/x"].admitted and r.decisions["a-ns/x"].reason == "ModelNotVerified"
    assert r.ledger == {}


def test_surge_is_reserved_from_unused_quota_and_freed_when_no_longer_wanted():
    first = run([req("x", gpus=2, replicas=2)])  # 4 of 8
    rolling = run([_replace(req("x", gpus=2, replicas=2), surge=2)], ledger=first.ledger)
    assert rolling.ledger[surge_key("a-ns/x")] == {"class": "h100", "gpus": 2, "uid": "uid-x", "kind": "surge"}
    assert rolling.decisions["a-ns/x"].surge == 2 and rolling.usage("a")["h100"] == 6
    assert "a-ns/x#surge" in rolling.ledger_for("a")
    # Unknown (an operator that just restarted): kept. Not wanted any more: freed.
    assert run([req("x", gpus=2, replicas=2)], ledger=rolling.ledger).decisions["a-ns/x"].surge == 2
    done = run([_replace(req("x", gpus=2, replicas=2), surge=0)], ledger=rolling.ledger)
    assert surge_key("a-ns/x") not in done.ledger and done.decisions["a-ns/x"].surge == 0


def test_surge_is_all_or_nothing_and_never_above_quota():
    first = run([req("x", gpus=2, replicas=2), req("y", gpus=4, t=1)])  # 8 of 8
    r = run([_replace(req("x", gpus=2, replicas=2), surge=2), req("y", gpus=4, t=1)], ledger=first.ledger)
    d = r.decisions["a-ns/x"]
    assert d.surge == 0 and d.surge_wanted == 2 and "uses 8 of its 8" in d.surge_message
    assert surge_key("a-ns/x") not in r.ledger


def test_held_surge_counts_as_used_so_no_admission_takes_it():
    first = run([req("x", gpus=2, replicas=2)])
    rolling = run([_replace(req("x", gpus=2, replicas=2), surge=4)], ledger=first.ledger)  # 8 of 8
    r = run([_replace(req("x", gpus=2, replicas=2), surge=4), req("y", gpus=2, t=5)], ledger=rolling.ledger)
    assert not r.decisions["a-ns/y"].admitted and r.decisions["a-ns/x"].surge == 4


def test_deployments_of_one_tenant_surge_one_after_another_in_queue_order():
    reqs = [req(n, gpus=2, t=i) for i, n in enumerate("abc")]  # 6 of 8: room for one 2-GPU surge
    first = run(reqs)
    wanting = [_replace(r, surge=2) for r in reqs]
    r = run(wanting, ledger=first.ledger)
    assert [r.decisions[f"a-ns/{n}"].surge for n in "abc"] == [2, 0, 0]
    after_a = run([_replace(wanting[0], surge=0), *wanting[1:]], ledger=r.ledger)
    assert [after_a.decisions[f"a-ns/{n}"].surge for n in "abc"] == [0, 2, 0]


def test_a_deployment_that_is_not_admitted_gets_no_surge():
    r = run([_replace(req("x", gpus=16), surge=2)])
    assert not r.decisions["a-ns/x"].admitted and surge_key("a-ns/x") not in r.ledger


def test_decisions_record_the_generation_they_were_made_for():
    r = run([_replace(req("x"), generation=7)])
    assert r.decisions["a-ns/x"].generation == 7


def test_a_surge_entry_must_say_it_is_one():
    with pytest.raises(LedgerError):
        parse_ledger({"a-ns/x#surge": {"class": "h100", "gpus": 2, "uid": "u"}})
    with pytest.raises(LedgerError):
        parse_ledger({"a-ns/x": {"class": "h100", "gpus": 2, "uid": "u", "kind": "surge"}})
    assert parse_ledger({"a-ns/x#surge": {"class": "h100", "gpus": 2, "uid": "u", "kind": "surge"}})


def test_a_surge_entry_goes_with_its_deployment():
    first = run([req("x", gpus=2)])
    rolling = run([_replace(req("x", gpus=2), surge=2)], ledger=first.ledger)
    gone = run([], ledger=rolling.ledger)
    assert gone.ledger == {} and set(gone.dropped) == {"a-ns/x", "a-ns/x#surge"}


# Issue 21: scale-ups granted in part -------------------------------------------------------------------------------


def test_a_scale_up_gets_the_whole_replicas_that_fit_and_the_rest_waits_in_the_queue():
    tns = tenants(a={"h100": 12})
    first = run([req("x", gpus=2, replicas=2, t=0), req("y", gpus=4, t=1)], tns=tns)  # 8 of 12
    up = run([req("x", gpus=2, replicas=6, t=0), req("y", gpus=4, t=1)], first.ledger, tns=tns)
    d = up.decisions["a-ns/x"]
    assert d.admitted and d.reason == QUOTA_EXCEEDED and d.limited
    assert (d.replicas, d.wanted_replicas, d.reserved, d.queue_position) == (4, 6, 8, 1)
    assert d.pool == "h100 12/12" and up.usage("a") == {"h100": 12}
    assert "4 of 6 replicas granted" in d.message and "needs 4 more h100 GPUs" in d.message
    # the next pass changes nothing, and says the same
    again = run([req("x", gpus=2, replicas=6, t=0), req("y", gpus=4, t=1)], up.ledger, tns=tns)
    assert again.ledger == up.ledger and again.decisions["a-ns/x"] == d


def test_only_whole_replicas_are_granted():
    tns = tenants(a={"h100": 7})
    first = run([req("x", gpus=2, replicas=1)], tns=tns)
    up = run([req("x", gpus=2, replicas=5)], first.ledger, tns=tns)
    assert up.decisions["a-ns/x"].replicas == 3 and up.ledger["a-ns/x"]["gpus"] == 6  # 1 GPU left over


def test_what_waits_of_a_scale_up_keeps_its_place_in_the_tenant_queue():
    tns = tenants(a={"h100": 4})
    first = run([req("x", replicas=2, t=0)], tns=tns)
    # a newer deployment queues behind the rest of x's scale-up ...
    up = run([req("x", replicas=6, t=0), req("late", t=5)], first.ledger, tns=tns)
    assert up.decisions["a-ns/x"].replicas == 4
    late = up.decisions["a-ns/late"]
    assert not late.admitted and late.queue_position == 2 and "waits behind a-ns/x" in late.message
    # ... and x scaling down lets it in
    down = run([req("x", replicas=1, t=0), req("late", t=5)], up.ledger, tns=tns)
    assert down.decisions["a-ns/late"].admitted and down.decisions["a-ns/x"].complete


def test_an_older_queued_deployment_goes_before_a_newer_ones_scale_up():
    tns = tenants(a={"h100": 4})
    ledger = {"a-ns/new": {"class": "h100", "gpus": 2, "uid": "uid-new"}}
    r = run([req("old", gpus=4, t=0), req("new", replicas=4, t=1)], ledger, tns=tns)
    assert not r.decisions["a-ns/old"].admitted
    assert r.decisions["a-ns/new"].replicas == 2  # nothing of its scale-up overtakes the older request


def test_no_partial_grant_while_a_new_pod_shape_waits():
    tns = tenants(a={"h100": 6})
    first = run([req("x", gpus=2, replicas=1)], tns=tns)
    up = run([_replace(req("x", gpus=4, replicas=2), partial=False)], first.ledger, tns=tns)
    assert up.decisions["a-ns/x"].reserved == 2 and up.decisions["a-ns/x"].replicas == 0


def test_a_first_admission_takes_min_replicas_whole_and_the_rest_as_it_fits():
    tns = tenants(a={"h100": 5})
    r = run([_replace(req("x", gpus=2, replicas=4), min_replicas=2)], tns=tns)
    d = r.decisions["a-ns/x"]
    assert d.admitted and d.replicas == 2 and d.reserved == 4 and d.limited and r.admitted_count("a") == 1
    # min_replicas do not fit: nothing is granted, as for a deployment without autoscaling
    r = run([_replace(req("x", gpus=2, replicas=4), min_replicas=3)], tns=tns)
    assert not r.decisions["a-ns/x"].admitted and r.ledger == {}
    # and without min_replicas a new deployment is still all or nothing
    assert not run([req("x", gpus=2, replicas=4)], tns=tns).decisions["a-ns/x"].admitted


def test_scale_ups_and_rollout_surge_together_never_exceed_the_quota():
    tns = tenants(a={"h100": 6})
    first = run([req("x", replicas=2, t=0), req("y", replicas=2, t=1)], tns=tns)  # 4 of 6
    both = run([_replace(req("x", replicas=2, t=0), surge=1), req("y", replicas=5, t=1)], first.ledger, tns=tns)
    assert both.usage("a") == {"h100": 6}
    assert both.decisions["a-ns/y"].replicas == 4  # the scale-up took the two free GPUs ...
    assert both.decisions["a-ns/x"].surge == 0 and "waits" in both.decisions["a-ns/x"].surge_message  # ... not surge
    # surge already held counts as used: a scale-up cannot take it
    rolling = run([_replace(req("x", replicas=2, t=0), surge=1), req("y", replicas=2, t=1)], first.ledger, tns=tns)
    assert rolling.decisions["a-ns/x"].surge == 1
    up = run([_replace(req("x", replicas=2, t=0), surge=1), req("y", replicas=5, t=1)], rolling.ledger, tns=tns)
    assert up.decisions["a-ns/y"].replicas == 3 and up.usage("a") == {"h100": 6}


def test_a_decision_does_not_change_when_the_tenant_admits_another_deployment():
    """A decision that named the tenant's running total changed with every other admission of the tenant, and each
    change meant a reconcile and a status write of every deployment the tenant has."""
    first = run([req("x", gpus=2, t=0)])
    both = run([req("w", gpus=2, t=-1), req("x", gpus=2, t=0)], ledger=first.ledger)  # w decided before x
    assert both.decisions["a-ns/x"] == first.decisions["a-ns/x"]
    assert both.decisions["a-ns/x"].message == "2 h100 GPUs reserved (1 × 2)"
