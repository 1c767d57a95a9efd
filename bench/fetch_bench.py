"""Startup of a signed model from an S3-compatible store: fetch-then-verify (as the runtime did before) vs the
runtime's one pass (bundle first, only the signed files, several at once, hashed while written).

A local S3-compatible server (moto's server mode, a subprocess on 127.0.0.1) holds a model of ``--files`` files
totalling ``--size-mib`` (default 2 GiB in 40 files), signed with a throwaway key. Side by side:

    before:   one object at a time (S3Fetcher as it was), then llmos_signing.verify_model over the directory
    parallel: the runtime's parallel fetch (no signature known), then verify_model — the runtime's path for a
              cached or unsigned-at-fetch model
    one pass: resolve_source_verified with the signed manifest — the runtime's path for a signed remote model

Goal (issue 10): one pass <= 0.6 x before. The verify pass here reads from the page cache (a warm machine); on a
node whose free memory is smaller than the model, it reads from disk and "before" is slower still.

    .venv/bin/python bench/fetch_bench.py [--size-mib 2048] [--files 40] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "runtime"), str(ROOT)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(d: Path, total: int, files: int) -> None:
    """``files`` files of ``total`` bytes in all: a config, then equal safetensors-like shards of random bytes."""
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"architectures": ["Bench"]}')
    per = total // max(1, files - 1)
    block = os.urandom(1 << 20)
    for i in range(files - 1):
        with open(d / f"model-{i + 1:05d}-of-{files - 1:05d}.safetensors", "wb") as f:
            left = per
            n = i.to_bytes(8, "little")
            while left > 0:
                chunk = (n + block)[: min(left, len(block) + 8)]
                f.write(chunk)
                left -= len(chunk)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=2048, help="total model size (default 2048 = 2 GiB)")
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()

    import boto3

    from llmos_runtime import sources
    from llmos_runtime.sources import S3Fetcher, parse_source, resolve_source_verified
    from llmos_signing import sign_model, verify_bundle, verify_model
    from tests.support.tiny_model import make_signing_key

    work = Path(tempfile.mkdtemp(prefix="llmos-fetch-bench-"))
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        model = work / "model"
        make_model(model, args.size_mib << 20, args.files)
        priv, pub = make_signing_key(work / "keys")
        sig = work / "model.sig"
        sign_model(model, priv.read_bytes(), signature_path=sig)
        keys = {"signer": pub.read_bytes()}
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        for f in sorted(model.iterdir()):
            s3.upload_file(str(f), "models", f"bench/{f.name}")
        # the repository also holds files the signature does not list (like Llama-3's original/ checkpoint)
        s3.put_object(Bucket="models", Key="bench/original/params.json", Body=b"{}")
        total = sum(f.stat().st_size for f in model.iterdir())
        uri = "s3://models/bench"

        def before(dest: Path) -> None:
            source = parse_source(uri)
            client = boto3.client("s3")
            dest.mkdir(parents=True)
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="models", Prefix="bench/"):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len("bench/"):]
                    if rel.startswith("original/"):
                        continue  # not part of the signed model (the old runtime fetched it, then failed on it)
                    client.download_file(source.location, obj["Key"], str(sources._safe_target(dest, rel)))
            verify_model(dest, sig, keys)

        def parallel(cache: Path) -> None:
            fetchers = {"s3": lambda: _SignedOnly(S3Fetcher())}
            path, _ = resolve_source_verified(uri, cache_dir=cache, pvc_root=work, fetchers=fetchers)
            verify_model(path, sig, keys)

        def one_pass(cache: Path) -> None:
            signed = verify_bundle(sig.read_bytes(), keys)
            _, summary = resolve_source_verified(uri, cache_dir=cache, pvc_root=work, signed=signed)
            assert summary is not None and summary["verified_while_fetching"]

        results: dict[str, list[float]] = {"before": [], "parallel": [], "one pass": []}
        for r in range(args.rounds):
            for name, fn in (("before", before), ("parallel", parallel), ("one pass", one_pass)):
                dest = work / f"{name.replace(' ', '-')}-{r}"
                t = time.monotonic()
                fn(dest)
                results[name].append(time.monotonic() - t)
                shutil.rmtree(dest)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    best = {k: min(v) for k, v in results.items()}
    mib = total / (1 << 20)
    print(f"\n{args.files} files, {mib:,.0f} MiB, moto S3 server on 127.0.0.1, {os.cpu_count()} CPUs, "
          f"best of {args.rounds}")
    print(f"{'':44}{'seconds':>9}{'MiB/s':>9}{'x before':>10}")
    rows = [("fetch one at a time, then verify (before)", "before"),
            ("fetch in parallel, then verify", "parallel"),
            ("fetch + verify in one pass (runtime)", "one pass")]
    for label, key in rows:
        print(f"{label:44}{best[key]:9.2f}{mib / best[key]:9.0f}{best[key] / best['before']:10.2f}")
    print(f"goal (one pass <= 0.6 x before): {'met' if best['one pass'] <= 0.6 * best['before'] else 'NOT met'}")
    return 0


class _SignedOnly:
    """The parallel fetch of a prefix, minus objects outside the signed model (for a like-for-like comparison)."""

    def __init__(self, inner):
        self.inner = inner

    def fetch(self, source, dest: Path) -> None:
        self.inner.fetch(source, dest)
        shutil.rmtree(dest / "original", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
