"""The OMS manifest of a model directory: which files (or shards), hashed how, in which order."""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import hashing
from .errors import SigningError, VerificationError

__all__ = [
    "Resource",
    "Manifest",
    "build_manifest",
    "GIT_IGNORE_PATHS",
    "DEFAULT_IGNORE_PATHS",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_SIGNATURE_NAME",
    "STATEMENT_TYPE",
    "PREDICATE_TYPE",
    "root_digest",
    "sort_key",
    "shard_sort_key",
    "split_shard_name",
    "check_resource_path",
    "normalize_ignore_paths",
    "walk",
    "file_tasks",
    "shard_tasks",
    "shard_bounds",
    "shard_name",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
DEFAULT_SHARD_SIZE = 1_000_000_000
DEFAULT_SIGNATURE_NAME = "model.sig"
GIT_IGNORE_PATHS: tuple[str, ...] = (".git", ".gitattributes", ".github", ".gitignore")
# What `llmos model digest` and build_manifest leave out: the git paths and the default signature file.
DEFAULT_IGNORE_PATHS: tuple[str, ...] = (DEFAULT_SIGNATURE_NAME, *GIT_IGNORE_PATHS)


class Resource(NamedTuple):
    """One manifest entry: a file's POSIX path (or ``path:start:end`` for a shard), algorithm, hex digest."""

    name: str
    algorithm: str
    digest: str


def sort_key(name: str) -> tuple[str, ...]:
    """Manifest order: by path components (``a/b`` before ``a-c``), as model_signing sorts PurePosixPath."""
    return tuple(name.split("/")) if name != "." else ()


def split_shard_name(name: str) -> tuple[str, int, int]:
    path, start, end = name.rsplit(":", 2)  # ValueError if fewer than two colons
    if not (start.isdigit() and end.isdigit() and start.isascii() and end.isascii()):
        raise ValueError(f"bad shard offsets in {name!r}")
    return path, int(start), int(end)


def shard_sort_key(name: str) -> tuple[tuple[str, ...], int, int]:
    path, start, end = split_shard_name(name)
    return sort_key(path), start, end


def root_digest(resources: Iterable[Resource]) -> str:
    """sha256 over the raw digests in manifest order: the subject digest of the statement."""
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r.digest))
    return h.hexdigest()


def check_resource_path(path: str) -> str | None:
    """Why ``path`` is not a safe relative POSIX path inside the model (None when it is)."""
    if not isinstance(path, str) or path == "":
        return "empty name"
    if path == ".":
        return None  # a single-file model
    if "\x00" in path:
        return "NUL in name"
    if path.startswith("/"):
        return "absolute path"
    for part in path.split("/"):
        if part == "..":
            return "'..' component"
        if part in ("", "."):
            return "empty or '.' component"
    return None


