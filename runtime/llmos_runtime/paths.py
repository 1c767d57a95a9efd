"""Names from a source URI, an object listing or a manifest, turned into paths inside a destination directory — never
outside it. Shared by the fetchers (sources.py) and the one-pass fetch (fetch.py), which import this and not each
other."""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class SourceError(Exception):
    """The source URI is malformed, missing or could not be fetched. ``str()`` is one line."""


def clean_relpath(p: str, uri: str) -> str:
    """``p`` as a relative POSIX path without empty parts; ``..`` is refused (SourceError naming ``uri``)."""
    parts = [x for x in PurePosixPath(p).parts if x not in ("", "/")]
    if any(x == ".." for x in parts):
        raise SourceError(f"source path may not contain '..': {uri}")
    return "/".join(parts)


def safe_target(dest: Path, rel: str) -> Path:
    """Where the object ``rel`` goes inside ``dest`` (its parent directories created)."""
    rel = clean_relpath(rel, rel)
    if not rel:
        raise SourceError("empty object name")
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    return target
