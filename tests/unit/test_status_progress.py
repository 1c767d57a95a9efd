"""Which status changes of a ModelDeployment may wait (``progress_only``): a starting deployment's counters and
progress message; never a condition that turns, a new generation or any other field."""

import pytest

from llmos_operator.core.status import progress_only

pytestmark = pytest.mark.unit


def status(ready=("False", "RollingOut", "0/1 replicas ready, 0 of the current revision"), progressing="True",
           generation=1, updated=0, ready_replicas=0, **extra):
    conditions = [
        {"type": "Ready", "status": ready[0], "reason": ready[1], "message": ready[2], "observedGeneration": generation},
        {"type": "Progressing", "status": progressing, "reason": ready[1], "message": ready[2],
         "observedGeneration": generation},
        {"type": "QuotaAdmitted", "status": "True", "reason": "Admitted", "message": "", "observedGeneration": generation},
    ]
    return {"observedGeneration": generation, "replicas": 1, "updatedReplicas": updated, "readyReplicas": ready_replicas,
            "readySummary": f"{ready_replicas}/1", "endpoint": "http://chat.a1:8000", "conditions": conditions, **extra}


def test_a_starting_deployments_counters_and_progress_message_may_wait():
    old = status()
    new = status(ready=("False", "Starting", "0/1 replicas ready, 1 of the current revision"), updated=1)
    assert progress_only(old, new)


def test_becoming_ready_is_written_at_once():
    old = status()
    new = status(ready=("True", "Serving", "1/1 replicas ready"), progressing="False", updated=1, ready_replicas=1)
    assert not progress_only(old, new)


def test_a_condition_that_turns_is_written_at_once():
    assert not progress_only(status(), status(progressing="False"))


def test_a_new_generation_is_written_at_once():
    assert not progress_only(status(), status(generation=2))


def test_a_stuck_or_failing_reason_is_written_at_once():
    for reason in ("Unschedulable", "RuntimeFailed", "ProgressDeadlineExceeded", "WaitingForSurge"):
        assert not progress_only(status(), status(ready=("False", reason, "why")))


def test_any_other_field_is_written_at_once():
    assert not progress_only(status(), status(endpoint="http://other"))
    assert not progress_only(status(), status(modelDigest="sha256:ab"))


def test_a_first_status_is_written_at_once():
    assert not progress_only({}, status())
    assert not progress_only(status(), {**status(), "conditions": status()["conditions"][:2]})


def test_a_ready_deployments_changes_are_written_at_once():
    serving = ("True", "Serving", "2/2 replicas ready")
    assert not progress_only(status(ready=serving), status(ready=("True", "Scaling", "2/3 replicas ready")))
