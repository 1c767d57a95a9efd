"""Metric series follow the tenants and GPU classes that exist."""

import pytest
from prometheus_client import REGISTRY

from llmos_operator import metrics

pytestmark = pytest.mark.unit


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def test_series_of_a_tenant_or_class_that_is_gone_are_removed():
    series = metrics.TenantSeries()
    series.publish({"ta": 2, "tb": 1}, {"ta": 1}, {("ta", "h100"): 4, ("tb", "l4"): 1},
                   {("ta", "h100"): 8, ("ta", "l4"): 4, ("tb", "l4"): 2})
    assert value("llmos_tenant_gpus_used", tenant="ta", gpu_class="h100") == 4
    assert value("llmos_tenant_queued_deployments", tenant="tb") == 0
    series.publish({"ta": 2}, {}, {("ta", "h100"): 4}, {("ta", "h100"): 8})
    assert value("llmos_tenant_admitted_deployments", tenant="tb") is None
    assert value("llmos_tenant_gpus_allowed", tenant="ta", gpu_class="l4") is None
    assert value("llmos_tenant_gpus_allowed", tenant="ta", gpu_class="h100") == 8
