"""Status per kind, computed from observed facts (pure): ModelDeployment, Model, Tenant, and the conditions and merge
patches they share."""

from .conditions import (
    MAX_MESSAGE,
    Transition,
    condition,
    is_true,
    map_patch,
    merge_conditions,
    now_rfc3339,
    status_changed,
    transitions,
)
from .model import ModelCheck, check_model, model_servable, model_serving, model_status, verified_condition
from .model_deployment import (
    STALLED_REASONS,
    DeploymentFacts,
    adapter_status,
    desired_status,
    endpoint_url,
    progress_only,
    worth_an_event,
)
from .tenant import tenant_status

__all__ = [
    "MAX_MESSAGE", "STALLED_REASONS", "DeploymentFacts", "ModelCheck", "Transition", "adapter_status", "check_model",
    "condition", "desired_status", "endpoint_url", "is_true", "map_patch", "merge_conditions", "model_servable",
    "model_serving", "model_status", "now_rfc3339", "progress_only", "status_changed", "tenant_status", "transitions",
    "verified_condition", "worth_an_event",
]
