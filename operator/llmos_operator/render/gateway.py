"""The HTTPRoute of a ModelDeployment when the platform configured a parent Gateway (config ``gateway``): the
platform's existing gateway exposes the model at ``/<namespace>/<name>/v1`` (the prefix rewritten to ``/v1``), with
or without API keys (the model pod enforces them either way)."""

from __future__ import annotations

from typing import Any

from ..api.types import ModelDeployment
from ..config import OperatorConfig
from .common import labels

HTTP_ROUTE_API = "gateway.networking.k8s.io/v1"


def route_prefix(mdep: ModelDeployment) -> str:
    return f"/{mdep.metadata.namespace}/{mdep.metadata.name}/v1"


def render_http_route(mdep: ModelDeployment, config: OperatorConfig) -> dict[str, Any] | None:
    """None unless a parent Gateway is configured."""
    if not config.gateway.parent_refs:
        return None
    spec: dict[str, Any] = {
        "parentRefs": [dict(ref) for ref in config.gateway.parent_refs],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": route_prefix(mdep)}}],
            "filters": [{"type": "URLRewrite",
                         "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v1"}}}],
            "backendRefs": [{"name": mdep.metadata.name, "port": config.runtime.openai_port}],
        }],
    }
    if config.gateway.hostnames:
        spec["hostnames"] = list(config.gateway.hostnames)
    return {"apiVersion": HTTP_ROUTE_API, "kind": "HTTPRoute",
            "metadata": {"name": mdep.metadata.name, "namespace": mdep.metadata.namespace,
                         "labels": labels(mdep.metadata.name)},
            "spec": spec}
