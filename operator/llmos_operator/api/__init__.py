"""The llmos API types (group llmos.dev, version v1alpha1) and the CRD generator (``crdgen``)."""

from .types import (
    API_VERSION,
    GROUP,
    KINDS,
    VERSION,
    Condition,
    FieldError,
    InvalidObject,
    Model,
    ModelDeployment,
    Resource,
    Tenant,
    parse_as,
    parse_object,
)

__all__ = [
    "API_VERSION", "GROUP", "KINDS", "VERSION", "Condition", "FieldError", "InvalidObject", "Model",
    "ModelDeployment", "Resource", "Tenant", "parse_as", "parse_object",
]
