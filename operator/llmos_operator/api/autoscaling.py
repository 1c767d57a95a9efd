"""ModelDeployment.spec.autoscaling and status.autoscaling: replicas that follow the load inside the tenant's quota
(docs/autoscaling.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel, Rule

AutoscalingMetric = Literal["waitingRequests", "runningRequests", "kvCacheUsage"]


class AutoscalingSpec(ApiModel):
    """Replicas that follow the load, inside the tenant's quota (docs/autoscaling.md)."""

    __rules__ = (
        Rule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            field_path=".minReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
        ),
        Rule(
            rule="self.metric != 'kvCacheUsage' || self.target <= 1.0",
            message="the target of kvCacheUsage is a fraction of the KV cache: 0 < target <= 1",
            field_path=".target",
            check=lambda a: a.metric != "kvCacheUsage" or a.target <= 1,
        ),
    )

    min_replicas: int = Field(
        1, ge=1, le=1000, description="Fewest replicas (at least 1: with no replica there is no load to read). "
        "Admitted whole or not at all, like spec.replicas of a deployment without autoscaling."
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas. Replicas above minReplicas are granted as "
                              "the tenant's quota allows; the rest waits in the tenant's queue (ScalingLimited).")
    metric: AutoscalingMetric = Field(
        description="What each ready replica's engine reports, averaged over them: waitingRequests "
        "(vllm:num_requests_waiting), runningRequests (vllm:num_requests_running) or kvCacheUsage "
        "(vllm:kv_cache_usage_perc, a fraction)."
    )
    target: float = Field(gt=0, le=100000, description="The average per ready replica to keep (a fraction of the "
                          "KV cache for kvCacheUsage); desired replicas = ceil(sum over ready replicas / target), "
                          "changed only outside a 10 % tolerance.")
    scale_up_stabilization_seconds: int = Field(
        0, ge=0, le=3600, description="Scale up only to the lowest count recommended within this window."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Scale down only to the highest count recommended within this window."
    )


class AutoscalingStatus(ApiModel):
    """What the autoscaler decided last (written only when the desired count changes)."""

    desired_replicas: int | None = Field(
        None, ge=0, description="Replicas the autoscaler asks admission for: kept here so that a restarted operator "
        "asks for the same before it has read any load."
    )
    metric_value: float | None = Field(None, description="The metric's average per ready replica at that decision.")
    measured_replicas: int | None = Field(None, ge=0, description="Ready replicas whose metrics that decision read.")
    last_scale_time: str | None = Field(
        None, json_schema_extra={"format": "date-time"}, description="When the desired count last changed."
    )
