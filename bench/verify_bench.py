#!/usr/bin/env python3
"""Verification speed: llmos vs model_signing 1.1.1 (library and command line), page cache warm.

Layouts (issue 5 item 7), created under a temporary directory or --dir:
  (a) 3 files of 512 MiB plus 300 small ones (1-128 KiB, nested);
  (b) 40 files of 32 MiB;
  (c) one 2 GiB file.
Each is signed once by llmos with sha256/files (what `model_signing verify key` accepts) and once with blake3/files.
Every repetition times, in alternating order: the llmos library (verify_model), the llmos command line
(`llmos model verify`, a new process), the model_signing library (verifying.Config().use_elliptic_key_verifier(…)
.verify) and its command line (`model_signing verify key`, a new process); then the blake3 bundle through the llmos
library and the model_signing library.

The limit: with sha256 and the files method a file's digest cannot be split, so the best a verifier can do is the best
schedule of whole-file digests over the cores at the single-core sha256 speed: max(largest file, total / cores), since
a digest's state may move between cores (see makespan()). For blake3
the limit is all cores on every byte: cores x single-thread blake3 speed. The single-core speeds are measured in the
same run as one thread hashing a page-cached 512 MiB file with the standard library (hashlib.file_digest): what one
core can verify, reads from the page cache included. The speed of the hash function alone (a buffer that stays in the
CPU cache) is printed too, with each tool's fraction of that stricter, unreachable bound ("of hash-only").
Figures are the best of the repetitions (a noisy machine only ever makes a run slower); medians are printed too.

    .venv/bin/python bench/verify_bench.py [--reps 5] [--layouts abc] [--dir DIR --keep]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "runtime"))  # when run outside the project venv's editable install

import blake3  # noqa: E402

import llmos_signing as ls  # noqa: E402
from llmos_signing.hashing import cores  # noqa: E402
from llmos_signing.testing import write_keypair  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
BIN = Path(sys.executable).parent


def layout_files(name: str) -> dict[str, int]:
    if name == "a":
        files = {f"model-{i:05d}-of-00003.safetensors": 512 * MiB for i in range(1, 4)}
        rnd = random.Random(5)
        for i in range(300):
            files[f"extra/{i % 12}/file-{i:03d}.json"] = rnd.randint(1024, 128 * 1024)
        return files
    if name == "b":
        return {f"shards/model-{i:05d}.bin": 32 * MiB for i in range(40)}
    if name == "c":
        return {"model.bin": 2 * GiB}
    raise ValueError(name)


def create(root: Path, files: dict[str, int], block: bytes) -> None:
    marker = root / ".bench-complete"
    if marker.exists() and json.loads(marker.read_text()) == files:
        return
    if root.exists():
        shutil.rmtree(root)
    for rel, size in sorted(files.items()):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        head = hashlib.sha256(rel.encode()).digest()  # every file distinct
        with open(p, "wb") as f:
            left = size
            first = True
            while left:
                chunk = block[: min(len(block), left)]
                if first:
                    chunk = head + chunk[len(head):]
                    first = False
                f.write(chunk)
                left -= len(chunk)
    marker.write_text(json.dumps(files))


def warm(root: Path) -> None:
    buf = bytearray(8 * MiB)
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def makespan(sizes: list[int], n: int) -> int:
    """Bytes on the busiest core in the best schedule of whole-file digests over n cores.

    A file's digest is sequential: at any moment it runs on at most one core, but it may move between cores. The best
    schedule then takes max(largest file, total / n) (McNaughton), which a verifier reaches by sharing the cores
    among the largest files (model_signing does it with more threads than cores, llmos by largest-remaining-first).
    Without moving a digest between cores it would be the largest-first list schedule: printed as well.
    """
    return max(max(sizes), -(-sum(sizes) // n))


def list_makespan(sizes: list[int], n: int) -> int:
    heap = [0] * n
    for s in sorted(sizes, reverse=True):
        heapq.heappush(heap, heapq.heappop(heap) + s)
    return max(heap)


def file_speed(path: Path, constructor) -> float:
    """One thread hashing a page-cached file with the standard library's hashlib.file_digest (not llmos code)."""
    size = path.stat().st_size
    t = time.perf_counter()
    with open(path, "rb") as f:
        hashlib.file_digest(f, constructor)
    return size / (time.perf_counter() - t)


