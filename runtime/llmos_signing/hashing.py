"""Parallel hashing of files and file ranges.

Throughput is the point: a model is tens to hundreds of GiB and is verified before every start.

- sha256 / blake2b: one digest per file (files method) or per shard (shards method). A digest cannot be split across
  cores, but its state can move between them: one worker thread per core takes, 16 MiB at a time, the task with the
  most bytes left among a small active set (largest remaining first). So three 512 MiB files on two cores finish
  together after 768 MiB per core, not after 1 GiB on one core and 512 MiB on the other; the schedule meets the best
  possible, max(largest file, total / cores). hashlib releases the GIL while it hashes, so the threads really run
  in parallel.
- blake3: one file's digest itself runs on all cores (the blake3 package's multithreaded update), so files of 8 MiB
  and more go one after another through that, while smaller files go through the workers, single-threaded.
- Reads: sha256/blake2b read a file into a 1 MiB per-thread buffer (pread), which stays in the core's cache while it
  is hashed. Measured on the 2-core VM this project is built on: hashing straight from mapped page-cache pages (mmap,
  no copy) runs at ~1.05 GiB/s per core, copying 1 MiB at a time into a cached buffer at ~1.40 GiB/s, and handing
  buffers from a reader thread to a hashing thread is slower still (the data lands in the wrong core's cache).
  blake3 maps the file (update_mmap, all cores), twice as fast as reading it.
- A file is opened once (O_NOFOLLOW) and checked by size when it is opened and after it is hashed: a file that grew,
  shrank or turned into a symlink since the directory was listed is a mismatch.
- ``StreamHash``: the same digests for bytes that arrive in order (a download hashed while it is written), so that a
  one-pass fetch (llmos_runtime/fetch.py) and a verification of files on disk share one hasher and one shard layout.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .errors import VerificationError

__all__ = [
    "HashTask",
    "hash_tasks",
    "cores",
    "HASH_TYPES",
    "DIGEST_SIZE",
    "normalize_hash_type",
    "new_hasher",
    "shard_bounds",
    "StreamHash",
    "Aborted",
]

HASH_TYPES = ("sha256", "blake2b", "blake3")
DIGEST_SIZE = {"sha256": 32, "blake2b": 64, "blake3": 32}
_ALIASES = {"sha256": "sha256", "sha-256": "sha256", "blake2b": "blake2b", "blake2": "blake2b", "blake3": "blake3"}

BUFFER = 1 << 20  # per-thread read buffer: stays in the core's L2 cache while it is hashed
SMALL = 1 << 20  # ranges up to this size are read with a single pread
SLICE = 16 << 20  # a worker hashes this much of a task before it picks the task with the most left again
BATCH = 2 << 20  # small whole files are handed to a worker in batches of about this many bytes (64 files at most)
WINDOW = 64 << 20  # blake3 ranges that are not whole files are mapped this much at a time
BLAKE3_PARALLEL_MIN = 8 << 20  # blake3 files at least this large are hashed on all cores, one at a time
_PROC_FD = os.path.isdir("/proc/self/fd")
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

Progress = Callable[[int, int], None]


def normalize_hash_type(name: str) -> str | None:
    return _ALIASES.get(str(name).lower())


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class HashTask:
    """Hash bytes [start, end) of ``path``; ``key`` names the result; ``rel`` is the file's name for messages.

    ``file_size`` is the whole file's size when the directory was listed (default: ``end``): a file found with
    another size when it is opened, or after it was hashed, is a mismatch (it grew or shrank meanwhile).
    """

    key: str
    path: str
    rel: str
    start: int
    end: int
    file_size: int = -1

    @property
    def size(self) -> int:
        return self.end - self.start


class Aborted(Exception):
    """Hashing stopped because another task failed (the first failure is what is reported)."""


class _Counter:
    def __init__(self, total: int, progress: Progress | None):
        self.total = total
        self.done = 0
        self.progress = progress
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.progress is None or n <= 0:
            return
        with self.lock:
            self.done += n
            self.progress(self.done, self.total)


def shard_bounds(size: int, shard_size: int) -> list[tuple[int, int]]:
    """The shards model_signing makes of a file: none for an empty file, else [k*s, min((k+1)*s, size))."""
    return [(start, min(start + shard_size, size)) for start in range(0, size, shard_size)]


def new_hasher(hash_type: str, threads: int = 1):
    """A fresh hashlib-style object for one of HASH_TYPES (blake3 on all cores when ``threads`` > 1)."""
    if hash_type == "sha256":
        return hashlib.sha256()
    if hash_type == "blake2b":
        return hashlib.blake2b()
    if hash_type == "blake3":
        import blake3

        if threads > 1:
            return blake3.blake3(max_threads=blake3.blake3.AUTO)
        return blake3.blake3()
    raise ValueError(f"unsupported hash type {hash_type!r}")


def _changed(task: HashTask) -> VerificationError:
    return VerificationError("HashMismatch", f"hash mismatch: {task.rel} (changed while hashing)", task.rel)


def _open(task: HashTask) -> int:
    try:
        fd = os.open(task.path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise VerificationError("MissingFile", f"missing file: {task.rel} (removed while hashing)", task.rel) from None
    except OSError as err:
        if err.errno == errno.ELOOP:  # O_NOFOLLOW: it became a symlink
            raise VerificationError("Symlink", f"symlink in model directory: {task.rel}", task.rel) from None
        raise VerificationError("UnreadableFile", f"cannot read {task.rel}: {err.strerror or err}", task.rel) from None
    try:
        if os.fstat(fd).st_size != _want(task):  # grew or shrank since it was listed (and never map past its end)
            raise _changed(task)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _want(task: HashTask) -> int:
    return task.file_size if task.file_size >= 0 else task.end


def _finish(fd: int, task: HashTask) -> None:
    try:
        if os.fstat(fd).st_size != _want(task):
            raise _changed(task)
    finally:
        os.close(fd)


_local = threading.local()


def _buffer() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(BUFFER)
    return buf


def _read_into_hash(fd: int, task: HashTask, h, off: int, stop: int, counter: _Counter) -> None:
    """Hash bytes [off, stop) of fd through the thread's cached buffer."""
    if stop - off <= SMALL and off == task.start and stop == task.end:
        data = os.pread(fd, stop - off, off)
        if len(data) != stop - off:
            raise _changed(task)
        h.update(data)
        counter.add(len(data))
        return
    buf = _buffer()
    while off < stop:
        n = min(len(buf), stop - off)
        view = memoryview(buf)[:n]
        try:
            if os.preadv(fd, [view], off) != n:
                raise _changed(task)
            h.update(view)
        finally:
            view.release()
        counter.add(n)
        off += n


