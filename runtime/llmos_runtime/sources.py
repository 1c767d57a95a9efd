"""Model sources: resolve a source URI to a local directory.

``file:///abs/path`` and ``pvc://claim/sub/path`` are already mounted in the pod: they resolve in place, nothing is
copied. ``s3://bucket/prefix``, ``gs://bucket/prefix`` and ``hf://org/name`` are downloaded by a ``Fetcher`` into a
fresh temporary directory inside the cache directory and then renamed into place, so a directory under
``<cache>/models/`` is always complete: a crash or error mid-download never leaves something that could be served.
A completed download is reused on the next start (and verified again like any other source).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from .fetch import fetch_signed, summary
from .paths import SourceError, clean_relpath, safe_target

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "gs", "hf")
LOCAL_SCHEMES = ("file", "pvc")
STALE_TMP_SECONDS = 6 * 3600


@dataclass(frozen=True)
class Source:
    scheme: str
    location: str  # bucket / claim / hf repo owner; for file:// the empty string
    path: str  # path inside it (no leading slash); for file:// the absolute path
    revision: str | None = None

    @property
    def uri(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"{self.scheme}://{self.location}/{self.path}".rstrip("/")


def parse_source(uri: str, revision: str | None = None) -> Source:
    """Parse and validate a source URI (no I/O)."""
    if "://" not in uri:
        raise SourceError(f"source must be a URI (file://, pvc://, s3://, gs://, hf://): {uri!r}")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"file:// source must be an absolute path (file:///abs/path): {uri}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise SourceError(f"file:// source must be an absolute path: {uri}")
        return Source("file", "", "/" + clean_relpath(path, uri), revision)
    if scheme not in LOCAL_SCHEMES + REMOTE_SCHEMES:
        raise SourceError(f"unsupported source scheme {scheme!r}: {uri}")
    if not parts.netloc:
        raise SourceError(f"{scheme}:// source needs a {'claim' if scheme == 'pvc' else 'bucket/repo'}: {uri}")
    rel = clean_relpath(unquote(parts.path), uri)
    if scheme == "hf" and len([x for x in rel.split("/") if x]) > 1:
        raise SourceError(f"hf:// source must be hf://org/name: {uri}")
    return Source(scheme, parts.netloc, rel, revision)


class Fetcher(Protocol):
    """Downloads every file of a remote source into ``dest`` (an empty directory that the caller renames into place
    when ``fetch`` returns normally). Must raise on any error; must not write outside ``dest``."""

    def fetch(self, source: Source, dest: Path) -> None: ...


def _prefix(source: Source) -> str:
    return source.path.rstrip("/") + "/" if source.path else ""


def _parallel(fn: Callable[[Any], Any], items: Iterable[Any], workers: int | None = None) -> None:
    """``fn`` over ``items`` on a few threads (downloads are network-bound); the first error is raised."""
    from .resources import fetch_parallelism

    with ThreadPoolExecutor(max_workers=workers or fetch_parallelism(), thread_name_prefix="llmos-fetch") as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


class S3Fetcher:
    """``s3://bucket/prefix`` with boto3 (credentials and ``AWS_ENDPOINT_URL`` from the usual environment)."""

    def __init__(self, client: Any = None):
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def fetch(self, source: Source, dest: Path) -> None:
        client = self.client()
        prefix = _prefix(source)
        keys = [obj["Key"]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=source.location, Prefix=prefix)
                for obj in page.get("Contents", []) or []
                if not obj["Key"].endswith("/")]  # "directory" markers
        if not keys:
            raise SourceError(f"no objects under {source.uri}")
        _parallel(lambda key: client.download_file(source.location, key,
                                                   str(safe_target(dest, key[len(prefix):]))), keys)

    def download_into(self, source: Source, rel: str, sink: Any) -> None:
        """Write the object ``rel`` under the source's prefix into ``sink`` in order (fetch-and-verify in one
        pass). boto3's managed transfer: large objects come as several ranged GETs at once."""
        from boto3.s3.transfer import TransferConfig

        # the parallelism is across files (fetch_signed); two ranged GETs per object keep a large file moving
        self.client().download_fileobj(source.location, _prefix(source) + rel, sink,
                                       Config=TransferConfig(max_concurrency=2))


class GCSFetcher:
    """``gs://bucket/prefix`` with google-cloud-storage (application default credentials)."""

    def __init__(self, client: Any = None):
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            from google.cloud import storage

            self._client = storage.Client()
        return self._client

    def fetch(self, source: Source, dest: Path) -> None:
        client = self.client()
        prefix = _prefix(source)
        blobs = [b for b in client.list_blobs(source.location, prefix=prefix) if not b.name.endswith("/")]
        if not blobs:
            raise SourceError(f"no objects under {source.uri}")
        _parallel(lambda blob: blob.download_to_filename(str(safe_target(dest, blob.name[len(prefix):]))), blobs)

    def download_into(self, source: Source, rel: str, sink: Any) -> None:
        self.client().bucket(source.location).blob(_prefix(source) + rel).download_to_file(sink)