def normalize_ignore_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Relative POSIX paths; entries that point outside the model are dropped (as model_signing drops them)."""
    out: set[str] = set()
    for p in paths:
        s = os.fspath(p)
        if isinstance(s, bytes):
            s = os.fsdecode(s)
        s = s.replace(os.sep, "/") if os.sep != "/" else s
        if not s or s.startswith("/"):
            continue
        norm = posixpath.normpath(s)
        if norm == "." or norm == ".." or norm.startswith("../"):
            if norm == ".":
                raise ValueError(f"ignore path {s!r} would ignore the whole model")
            continue
        out.add(norm)
    return sorted(out)


def walk(root: Path, ignore: Iterable[str], *, error: type[Exception] = VerificationError) -> dict[str, int]:
    """Every regular file under ``root`` (relative POSIX path -> size), skipping ignored paths and their subtrees.

    A symlink or a special file (fifo, socket, device) anywhere in the tree is an error: llmos never follows links
    inside a model. ``root`` itself may be a single file (its name in the manifest is ".").
    """
    ignored = set(ignore)

    def fail(reason: str, message: str, rel: str | None = None):
        if error is VerificationError:
            return VerificationError(reason, message, rel)
        return error(message)

    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise fail("NotFound", f"model path not found: {root}") from None
    except OSError as err:
        raise fail("UnreadableFile", f"cannot read model path {root}: {err.strerror or err}") from None
    if stat.S_ISREG(st.st_mode):
        return {".": st.st_size}
    if not stat.S_ISDIR(st.st_mode):
        raise fail("SpecialFile", f"model path is neither a file nor a directory: {root}")

    files: dict[str, int] = {}
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        dirpath, prefix = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = list(it)
        except OSError as err:
            rel = prefix.rstrip("/") or "."
            raise fail("UnreadableFile", f"cannot list directory {rel}: {err.strerror or err}", rel) from None
        for entry in entries:
            rel = prefix + entry.name
            if rel in ignored:
                continue
            try:
                if entry.is_symlink():
                    raise fail("Symlink", f"symlink in model directory: {rel}", rel)
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    files[rel] = entry.stat(follow_symlinks=False).st_size
                else:
                    raise fail("SpecialFile", f"not a regular file: {rel}", rel)
            except OSError as err:
                raise fail("UnreadableFile", f"cannot read {rel}: {err.strerror or err}", rel) from None
    return files


def _abs(root: Path, rel: str) -> str:
    return os.fspath(root) if rel == "." else os.path.join(os.fspath(root), *rel.split("/"))


def file_tasks(root: Path, files: dict[str, int]) -> list[hashing.HashTask]:
    return [hashing.HashTask(rel, _abs(root, rel), rel, 0, size, size) for rel, size in files.items()]


shard_bounds = hashing.shard_bounds


def shard_name(path: str, start: int, end: int) -> str:
    """The manifest name of a shard: ``path:start:end``."""
    return f"{path}:{start}:{end}"


def shard_tasks(root: Path, files: dict[str, int], shard_size: int) -> list[hashing.HashTask]:
    tasks = []
    for rel, size in files.items():
        path = _abs(root, rel)
        for start, end in shard_bounds(size, shard_size):
            tasks.append(hashing.HashTask(shard_name(rel, start, end), path, rel, start, end, size))
    return tasks


@dataclass(frozen=True)
class Manifest:
    """What sign_model signs: the model's resources in manifest order and how they were made."""

    model_name: str
    hash_type: str
    method: str
    resources: tuple[Resource, ...]
    ignore_paths: tuple[str, ...] = ()
    shard_size: int | None = None
    allow_symlinks: bool = False
    total_bytes: int = 0
    file_count: int = field(default=0)

    @property
    def root_digest(self) -> str:
        return root_digest(self.resources)

    @property
    def serialization(self) -> dict:
        ser: dict = {"method": self.method, "hash_type": self.hash_type, "allow_symlinks": self.allow_symlinks}
        if self.method == "shards":
            ser["shard_size"] = self.shard_size
        ser["ignore_paths"] = list(self.ignore_paths)
        return ser

    def statement(self) -> dict:
        """The in-toto v1 statement with the model_signing v1.0 predicate."""
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.model_name, "digest": {"sha256": self.root_digest}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": self.serialization,
                "resources": [{"name": r.name, "algorithm": r.algorithm, "digest": r.digest} for r in self.resources],
            },
        }


def _model_name(root: Path) -> str:
    name = root.name
    if not name or name == "..":
        name = os.path.basename(os.path.abspath(root))
    return name


def build_manifest(
    model_dir: Path | str,
    hash_type: str = "sha256",
    method: str = "files",
    shard_size: int = DEFAULT_SHARD_SIZE,
    ignore_paths: Iterable[str | os.PathLike] = DEFAULT_IGNORE_PATHS,
    progress: hashing.Progress | None = None,
) -> Manifest:
    """Hash a model directory (or a single file) into a Manifest, as model_signing would for the same options.

    Raises SigningError for anything that cannot be signed (symlink, special file, unreadable file, bad option).
    """
    root = Path(model_dir)
    ht = hashing.normalize_hash_type(hash_type)
    if ht is None:
        raise SigningError(f"unsupported hash type {hash_type!r}: use sha256, blake3 or blake2b")
    if method not in ("files", "shards"):
        raise SigningError(f"unsupported method {method!r}: use files or shards")
    if method == "shards":
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
            raise SigningError(f"shard size must be a positive integer, got {shard_size!r}")
        if ht == "blake3":
            raise SigningError("blake3 already hashes one file on all cores: sign blake3 with the files method")
    try:
        ignore = normalize_ignore_paths(ignore_paths)
    except ValueError as err:
        raise SigningError(str(err)) from None
    try:
        files = walk(root, ignore)
        for rel in files:
            rel.encode("utf-8")  # a name that is not UTF-8 cannot be written into the statement
    except UnicodeEncodeError:
        raise SigningError(f"file name is not valid UTF-8 in {root}") from None
    except VerificationError as err:
        raise SigningError(str(err)) from None
    if method == "files":
        tasks = file_tasks(root, files)
        algorithm = ht
    else:
        tasks = shard_tasks(root, files, shard_size)
        algorithm = f"{ht}-sharded-{shard_size}"
    try:
        digests = hashing.hash_tasks(tasks, ht, progress=progress)
    except VerificationError as err:
        raise SigningError(str(err)) from None
    keyf = sort_key if method == "files" else shard_sort_key
    resources = tuple(Resource(k, algorithm, digests[k].hex()) for k in sorted(digests, key=keyf))
    return Manifest(
        model_name=_model_name(root),
        hash_type=ht,
        method=method,
        resources=resources,
        ignore_paths=tuple(ignore),
        shard_size=shard_size if method == "shards" else None,
        total_bytes=sum(files.values()),
        file_count=len(files) if method == "files" else len({t.rel for t in tasks}),
    )
