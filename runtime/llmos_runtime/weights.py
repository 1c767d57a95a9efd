"""The bytes the engine loads: the model (fetched, verified, checked unchanged) and each adapter (copied into
pod-private storage, verified there, loaded from there).

Adapters: vLLM reads an adapter's path when it is loaded, and again whenever it is evicted from its CPU cache and
requested again (``--max-cpu-loras``). A path on a volume other writers can change would then be read after its
verification; so a ``file://`` or ``pvc://`` adapter is copied into ``<cache>/adapters/`` first (the emptyDir only
this pod writes; at most ``--adapter-max-bytes`` per adapter, counted while copying), the copy is verified and its
path is what vLLM gets. A remote adapter is downloaded into pod-private storage already. A copy no longer loaded is
removed (``release_adapter``).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from .adapters import AdapterSpec, AdapterVerificationError
from .config import RuntimeConfig
from .integrity import IntegrityError, Snapshot, changes, private_copy, resolve_once, snapshot
from .sources import LOCAL_SCHEMES, SourceError, cache_key, parse_source, resolve_source, resolve_source_verified
from .threads import in_thread
from .verify import TrustError, verify_dir

log = logging.getLogger("llmos_runtime")


class Weights:
    def __init__(self, cfg: RuntimeConfig):
        self.cfg = cfg
        self.trusted_keys: dict[str, bytes] = {}
        self._copies = itertools.count(1)

    # ---- the model ---------------------------------------------------------------------------------------------
    def fetch_model(self) -> tuple[Path, dict[str, Any] | None]:
        """Resolve (and, for remote sources, download) the model; returns its real path, resolved once, and the
        verification summary when the download itself was verified (remote + signature: one pass)."""
        cfg = self.cfg
        signed = None
        if cfg.signature is not None and parse_source(cfg.source).scheme not in LOCAL_SCHEMES:
            # the bundle first: then exactly the signed files are fetched, and verified while they are written
            from llmos_signing import verify_bundle

            try:
                bundle = cfg.signature.read_bytes()
            except OSError as e:
                raise TrustError(f"cannot read signature {cfg.signature}: {e.strerror or e}") from e
            signed = verify_bundle(bundle, self.trusted_keys)
        local, verified = resolve_source_verified(cfg.source, revision=cfg.revision, cache_dir=cfg.cache_dir,
                                                  pvc_root=cfg.pvc_root, signed=signed)
        local = resolve_once(local)
        if cfg.verify_mode == "copy" and parse_source(cfg.source).scheme in LOCAL_SCHEMES:
            dest = cfg.cache_dir / "private" / cache_key(parse_source(cfg.source, cfg.revision))
            started = time.monotonic()
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                private_copy(local, dest, exclude=_signature_inside(cfg.signature, local))
            except OSError as e:
                raise SourceError(f"cannot copy {local} into pod-private storage {dest}: {e.strerror or e}") from e
            log.info("copied %s into pod-private %s in %.1fs (--verify-mode copy)", local, dest,
                     time.monotonic() - started)
            return resolve_once(dest), None
        return local, verified

    def verify_model(self, model_dir: Path) -> tuple[dict[str, Any], Snapshot]:
        """Snapshot, verify, snapshot again: the hashed files are the files that are there now."""
        assert self.cfg.signature is not None
        before = snapshot(model_dir)
        summary = verify_dir(model_dir, self.cfg.signature, self.trusted_keys)
        problem = changes(before, snapshot(model_dir))
        if problem:
            raise IntegrityError(problem)
        return summary, before

    def evict_if_cached(self, path: Path) -> None:
        """A download that failed verification is removed: the next start fetches it again."""
        models = (self.cfg.cache_dir / "models").resolve()
        if path.parent == models and path.is_dir():
            log.warning("removing %s from the cache: it failed verification", path)
            shutil.rmtree(path, ignore_errors=True)

    # ---- adapters ----------------------------------------------------------------------------------------------
    @property
    def adapter_copies(self) -> Path:
        return self.cfg.cache_dir / "adapters"

    async def prepare_adapter(self, spec: AdapterSpec) -> tuple[Path, dict[str, Any] | None]:
        """The adapter's pod-private directory, verified when it has a signature: (path for vLLM, summary)."""
        from llmos_signing import VerificationError

        cfg = self.cfg
        try:
            path = await in_thread(lambda: resolve_source(spec.source, revision=spec.revision,
                                                          cache_dir=cfg.cache_dir, pvc_root=cfg.pvc_root))
        except SourceError as e:
            raise RuntimeError(f"source: {e}") from e
        path = resolve_once(path)
        if parse_source(spec.source).scheme in LOCAL_SCHEMES:
            path = await in_thread(self._copy_adapter, spec, path)
        if spec.signature is None:
            return path, None
        signature = spec.signature
        try:
            summary = await in_thread(lambda: verify_dir(path, signature, self.trusted_keys,
                                                         what=f"adapter {spec.name}"))
        except (VerificationError, TrustError) as e:
            self.release_adapter(path)
            self.evict_if_cached(path)
            raise AdapterVerificationError(f"verification failed: {e}") from e
        return path, summary

    def _copy_adapter(self, spec: AdapterSpec, src: Path) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.name)[:64]
        dest = self.adapter_copies / f"{name}-{next(self._copies)}"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            private_copy(src, dest, exclude=_signature_inside(spec.signature, src),
                         max_bytes=self.cfg.adapter_max_bytes)
        except IntegrityError as e:
            raise RuntimeError(f"source: {e} (--adapter-max-bytes)") from e
        except OSError as e:
            raise RuntimeError(f"source: cannot copy {src} into pod-private storage: {e.strerror or e}") from e
        return resolve_once(dest)

    def release_adapter(self, path: Path | str) -> None:
        """Remove a private adapter copy that is not loaded (any more); other paths are left alone."""
        p = Path(path)
        if p.parent == resolve_once(self.adapter_copies) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _signature_inside(signature: Path | None, directory: Path) -> frozenset[str]:
    """A signature kept inside the directory is not one of its files: left out of a copy."""
    if signature is None:
        return frozenset()
    sig = resolve_once(signature)
    return frozenset({os.path.normpath(sig.relative_to(directory))}) if sig.is_relative_to(directory) else frozenset()