def _hash_on_all_cores(task: HashTask, counter: _Counter, abort: threading.Event) -> bytes:
    """blake3 of one task with every core inside the hash (files are mapped, not read)."""
    h = new_hasher("blake3", threads=2)
    fd = _open(task)
    try:
        if task.start == 0 and task.end == _want(task) and _PROC_FD:
            h.update_mmap(f"/proc/self/fd/{fd}")  # the file this fd opened, not whatever the path names by now
            counter.add(task.size)
        else:
            gran = mmap.ALLOCATIONGRANULARITY
            off, end = task.start, task.end
            while off < end:
                if abort.is_set():
                    raise Aborted
                base = off - off % gran
                stop = min(end, base + WINDOW)
                m = mmap.mmap(fd, stop - base, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base)
                try:
                    view = memoryview(m)
                    part = view[off - base : stop - base]
                    try:
                        h.update(part)
                    finally:
                        part.release()
                        view.release()
                finally:
                    m.close()
                counter.add(stop - off)
                off = stop
    except OSError as err:
        os.close(fd)
        raise VerificationError("UnreadableFile", f"cannot read {task.rel}: {err}", task.rel) from None
    except BaseException:
        os.close(fd)
        raise
    _finish(fd, task)
    return h.digest()


def _hash_small_file(task: HashTask, hash_type: str) -> bytes:
    """A whole file of at most SMALL bytes: open, one pread of size + 1 (which also proves the size), close."""
    try:
        fd = os.open(task.path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise VerificationError("MissingFile", f"missing file: {task.rel} (removed while hashing)", task.rel) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VerificationError("Symlink", f"symlink in model directory: {task.rel}", task.rel) from None
        raise VerificationError("UnreadableFile", f"cannot read {task.rel}: {err.strerror or err}", task.rel) from None
    try:
        data = os.pread(fd, task.end + 1, 0)
    except OSError as err:
        raise VerificationError("UnreadableFile", f"cannot read {task.rel}: {err.strerror or err}", task.rel) from None
    finally:
        os.close(fd)
    if len(data) != task.end:
        raise _changed(task)
    h = new_hasher(hash_type)
    h.update(data)
    return h.digest()


def _is_small_file(task: HashTask) -> bool:
    return task.start == 0 and task.end <= SMALL and task.file_size in (-1, task.end)


class _Job:
    """One task in progress, or a batch of small whole files that one worker hashes in a row."""

    __slots__ = ("task", "batch", "hasher", "fd", "off", "busy", "seq", "size")

    def __init__(self, task: HashTask | None, hasher, seq: int, batch: list[HashTask] | None = None):
        self.task = task
        self.batch = batch
        self.hasher = hasher
        self.fd = -1
        self.off = task.start if task is not None else 0
        self.busy = False
        self.seq = seq
        self.size = task.end if task is not None else sum(t.size for t in batch)

    @property
    def left(self) -> int:
        return self.size - self.off


class _Scheduler:
    """Workers share tasks slice by slice, always taking the task with the most bytes left (see module doc)."""

    def __init__(self, tasks: list[HashTask], hash_type: str, workers: int, counter: _Counter,
                 abort: threading.Event, on_done: Callable[[HashTask, bytes], None],
                 on_error: Callable[[BaseException], None]):
        self.pending = sorted(tasks, key=lambda t: -t.size)  # largest first
        self.pending.reverse()  # pop() from the end
        self.hash_type = hash_type
        self.active: list[_Job] = []
        self.capacity = 2 * workers  # tasks in progress at once (bounded: open files)
        self.cond = threading.Condition()
        self.counter = counter
        self.abort = abort
        self.on_done = on_done
        self.on_error = on_error
        self.seq = 0

    def _admit(self) -> _Job:
        self.seq += 1
        task = self.pending.pop()
        if not _is_small_file(task):
            return _Job(task, new_hasher(self.hash_type), self.seq)
        batch, size = [task], task.size
        while self.pending and len(batch) < 64 and _is_small_file(self.pending[-1]) and size < BATCH:
            task = self.pending.pop()
            batch.append(task)
            size += task.size
        return _Job(None, None, self.seq, batch)

    def _next(self) -> _Job | None:
        with self.cond:
            while True:
                if self.abort.is_set():
                    return None
                while self.pending and len(self.active) < self.capacity:
                    self.active.append(self._admit())
                free = [j for j in self.active if not j.busy]
                if free:
                    job = max(free, key=lambda j: (j.left, -j.seq))
                    job.busy = True
                    return job
                if not self.active:
                    return None
                self.cond.wait()

    def _release(self, job: _Job, done: bool) -> None:
        with self.cond:
            job.busy = False
            if done:
                self.active.remove(job)
            self.cond.notify_all()

    def _run_batch(self, job: _Job) -> None:
        for task in job.batch:
            if self.abort.is_set():
                return
            self.on_done(task, _hash_small_file(task, self.hash_type))
            self.counter.add(task.size)

    def _run_slice(self, job: _Job) -> bool:
        task = job.task
        if job.fd < 0:
            job.fd = _open(task)
        stop = min(task.end, job.off + SLICE)
        if stop > job.off:
            try:
                _read_into_hash(job.fd, task, job.hasher, job.off, stop, self.counter)
            except OSError as err:
                raise VerificationError("UnreadableFile", f"cannot read {task.rel}: {err}", task.rel) from None
        job.off = stop
        if job.off < task.end:
            return False
        fd, job.fd = job.fd, -1
        _finish(fd, task)
        self.on_done(task, job.hasher.digest())
        return True

    def run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                if job.batch is not None:
                    self._run_batch(job)
                    done = True
                else:
                    done = self._run_slice(job)
                self._release(job, done=done)
            except BaseException as err:  # noqa: BLE001 - handed to the caller, which re-raises
                if job.fd >= 0:
                    os.close(job.fd)
                    job.fd = -1
                self.on_error(err)
                self.abort.set()
                self._release(job, done=True)

    def close(self) -> None:
        for job in self.active:
            if job.fd >= 0:
                os.close(job.fd)
                job.fd = -1


def hash_tasks(
    tasks: Iterable[HashTask],
    hash_type: str,
    *,
    progress: Progress | None = None,
    expected: Mapping[str, bytes] | None = None,
    threads: int | None = None,
) -> dict[str, bytes]:
    """Hash every task on all cores; returns key -> raw digest.

    With ``expected``, stops at the first digest that differs and raises VerificationError(HashMismatch) naming the
    file (the earliest in ``tasks`` order among those found by then).
    """
    tasks = list(tasks)
    order = {t.key: i for i, t in enumerate(tasks)}
    threads = threads or cores()
    counter = _Counter(sum(t.size for t in tasks), progress)
    if progress is not None:
        progress(0, counter.total)
    abort = threading.Event()
    results: dict[str, bytes] = {}
    mismatches: list[HashTask] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def on_done(task: HashTask, digest: bytes) -> None:
        with lock:
            results[task.key] = digest
            if expected is not None and expected.get(task.key) != digest:
                mismatches.append(task)
                abort.set()

    def on_error(err: BaseException) -> None:
        with lock:
            if not isinstance(err, Aborted):
                errors.append(err)

    if hash_type == "blake3" and threads > 1:
        big = sorted((t for t in tasks if t.size >= BLAKE3_PARALLEL_MIN), key=lambda t: -t.size)
        small = [t for t in tasks if t.size < BLAKE3_PARALLEL_MIN]
    else:
        big, small = [], tasks

    scheduler = _Scheduler(small, hash_type, threads, counter, abort, on_done, on_error)
    workers = []
    try:
        n = min(threads, len(small))
        if n > 1 or (n == 1 and big):
            workers = [threading.Thread(target=scheduler.run, name=f"llmos-hash-{i}", daemon=True) for i in range(n)]
            for w in workers:
                w.start()
        elif n == 1:
            scheduler.run()
        for t in big:  # blake3: all cores inside each update, one file after another
            if abort.is_set():
                break
            try:
                on_done(t, _hash_on_all_cores(t, counter, abort))
            except BaseException as err:  # noqa: BLE001
                on_error(err)
                abort.set()
    except BaseException:
        abort.set()
        raise
    finally:
        for w in workers:
            w.join()
        scheduler.close()

    if errors:
        raise errors[0]
    if mismatches:
        first = min(mismatches, key=lambda t: order[t.key])
        raise VerificationError("HashMismatch", f"hash mismatch: {first.rel}", first.rel)
    return results


class StreamHash:
    """The manifest digests of one file whose bytes arrive in order: one digest for the whole file
    (``shard_size`` None, the files method) or one per ``shard_bounds`` range (the shards method).

    ``finish()`` returns ``[(start, end, digest)]``: the ranges are exactly ``shard_bounds(size, shard_size)`` (or
    ``[(0, size)]``), so the caller names them as the manifest does."""

    def __init__(self, hash_type: str, shard_size: int | None = None):
        self.hash_type = hash_type
        self.shard_size = shard_size
        self.size = 0
        self._start = 0
        self._h = new_hasher(hash_type)
        self._done: list[tuple[int, int, bytes]] = []

    def update(self, data: bytes | memoryview) -> None:
        if not self.shard_size:
            self._h.update(data)
            self.size += len(data)
            return
        view = memoryview(data)
        while view:
            room = self._start + self.shard_size - self.size
            part, view = view[:room], view[room:]
            self._h.update(part)
            self.size += len(part)
            if self.size == self._start + self.shard_size:
                self._cut()

    def _cut(self) -> None:
        self._done.append((self._start, self.size, self._h.digest()))
        self._start, self._h = self.size, new_hasher(self.hash_type)

    def finish(self) -> list[tuple[int, int, bytes]]:
        if not self.shard_size:
            return [(0, self.size, self._h.digest())]
        if self.size > self._start:  # the last, shorter shard (an empty file has none)
            self._cut()
        assert [(s, e) for s, e, _ in self._done] == shard_bounds(self.size, self.shard_size)
        return list(self._done)
