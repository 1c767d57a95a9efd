"""Make the bytes vLLM loads the bytes that were verified.

- ``resolve_once``: the model path is resolved to its real path once (no symlink is followed again later), and that
  real path is what the engine gets: a ``current -> v1`` link flipped to ``v2`` after verification changes nothing.
- ``snapshot`` / ``changes``: the file set with size, device, inode, mtime and ctime of every entry, taken before
  hashing; compared after hashing and again right before the replica turns ready. A file added, removed, replaced
  or rewritten in between (ctime changes on every write, rename or chmod, and cannot be set back) is refused.
- ``private_copy``: ``--verify-mode copy`` copies a shared volume's model into pod-private storage (nobody else can
  write there) and the copy is what is verified and served.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

# (size, device, inode, mtime ns, ctime ns, mode type)
Entry = tuple[int, int, int, int, int, int]
Snapshot = dict[str, Entry]


class IntegrityError(Exception):
    """The model's files changed between verification and serving, or could not be copied. One line."""


def resolve_once(path: Path) -> Path:
    return Path(os.path.realpath(path))


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root`` (and ``root`` itself as ``.``), symlinks not followed."""
    out: Snapshot = {}

    def entry(st: os.stat_result) -> Entry:
        return (st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, stat.S_IFMT(st.st_mode))

    st = os.lstat(root)
    # a directory's own size/mtime change with its entries, which are compared one by one: keep identity only
    out["."] = (0, st.st_dev, st.st_ino, 0, 0, stat.S_IFMT(st.st_mode))
    stack = [("", os.fspath(root))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        with os.scandir(abs_dir) as it:
            for de in it:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                st = de.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    out[rel + "/"] = (0, st.st_dev, st.st_ino, 0, 0, stat.S_IFDIR)
                    stack.append((rel, de.path))
                else:
                    out[rel] = entry(st)
    return out


def changes(before: Snapshot, after: Snapshot) -> str | None:
    """One line naming the first difference, or None."""
    added = sorted(set(after) - set(before))
    if added:
        more = f" (and {len(added) - 1} more)" if len(added) > 1 else ""
        return f"file added after verification: {added[0]}{more}"
    removed = sorted(set(before) - set(after))
    if removed:
        return f"file removed after verification: {removed[0]}"
    for name in sorted(before):
        if before[name] != after[name]:
            b, a = before[name], after[name]
            what = "replaced" if (b[1], b[2], b[5]) != (a[1], a[2], a[5]) else "modified"
            return f"file {what} after verification: {name}"
    return None


def private_copy(src: Path, dest: Path, chunk: int = 8 << 20, exclude: frozenset[str] = frozenset(),
                 max_bytes: int | None = None) -> Path:
    """Copy the model directory ``src`` into ``dest`` (replaced if present). Regular files and directories are
    copied; a symlink is copied as a symlink (verification refuses it, as it would in place); other file types are
    refused; ``exclude`` (paths relative to ``src``, e.g. the signature file kept beside the weights) is left out.
    With ``max_bytes``, a copy that grows past it stops (IntegrityError; counted while copying, not from sizes a
    writer could change meanwhile) and nothing is left behind. Returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _copy_tree(src, tmp, chunk, exclude, max_bytes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.rename(tmp, dest)
    return dest


def _copy_tree(src: Path, tmp: Path, chunk: int, exclude: frozenset[str], max_bytes: int | None) -> None:
    copied = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        rel = os.path.relpath(dirpath, src)
        target_dir = tmp if rel == "." else tmp / rel
        for d in list(dirnames):
            p = os.path.join(dirpath, d)
            if os.path.islink(p):
                os.symlink(os.readlink(p), target_dir / d)
                dirnames.remove(d)
            else:
                (target_dir / d).mkdir()
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.normpath(os.path.join(rel, f)) in exclude:
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(p), target_dir / f)
                continue
            if not stat.S_ISREG(st.st_mode):
                raise IntegrityError(f"cannot copy {os.path.join(rel, f)}: not a regular file")
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                with os.fdopen(fd, "rb", closefd=False) as r, open(target_dir / f, "wb") as w:
                    while data := r.read(chunk):
                        copied += len(data)
                        if max_bytes is not None and copied > max_bytes:
                            raise IntegrityError(f"{src} is larger than the {max_bytes} bytes allowed for a copy")
                        w.write(data)
            finally:
                os.close(fd)
