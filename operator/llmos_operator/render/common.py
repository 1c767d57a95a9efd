"""Names, labels and hashes shared by the renderers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MANAGED_BY = "llmos"
RUNTIME_APP = "llmos-runtime"

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL_DEPLOYMENT = "llmos.dev/model-deployment"
LABEL_TENANT = "llmos.dev/tenant"
LABEL_GATEWAY = "llmos.dev/gateway"

ANNOTATION_CONFIG_HASH = "llmos.dev/config-hash"
ANNOTATION_MODEL_DIGEST = "llmos.dev/model-digest"
# Written by the runtime on its own pod: {"loaded": [names], "failed": {name: reason}}; the operator sums it up.
ANNOTATION_ADAPTERS = "llmos.dev/adapters"
# The runtime's identity in a tenant namespace: allowed to read and annotate pods there, nothing else.
RUNTIME_SERVICE_ACCOUNT = "llmos-runtime"

TRUST_DIR = "/etc/llmos/trust"
ADAPTERS_DIR = "/etc/llmos/adapters"
CACHE_DIR = "/var/cache/llmos"
PVC_ROOT = "/mnt/pvc"
SIGNATURE_FILE = "model.sig"
SIGNER_KEY_FILE = "signer.pem"
ADAPTERS_FILE = "adapters.json"


def selector_labels(mdep_name: str) -> dict[str, str]:
    """Labels selecting the pods of one ModelDeployment (immutable in a Deployment: never change them)."""
    return {LABEL_NAME: RUNTIME_APP, LABEL_MODEL_DEPLOYMENT: mdep_name}


def labels(mdep_name: str) -> dict[str, str]:
    """Labels of every child of a ModelDeployment and of its pods."""
    return {
        LABEL_NAME: RUNTIME_APP,
        LABEL_INSTANCE: mdep_name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL_DEPLOYMENT: mdep_name,
    }


def selector_string(mdep_name: str) -> str:
    """The pod selector as a string (``status.selector``, used by the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(mdep_name).items()))


def trust_configmap_name(mdep_name: str, content_hash: str) -> str:
    """One trust ConfigMap per content: a pod keeps reading the bundle it was made for while a newer revision rolls
    out, and a rollback finds the old one still there."""
    return f"{mdep_name}-trust-{content_hash[:10]}"


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