class HFFetcher:
    """``hf://org/name`` (at ``--revision``) with huggingface_hub (``HF_TOKEN``/``HF_ENDPOINT`` from the
    environment)."""

    def __init__(self, snapshot_download: Callable[..., Any] | None = None):
        self._snapshot_download = snapshot_download
        # set by the runtime from the signature bundle: download exactly the signed files (a repository often holds
        # more, e.g. Llama-3's original/ checkpoint, which doubles the bytes)
        self.allow_patterns: list[str] | None = None

    def fetch(self, source: Source, dest: Path) -> None:
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise SourceError(
                f"cannot download {source.uri}: HF_HUB_OFFLINE is set in the runtime's environment (the runtime "
                "already runs vLLM offline; do not set it on the pod)"
            )
        download = self._snapshot_download
        if download is None:
            from huggingface_hub import snapshot_download as download
        repo_id = f"{source.location}/{source.path}" if source.path else source.location
        from .resources import fetch_parallelism

        kwargs: dict[str, Any] = {"max_workers": fetch_parallelism()}
        if self.allow_patterns is not None:
            kwargs["allow_patterns"] = self.allow_patterns
        download(repo_id=repo_id, revision=source.revision, local_dir=str(dest), **kwargs)
        # huggingface_hub keeps download metadata in <local_dir>/.cache; it is not part of the model.
        shutil.rmtree(dest / ".cache", ignore_errors=True)


DEFAULT_FETCHERS: Mapping[str, Callable[[], Fetcher]] = {"s3": S3Fetcher, "gs": GCSFetcher, "hf": HFFetcher}


def cache_key(source: Source) -> str:
    digest = hashlib.sha256(f"{source.uri}@{source.revision or ''}".encode()).hexdigest()[:16]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", (source.path.rsplit("/", 1)[-1] or source.location))[:40]
    return f"{source.scheme}-{tail}-{digest}"


def _clean_stale_tmp(models_dir: Path) -> None:
    now = time.time()
    for p in models_dir.glob(".tmp-*"):
        try:
            if now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


def resolve_source(
    uri: str,
    *,
    revision: str | None = None,
    cache_dir: Path,
    pvc_root: Path,
    fetchers: Mapping[str, Callable[[], Fetcher]] | None = None,
) -> Path:
    """Return the local directory holding the model at ``uri`` (downloading it into ``cache_dir`` if remote)."""
    return resolve_source_verified(uri, revision=revision, cache_dir=cache_dir, pvc_root=pvc_root,
                                   fetchers=fetchers)[0]


def resolve_source_verified(
    uri: str,
    *,
    revision: str | None = None,
    cache_dir: Path,
    pvc_root: Path,
    fetchers: Mapping[str, Callable[[], Fetcher]] | None = None,
    signed: Any = None,
) -> tuple[Path, dict[str, Any] | None]:
    """Like ``resolve_source``; with ``signed`` (a verified bundle's SignedManifest) a fresh download of ``s3://``
    or ``gs://`` fetches exactly the signed files and verifies them while writing (fetch.py), and ``hf://``
    downloads only the signed files. Returns (directory, verification summary when the download itself was
    verified, else None: a cached or local directory, or an hf download, must still be verified in place)."""
    source = parse_source(uri, revision)
    if source.scheme in LOCAL_SCHEMES:
        if source.revision:
            log.info("--revision %s ignored for %s:// sources (the path names the files)", revision, source.scheme)
        local = Path(source.path) if source.scheme == "file" else pvc_root / source.location / source.path
        if not local.is_dir():
            raise SourceError(f"model directory not found: {local} (from {uri})")
        return local, None
    if source.revision and source.scheme != "hf":
        log.info("--revision %s is part of the cache key only for %s:// (object stores have no revisions)",
                 revision, source.scheme)

    models_dir = cache_dir / "models"
    final = models_dir / cache_key(source)
    if final.is_dir():
        log.info("using cached download %s for %s", final, source.uri)
        return final, None
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SourceError(f"cache directory {cache_dir} is not writable: {e.strerror or e}") from e
    _clean_stale_tmp(models_dir)
    factory = (fetchers or DEFAULT_FETCHERS).get(source.scheme)
    if factory is None:
        raise SourceError(f"no fetcher for {source.scheme}://")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=models_dir))
    except OSError as e:
        raise SourceError(f"cache directory {cache_dir} is not writable: {e.strerror or e}") from e
    verified: dict[str, Any] | None = None
    try:
        started = time.monotonic()
        fetcher = factory()
        try:
            if signed is not None and hasattr(fetcher, "download_into"):
                log.info("downloading and verifying the %d signed files of %s into %s", signed.file_count,
                         source.uri, tmp)
                total = fetch_signed(signed.files(), tmp, signed,
                                     lambda rel, sink: fetcher.download_into(source, rel, sink))
                verified = summary(signed, time.monotonic() - started, total)
            else:
                if signed is not None and isinstance(fetcher, HFFetcher):
                    fetcher.allow_patterns = signed.files()
                log.info("downloading %s into %s", source.uri, tmp)
                fetcher.fetch(source, tmp)
        except SourceError:
            raise
        except Exception as e:  # any client library error becomes one line
            from llmos_signing import VerificationError

            if isinstance(e, VerificationError):
                raise
            raise SourceError(f"download of {source.uri} failed: {type(e).__name__}: {e}".splitlines()[0]) from e
        try:
            os.rename(tmp, final)
        except OSError:
            if final.is_dir():  # another process finished the same download first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
                verified = None  # theirs was not verified by us
            else:
                raise
        log.info("downloaded %s in %.1fs", source.uri, time.monotonic() - started)
        return final, verified
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
