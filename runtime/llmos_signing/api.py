"""sign_model and verify_model: the directory-level operations."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from . import hashing
from .bundle import SignedManifest, TrustedKeys, VerifiedModel, build_bundle, verify_bundle
from .errors import SigningError, VerificationError, printable
from .keys import PrivateKey, load_private_key
from .manifest import (
    DEFAULT_SHARD_SIZE,
    DEFAULT_SIGNATURE_NAME,
    GIT_IGNORE_PATHS,
    build_manifest,
    file_tasks,
    shard_bounds,
    shard_name,
    sort_key,
    split_shard_name,
    walk,
)

__all__ = ["sign_model", "verify_model", "default_signature_path"]


def default_signature_path(model_dir: Path) -> Path:
    """``DIR/model.sig``; for a single-file model, ``FILE.sig`` beside it."""
    model_dir = Path(model_dir)
    if model_dir.is_file():
        return model_dir.with_name(model_dir.name + ".sig")
    return model_dir / DEFAULT_SIGNATURE_NAME


def _relative_inside(root: Path, path: Path) -> str | None:
    """``path`` relative to ``root`` as POSIX, if it lies inside the directory ``root``."""
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        try:
            rel = path.resolve().relative_to(root.resolve())
        except (ValueError, OSError):
            return None
    s = rel.as_posix()
    return None if s in ("", ".") else s


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def sign_model(
    model_dir: Path | str,
    private_key_pem: bytes | str | PrivateKey,
    *,
    signature_path: Path | str | None = None,
    hash_type: str = "sha256",
    method: str = "files",
    shard_size: int = DEFAULT_SHARD_SIZE,
    ignore_paths: Iterable[str | os.PathLike] = GIT_IGNORE_PATHS,
    progress: hashing.Progress | None = None,
) -> bytes:
    """Hash ``model_dir`` and sign it into an OMS bundle, written to ``signature_path`` (default DIR/model.sig).

    The signature file is never part of the manifest (its path inside the model goes into ignore_paths, as
    model_signing does). Returns the bundle bytes. Raises SigningError or ValueError (key).
    """
    root = Path(model_dir)
    key = load_private_key(private_key_pem)
    sig_path = Path(signature_path) if signature_path is not None else default_signature_path(root)
    ignore = [os.fspath(p) for p in ignore_paths]
    if root.is_dir():
        rel = _relative_inside(root, sig_path)
        if rel is not None:
            ignore.append(rel)
    manifest = build_manifest(
        root, hash_type=hash_type, method=method, shard_size=shard_size, ignore_paths=ignore, progress=progress
    )
    if not manifest.resources:
        raise SigningError(f"nothing to sign: no files in {root} (after ignoring {', '.join(manifest.ignore_paths)})")
    data = build_bundle(manifest, key)
    _write_atomically(sig_path, data)
    return data


def _read_bundle(bundle: bytes | str | os.PathLike) -> tuple[bytes, Path | None]:
    if isinstance(bundle, (bytes, bytearray, memoryview)):
        return bytes(bundle), None
    path = Path(bundle)
    try:
        return path.read_bytes(), path
    except FileNotFoundError:
        raise VerificationError("NotFound", f"signature file not found: {path}") from None
    except IsADirectoryError:
        raise VerificationError("NotFound", f"signature path is a directory: {path}") from None
    except OSError as err:
        raise VerificationError("UnreadableFile", f"cannot read signature file {path}: {err.strerror or err}") from None


def _first(names: Iterable[str]) -> tuple[str, int]:
    ordered = sorted(names, key=sort_key)
    return ordered[0], len(ordered) - 1


def _more(n: int, what: str) -> str:
    return f" (and {n} more {what})" if n else ""


def verify_model(
    model_dir: Path | str,
    bundle: bytes | Path | str,
    trusted_keys: TrustedKeys,
    *,
    progress: hashing.Progress | None = None,
) -> VerifiedModel:
    """verify_bundle, then re-hash ``model_dir`` with the signed serialization and require the same files.

    ``bundle`` is the bundle's bytes or the path of the signature file (a signature file inside the model directory
    is never counted as a model file). Fails closed with VerificationError: MissingFile, ExtraFile (unsigned files
    are never ignored), Symlink, SpecialFile, HashMismatch, and every bundle-level reason of verify_bundle.
    """
    data, sig_path = _read_bundle(bundle)
    signed = verify_bundle(data, trusted_keys)
    return _verify_files(Path(model_dir), signed, sig_path, progress)


def _verify_files(
    root: Path, signed: SignedManifest, sig_path: Path | None, progress: hashing.Progress | None
) -> VerifiedModel:
    ignore = set(signed.ignore_paths)
    if sig_path is not None and root.is_dir():
        rel = _relative_inside(root, sig_path)
        if rel is not None:
            ignore.add(rel)
    actual = walk(root, ignore)

    if signed.method == "files":
        expected = {r.name: bytes.fromhex(r.digest) for r in signed.resources}
        expected_paths = expected.keys()
    else:
        shards: dict[str, list[tuple[int, int]]] = {}
        expected = {}
        for r in signed.resources:
            path, start, end = split_shard_name(r.name)
            shards.setdefault(path, []).append((start, end))
            expected[shard_name(path, start, end)] = bytes.fromhex(r.digest)
        expected_paths = shards.keys()

    missing = [p for p in expected_paths if p not in actual]
    if missing:
        name, more = _first(missing)
        raise VerificationError("MissingFile", f"missing file: {name}{_more(more, 'missing')}", name)
    extra = [p for p in actual if p not in expected_paths]
    if signed.method == "shards":
        # OMS shards cannot describe an empty file (it has no shard); model_signing accepts such files, as we must.
        extra = [p for p in extra if actual[p] != 0]
    if extra:
        name, more = _first(extra)
        raise VerificationError(
            "ExtraFile", f"extra file not in the signed manifest: {name}{_more(more, 'extra')}", name
        )

    if signed.method == "files":
        tasks = file_tasks(root, actual)
    else:
        tasks = []
        size_mismatch = []
        for path, bounds in shards.items():
            size = actual[path]
            want = shard_bounds(size, signed.shard_size)
            if sorted(bounds) != want:
                size_mismatch.append(path)
                continue
            file_path = os.fspath(root) if path == "." else os.path.join(os.fspath(root), *path.split("/"))
            tasks.extend(hashing.HashTask(shard_name(path, s, e), file_path, path, s, e, size) for s, e in want)
        if size_mismatch:
            name, more = _first(size_mismatch)
            raise VerificationError(
                "HashMismatch", f"hash mismatch: {name} (size changed){_more(more, 'changed')}", name
            )
    # Manifest order, so that the file named on a mismatch is the first one in the manifest.
    pos = {r.name: i for i, r in enumerate(signed.resources)}
    tasks.sort(key=lambda t: pos.get(t.key, 0))
    hashing.hash_tasks(tasks, signed.hash_type, progress=progress, expected=expected)
    fields = {k: getattr(signed, k) for k in signed.__dataclass_fields__}
    return VerifiedModel(**fields, total_bytes=sum(actual.values()))


def describe(model: VerifiedModel | SignedManifest) -> str:
    """``root sha256:<hex> signed by <key> (<n> files, <size>)``."""
    size = getattr(model, "total_bytes", None)
    extra = f", {human_size(size)}" if size is not None else ""
    return (
        f"root sha256:{model.root_digest} signed by {printable(model.signer)} "
        f"({model.file_count} file{'s' if model.file_count != 1 else ''}{extra})"
    )


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
