"""What a ModelDeployment's pods are told about API keys (``spec.access``): the runtime flags that make the guard
require a key from the namespace's key table (the ConfigMap ``llmos-api-keys``, watched through the API), and the
shared limit store when the platform configured one."""

from __future__ import annotations

from ..api.names import API_KEYS_CONFIGMAP
from ..api.types import ModelDeployment
from ..config import OperatorConfig


def keys_required(mdep: ModelDeployment) -> bool:
    return mdep.spec.access.api_keys != "Disabled"


def access_flags(mdep: ModelDeployment, config: OperatorConfig) -> list[str]:
    if not keys_required(mdep):
        return []
    flags = ["--api-keys-configmap", API_KEYS_CONFIGMAP]
    if config.limits.store_url:
        flags += ["--limits-store", config.limits.store_url]
    return flags
