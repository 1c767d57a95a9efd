"""Fetch a signed remote model in one pass: the signature bundle is read first, exactly the files it lists are
downloaded, several at once (resources.fetch_parallelism), and each file is hashed while it is written. When the last byte lands, the model is
verified: there is no second pass over the bytes (a fetch-then-verify start reads every byte twice, and the second
read of a model larger than the page cache comes from disk).

The digests are OpenSSF Model Signing's (llmos_signing): the files method hashes each file whole, the shards method
each ``shard_size`` range of a file; the signed manifest names the hash (sha256, blake2b, blake3). A file whose
digest differs, whose size does not give the signed shards, or that is missing remotely fails the whole fetch
(VerificationError naming the file); nothing is ever written outside the destination directory, and the caller
only renames a complete, verified download into the cache.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)



def new_hasher(hash_type: str):
    if hash_type == "sha256":
        return hashlib.sha256()
    if hash_type == "blake2b":
        return hashlib.blake2b()
    if hash_type == "blake3":
        import blake3

        return blake3.blake3()
    raise ValueError(f"unsupported hash type {hash_type!r}")


class StreamHasher:
    """The manifest digests of one file, fed its bytes in order: {resource name: raw digest}."""

    def __init__(self, rel: str, method: str, hash_type: str, shard_size: int | None):
        self.rel, self.method, self.hash_type = rel, method, hash_type
        self.shard_size = shard_size or 0
        self.offset = 0
        self.start = 0
        self.digests: dict[str, bytes] = {}
        self.h = new_hasher(hash_type)

    def update(self, data: bytes | memoryview) -> None:
        if self.method == "files":
            self.h.update(data)
            self.offset += len(data)
            return
        view = memoryview(data)
        while view:
            room = self.start + self.shard_size - self.offset
            part, view = view[:room], view[room:]
            self.h.update(part)
            self.offset += len(part)
            if self.offset == self.start + self.shard_size:
                self.digests[f"{self.rel}:{self.start}:{self.offset}"] = self.h.digest()
                self.start, self.h = self.offset, new_hasher(self.hash_type)

    def finish(self) -> dict[str, bytes]:
        if self.method == "files":
            self.digests[self.rel] = self.h.digest()
        elif self.offset > self.start:  # the last, shorter shard (an empty file has none)
            self.digests[f"{self.rel}:{self.start}:{self.offset}"] = self.h.digest()
        return self.digests


def expected_digests(signed) -> dict[str, dict[str, bytes]]:
    """{file: {resource name: raw digest}} from a SignedManifest."""
    from llmos_signing.manifest import split_shard_name

    out: dict[str, dict[str, bytes]] = {}
    for r in signed.resources:
        path = r.name if signed.method == "files" else split_shard_name(r.name)[0]
        out.setdefault(path, {})[r.name] = bytes.fromhex(r.digest)
    return out


class _Aborted(Exception):
    pass


class HashingSink:
    """A write-only, non-seekable file object: what is written goes to the file and through the hasher, in order.
    (Non-seekable on purpose: boto3's managed download then writes ranged parts in order.)"""

    def __init__(self, out: BinaryIO, hasher: StreamHasher, on_bytes: Callable[[int], None], abort: threading.Event):
        self.out, self.hasher, self.on_bytes, self.abort = out, hasher, on_bytes, abort

    def write(self, data) -> int:
        if self.abort.is_set():
            raise _Aborted()
        self.out.write(data)
        self.hasher.update(data)
        self.on_bytes(len(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass


# (relative file name, sink) -> writes the object's bytes, in order, into the sink
Downloader = Callable[[str, HashingSink], None]


def fetch_signed(files: Iterable[str], dest: Path, signed, download: Downloader, *,
                 parallel: int | None = None, progress: Callable[[int], None] | None = None) -> int:
    """Download every file the manifest lists into ``dest`` with ``download``, verifying each as it is written.
    Returns the bytes fetched. Raises VerificationError (HashMismatch, MissingFile) or the downloader's error."""
    from llmos_signing import VerificationError

    from .sources import _safe_target

    expected = expected_digests(signed)
    total = [0]
    lock = threading.Lock()
    abort = threading.Event()

    def count(n: int) -> None:
        with lock:
            total[0] += n
        if progress is not None:
            progress(n)

    def one(rel: str) -> None:
        target = _safe_target(dest, rel)
        hasher = StreamHasher(rel, signed.method, signed.hash_type, signed.shard_size)
        with open(target, "wb") as out:
            try:
                download(rel, HashingSink(out, hasher, count, abort))
            except _Aborted:
                return
        if abort.is_set():
            return
        got = hasher.finish()
        want = expected[rel]
        if got.keys() != want.keys():
            raise VerificationError("HashMismatch", f"hash mismatch: {rel} (size changed)", rel)
        for name in want:
            if got[name] != want[name]:
                raise VerificationError("HashMismatch", f"hash mismatch: {rel}", rel)

    names = [f for f in files if f in expected]
    missing = [f for f in expected if f not in names]
    if missing:
        raise VerificationError("MissingFile", f"missing file: {sorted(missing)[0]}", sorted(missing)[0])
    from .resources import fetch_parallelism

    with ThreadPoolExecutor(max_workers=parallel or fetch_parallelism(), thread_name_prefix="llmos-fetch") as pool:
        # largest first would need sizes; the manifest order is the signing order (usually config, then shards)
        futures = [pool.submit(one, rel) for rel in names]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                abort.set()
                for other in futures:
                    other.cancel()
                raise f.exception()
        for f in futures:
            f.result()
    return total[0]


def summary(signed, seconds: float, total_bytes: int) -> dict[str, Any]:
    return {"seconds": round(seconds, 3), "root_digest": signed.root_digest, "signer": signed.signer,
            "key_hint": signed.key_hint, "file_count": signed.file_count, "total_bytes": total_bytes,
            "verified_while_fetching": True}
