"""Signature verification of a model (or adapter) directory with llmos_signing (OpenSSF Model Signing)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TrustError(Exception):
    """A trusted key or a signature file could not be read. ``str()`` is one line."""


def load_trusted_keys(paths: Sequence[Path]) -> dict[str, bytes]:
    """``{file name: PEM bytes}`` for each ``--trusted-key``."""
    keys: dict[str, bytes] = {}
    for p in paths:
        try:
            keys[p.name if p.name not in keys else str(p)] = p.read_bytes()
        except OSError as e:
            raise TrustError(f"cannot read trusted key {p}: {e.strerror or e}") from e
    return keys


def _progress_logger(what: str):
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 10 or (total and done >= total):
            last[0] = now
            pct = 100.0 * done / total if total else 100.0
            log.info("verifying %s: %.0f%% of %d bytes", what, pct, total)

    return progress


def verify_dir(model_dir: Path, signature: Path, trusted_keys: Mapping[str, bytes], *,
               what: str = "model") -> dict[str, Any]:
    """Verify ``model_dir`` against the bundle at ``signature``; returns a JSON-able summary.

    Raises ``llmos_signing.VerificationError`` (one line naming cause and file) on any mismatch or unreadable
    signature, ``TrustError`` when no trusted key is configured."""
    from llmos_signing import verify_model

    if not trusted_keys:
        raise TrustError(f"cannot verify {what}: no trusted keys configured")
    started = time.monotonic()
    # The path (not its bytes): a signature file inside the directory is then never counted as a model file.
    result = verify_model(model_dir, Path(signature), trusted_keys, progress=_progress_logger(what))
    summary: dict[str, Any] = {"seconds": round(time.monotonic() - started, 3)}
    for attr in ("root_digest", "signer", "key_hint", "file_count", "total_bytes"):
        value = getattr(result, attr, None)
        if value is not None:
            summary[attr] = value if isinstance(value, (int, float, str, bool)) else str(value)
    log.info("verified %s %s: %s", what, model_dir, summary)
    return summary
