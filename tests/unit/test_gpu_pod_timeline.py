"""The checker of the adversarial property test (tests/support/gpu_pod_timeline.py), on made-up timelines."""

from tests.support.gpu_pod_timeline import INTRUDER_WINDOW, SeenPod, peak_held, quota_breaches


def test_an_intruder_counts_only_past_its_window():
    """The checker itself, on a made-up timeline: llmos's pods count from being scheduled, any other pod once it has
    held its GPUs for INTRUDER_WINDOW seconds; a pod ended before that never counts."""
    tenant_of, quota = {"a": "t", "b": "t"}, {"t": {"h100": 8}}
    ours = SeenPod("a", "served", 8, llmos=True, gpu_class="h100", scheduled=100.0)
    brief = SeenPod("b", "brief", 4, llmos=False, gpu_class="h100", scheduled=101.0, ended=101.0 + INTRUDER_WINDOW / 2)
    assert quota_breaches([ours, brief], quota, tenant_of, now=200.0) == []
    stays = SeenPod("b", "stays", 1, llmos=False, gpu_class="h100", scheduled=102.0)
    assert quota_breaches([ours, stays], quota, tenant_of, now=102.0 + INTRUDER_WINDOW - 0.1) == []
    (breach,) = quota_breaches([ours, stays], quota, tenant_of, now=102.0 + INTRUDER_WINDOW)
    assert "held 9 h100 GPUs on a quota of 8" in breach and "b/stays×1" in breach
    other_class = SeenPod("a", "l4", 1, llmos=True, gpu_class="l4", scheduled=100.0)
    assert quota_breaches([other_class], quota, tenant_of, now=101.0)  # no l4 in the quota
    assert peak_held([ours, brief], tenant_of, now=200.0) == {("t", "h100"): 8}  # the brief one never counted
