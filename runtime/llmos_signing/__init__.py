"""llmos_signing: OpenSSF Model Signing (OMS) for llmos — manifest, sign, verify.

Compatible with the `model_signing` tool (PyPI model-signing 1.x), key mode: what it signs verifies here, what this
signs verifies there. Used by the `llmos model …` CLI, the operator (verify_bundle: no model files needed) and the
runtime (verify_model before vLLM loads a byte). No kopf, kubernetes or pydantic import on this path.
"""

import importlib
from typing import TYPE_CHECKING

# Lazy exports (PEP 562): `import llmos_signing.cli` (done by every `llmos` command to register its sub-commands)
# must not pay for cryptography; the first use of a name below imports the module that defines it.
_EXPORTS = {
    "sign_model": "api",
    "verify_model": "api",
    "default_signature_path": "api",
    "describe": "api",
    "human_size": "api",
    "verify_bundle": "bundle",
    "build_bundle": "bundle",
    "SignedManifest": "bundle",
    "VerifiedModel": "bundle",
    "BUNDLE_MEDIA_TYPE": "bundle",
    "PAYLOAD_TYPE": "bundle",
    "VerificationError": "errors",
    "SigningError": "errors",
    "key_hint": "keys",
    "load_private_key": "keys",
    "load_public_key": "keys",
    "build_manifest": "manifest",
    "Manifest": "manifest",
    "Resource": "manifest",
    "DEFAULT_IGNORE_PATHS": "manifest",
    "GIT_IGNORE_PATHS": "manifest",
    "DEFAULT_SHARD_SIZE": "manifest",
    "PREDICATE_TYPE": "manifest",
    "STATEMENT_TYPE": "manifest",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmos_signing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .api import default_signature_path, describe, human_size, sign_model, verify_model
    from .bundle import BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, SignedManifest, VerifiedModel, build_bundle, verify_bundle
    from .errors import SigningError, VerificationError
    from .keys import key_hint, load_private_key, load_public_key
    from .manifest import (
        DEFAULT_IGNORE_PATHS,
        DEFAULT_SHARD_SIZE,
        GIT_IGNORE_PATHS,
        PREDICATE_TYPE,
        STATEMENT_TYPE,
        Manifest,
        Resource,
        build_manifest,
    )