def compute_speed(constructor, chunk: bytes, repeat: int = 256) -> float:
    """One thread hashing a buffer that stays in the CPU cache: the hash function alone, no memory traffic."""
    h = constructor()
    t = time.perf_counter()
    for _ in range(repeat):
        h.update(chunk)
    h.digest()
    return len(chunk) * repeat / (time.perf_counter() - t)


def llmos_cli() -> list[str]:
    script = BIN / "llmos"
    probe = (subprocess.run([str(script), "model", "--help"], capture_output=True, text=True) if script.exists()
             else None)
    if probe is not None and probe.returncode == 0:
        return [str(script)]
    return [sys.executable, "-m", "llmos_signing.cli"]


def run_process(argv: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{r.stdout}{r.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="where to create the layouts (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the layouts (reused by the next run with --dir)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--layouts", default="abc")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from model_signing import verifying as ms_verifying  # imported up front: the library figure is the call only

    base = args.dir or Path(tempfile.mkdtemp(prefix="llmos-verify-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    n = cores()
    llmos_argv = llmos_cli()
    ms_argv = [str(BIN / "model_signing")]
    print(f"# llmos verify benchmark: {n} cores, python {sys.version.split()[0]}, dir {base}")
    print(f"# llmos CLI: {' '.join(Path(a).name if i == 0 else a for i, a in enumerate(llmos_argv))}; "
          f"reps {args.reps}; best of reps (median)")
    priv, pub = write_keypair(base / "keys", "bench")
    block = os.urandom(64 * MiB)
    create(base / "reference", {"single-core-reference.bin": 512 * MiB}, block)
    ref = base / "reference" / "single-core-reference.bin"
    warm(ref.parent)
    results: dict = {"cores": n, "layouts": {}}
    try:
        for name in args.layouts:
            files = layout_files(name)
            root = base / f"layout-{name}"
            create(root, files, block)
            sigs = base / "sigs"
            sigs.mkdir(exist_ok=True)
            sig, sig3 = sigs / f"{name}.sig", sigs / f"{name}.blake3.sig"
            ls.sign_model(root, priv.read_bytes(), signature_path=sig, ignore_paths=(".bench-complete",))
            ls.sign_model(root, priv.read_bytes(), signature_path=sig3, hash_type="blake3",
                          ignore_paths=(".bench-complete",))
            warm(root)
            total = sum(files.values())
            trusted = {"bench": pub.read_bytes()}

            tools = {
                "llmos library": lambda: ls.verify_model(root, sig, trusted),
                "llmos CLI": lambda: run_process(
                    [*llmos_argv, "model", "verify", str(root), "--key", str(pub), "--signature", str(sig), "-q"]),
                "model_signing library": lambda: ms_verifying.Config().use_elliptic_key_verifier(
                    public_key=pub).verify(root, sig),
                "model_signing CLI": lambda: run_process(
                    [*ms_argv, "verify", "key", "--signature", str(sig), "--public_key", str(pub), str(root)]),
                "llmos library blake3": lambda: ls.verify_model(root, sig3, trusted),
                "model_signing library blake3": lambda: ms_verifying.Config().use_elliptic_key_verifier(
                    public_key=pub).verify(root, sig3),
            }
            times: dict[str, list[float]] = {k: [] for k in tools}
            sha_speeds, b3_speeds, sha_cpu, b3_cpu = [], [], [], []
            chunk = block[:MiB]
            for rep in range(args.reps):
                sha_speeds.append(file_speed(ref, hashlib.sha256))
                b3_speeds.append(file_speed(ref, blake3.blake3))
                sha_cpu.append(compute_speed(hashlib.sha256, chunk))
                b3_cpu.append(compute_speed(blake3.blake3, chunk))
                order = list(tools) if rep % 2 == 0 else list(reversed(tools))
                for tool in order:
                    t = time.perf_counter()
                    tools[tool]()
                    times[tool].append(time.perf_counter() - t)
            sha, b3 = max(sha_speeds), max(b3_speeds)
            span = makespan(list(files.values()), n)
            limit_time = span / sha
            b3_limit_time = total / (n * b3)
            cpu_limit_time = span / max(sha_cpu)
            b3_cpu_limit_time = total / (n * max(b3_cpu))
            best = {k: min(v) for k, v in times.items()}
            med = {k: statistics.median(v) for k, v in times.items()}
            gib = lambda t: total / t / GiB  # noqa: E731
            print()
            print(f"## layout ({name}): {len(files)} files, {total / GiB:.2f} GiB")
            print(f"   one core, cached file (hashlib.file_digest): sha256 {sha / GiB:.2f} GiB/s, blake3 "
                  f"{b3 / GiB:.2f} GiB/s; hash function alone (in-cache buffer): sha256 {max(sha_cpu) / GiB:.2f}, "
                  f"blake3 {max(b3_cpu) / GiB:.2f} GiB/s")
            print(f"   limit: sha256 whole-file digests over {n} cores at the cached-file speed {limit_time:.3f} s = "
                  f"{gib(limit_time):.2f} GiB/s (files never moving between cores: "
                  f"{list_makespan(list(files.values()), n) / sha:.3f} s); "
                  f"blake3 {n} cores x single thread {b3_limit_time:.3f} s = {gib(b3_limit_time):.2f} GiB/s")
            print(f"   {'':30s} {'best s':>8s} {'GiB/s':>7s} {'median s':>9s} {'of limit':>9s} {'of hash-only':>12s}")
            for tool in tools:
                lim, cpu = (b3_limit_time, b3_cpu_limit_time) if "blake3" in tool else (limit_time, cpu_limit_time)
                print(f"   {tool:30s} {best[tool]:8.3f} {gib(best[tool]):7.2f} {med[tool]:9.3f} "
                      f"{lim / best[tool]:8.1%} {cpu / best[tool]:11.1%}")
            r_lib = best["model_signing library"] / best["llmos library"]
            r_cli = best["model_signing CLI"] / best["llmos CLI"]
            r_b3 = best["model_signing library blake3"] / best["llmos library blake3"]
            print(f"   llmos/model_signing speed: library {r_lib:.2f}x, CLI {r_cli:.2f}x, blake3 library {r_b3:.2f}x")
            checks = [
                ("llmos library >= 95% of the sha256 limit", limit_time / best["llmos library"] >= 0.95),
                ("llmos library never slower than model_signing library", r_lib >= 1.0),
                ("llmos blake3 >= 85% of cores x single-thread blake3", b3_limit_time / best["llmos library blake3"]
                 >= 0.85),
            ]
            if name == "a":
                checks.append(("llmos CLI >= 1.3x model_signing CLI end to end", r_cli >= 1.3))
            for label, ok in checks:
                print(f"   [{'PASS' if ok else 'FAIL'}] {label}")
            results["layouts"][name] = {
                "files": len(files), "bytes": total, "sha256_single_core_Bps": sha, "blake3_single_thread_Bps": b3,
                "sha256_hash_only_Bps": max(sha_cpu), "blake3_hash_only_Bps": max(b3_cpu),
                "limit_s": limit_time, "blake3_limit_s": b3_limit_time, "best_s": best, "median_s": med,
                "checks": dict(checks),
            }
    finally:
        if not args.keep:
            shutil.rmtree(base / "keys", ignore_errors=True)
            shutil.rmtree(base / "reference", ignore_errors=True)
            if args.dir is None:
                shutil.rmtree(base, ignore_errors=True)
            else:
                for name in args.layouts:
                    shutil.rmtree(base / f"layout-{name}", ignore_errors=True)
                shutil.rmtree(base / "sigs", ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(all(v["checks"].values()) for v in results["layouts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
