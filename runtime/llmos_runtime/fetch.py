"""Fetch a signed remote model in one pass: the signature bundle is read first, exactly the files it lists are
downloaded, several at once (resources.fetch_parallelism), and each file is hashed while it is written. When the last
byte lands, the model is verified: there is no second pass over the bytes (a fetch-then-verify start reads every byte
twice, and the second read of a model larger than the page cache comes from disk).

The digests are OpenSSF Model Signing's, computed by llmos_signing itself (``hashing.StreamHash``: the same hasher
and shard layout that verifies files on disk; the manifest names the hash and the method). A file whose digest
differs, whose size does not give the signed shards, or that is missing remotely fails the whole fetch
(VerificationError naming the file); nothing is ever written outside the destination directory, and the caller only
renames a complete, verified download into the cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, BinaryIO

from llmos_signing.hashing import Aborted, StreamHash

from .paths import safe_target

log = logging.getLogger(__name__)


def expected_digests(signed) -> dict[str, dict[str, bytes]]:
    """{file: {resource name: raw digest}} from a SignedManifest."""
    from llmos_signing.manifest import split_shard_name

    out: dict[str, dict[str, bytes]] = {}
    for r in signed.resources:
        path = r.name if signed.method == "files" else split_shard_name(r.name)[0]
        out.setdefault(path, {})[r.name] = bytes.fromhex(r.digest)
    return out


def resource_digests(rel: str, method: str, hashed: list[tuple[int, int, bytes]]) -> dict[str, bytes]:
    """{manifest resource name: raw digest} of one file's StreamHash result."""
    from llmos_signing.manifest import shard_name

    if method == "files":
        return {rel: hashed[0][2]}
    return {shard_name(rel, start, end): digest for start, end, digest in hashed}


class HashingSink:
    """A write-only, non-seekable file object: what is written goes to the file and through the hasher, in order.
    (Non-seekable on purpose: boto3's managed download then writes ranged parts in order.)"""

    def __init__(self, out: BinaryIO, hasher: StreamHash, on_bytes: Callable[[int], None], abort: threading.Event):
        self.out, self.hasher, self.on_bytes, self.abort = out, hasher, on_bytes, abort

    def write(self, data) -> int:
        if self.abort.is_set():
            raise Aborted()
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

    expected = expected_digests(signed)
    shard_size = signed.shard_size if signed.method == "shards" else None
    total = [0]
    lock = threading.Lock()
    abort = threading.Event()

    def count(n: int) -> None:
        with lock:
            total[0] += n
        if progress is not None:
            progress(n)

    def one(rel: str) -> None:
        target = safe_target(dest, rel)
        hasher = StreamHash(signed.hash_type, shard_size)
        with open(target, "wb") as out:
            try:
                download(rel, HashingSink(out, hasher, count, abort))
            except Aborted:
                return
        if abort.is_set():
            return
        got = resource_digests(rel, signed.method, hasher.finish())
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
