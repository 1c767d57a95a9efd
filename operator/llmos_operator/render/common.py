"""Names, labels and hashes shared by the renderers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..api.names import (
    ANNOTATION_ADAPTERS,
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_MODEL_DIGEST,
    LABEL_GATEWAY,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_MODEL_DEPLOYMENT,
    LABEL_NAME,
    LABEL_TENANT,
    MANAGED_BY,
    RUNTIME_APP,
    RUNTIME_CONTAINER,
    RUNTIME_SERVICE_ACCOUNT,
    child_labels,
    selector_labels,
    selector_string,
)

labels = child_labels

TRUST_DIR = "/etc/llmos/trust"
ADAPTERS_DIR = "/etc/llmos/adapters"
CACHE_DIR = "/var/cache/llmos"
PVC_ROOT = "/mnt/pvc"
SIGNATURE_FILE = "model.sig"
SIGNER_KEY_FILE = "signer.pem"
ADAPTERS_FILE = "adapters.json"


def trust_configmap_name(model_name: str, content_hash: str) -> str:
    """A Model's trust ConfigMap, one per content, shared by every deployment of that Model in the namespace: a pod
    keeps reading the bundle it was made for while a newer revision rolls out, and a rollback finds the old one
    still there."""
    return f"{model_name}-trust-{content_hash[:10]}"


def adapters_configmap_name(mdep_name: str) -> str:
    return f"{mdep_name}-adapters"


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of JSON-serialised parts (bytes are hashed as they are)."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, separators=(",", ":")).encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:length]


def pvc_claim(uri: str) -> tuple[str, str] | None:
    """``pvc://claim/some/path`` → ``("claim", "some/path")``; None for other schemes."""
    if not uri.startswith("pvc://"):
        return None
    claim, _, path = uri[len("pvc://"):].partition("/")
    return claim, path


__all__ = [  # the names the renderers share (those of api/names.py re-exported)
    "ANNOTATION_ADAPTERS",
    "ANNOTATION_CONFIG_HASH",
    "ANNOTATION_MODEL_DIGEST",
    "LABEL_GATEWAY",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_MODEL",
    "LABEL_MODEL_DEPLOYMENT",
    "LABEL_NAME",
    "LABEL_TENANT",
    "MANAGED_BY",
    "RUNTIME_APP",
    "RUNTIME_CONTAINER",
    "RUNTIME_SERVICE_ACCOUNT",
    "child_labels",
    "selector_labels",
    "selector_string",
    "labels",
    "TRUST_DIR",
    "ADAPTERS_DIR",
    "CACHE_DIR",
    "PVC_ROOT",
    "SIGNATURE_FILE",
    "SIGNER_KEY_FILE",
    "ADAPTERS_FILE",
    "trust_configmap_name",
    "adapters_configmap_name",
    "stable_hash",
    "pvc_claim",
]
