"""`llmos model sign|verify|digest`: the command-line face of llmos_signing.

The `llmos` console script registers these with ``add_model_commands(subparsers)`` and runs ``args.func(args)``;
``python -m llmos_signing.cli model verify …`` runs them standalone. Importing this module is cheap (argparse only):
the signing library and cryptography load when a command runs, tqdm only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_model_commands", "main"]

_DEFAULT_SHARD_SIZE = 1_000_000_000  # = llmos_signing.DEFAULT_SHARD_SIZE (not imported: keep this module light)


def _err(message: str) -> int:
    from .errors import printable

    print(f"error: {printable(message)}", file=sys.stderr)
    return 1


class _Bar:
    """A tqdm progress bar on a terminal; nothing otherwise."""

    def __init__(self, desc: str, enabled: bool):
        self.bar = None
        self.last = 0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False, total=0
            )

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(done - self.last)
        self.last = done

    @property
    def callback(self):
        return self if self.bar is not None else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _show_progress(args: argparse.Namespace) -> bool:
    if getattr(args, "quiet", False):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _UserError(f"{what} not found: {path}") from None
    except OSError as err:
        raise _UserError(f"cannot read {what} {path}: {err.strerror or err}") from None


class _UserError(Exception):
    pass


def _cmd_sign(args: argparse.Namespace) -> int:
    from . import api, keys
    from .errors import SigningError
    from .manifest import GIT_IGNORE_PATHS

    try:
        pem = _read(args.key, "private key")
        password = None
        if args.password_file is not None:
            password = _read(args.password_file, "password file").rstrip(b"\r\n")
        elif os.environ.get("LLMOS_SIGNING_KEY_PASSWORD"):
            password = os.environ["LLMOS_SIGNING_KEY_PASSWORD"].encode()
        try:
            key = keys.load_private_key(pem, password)
        except ValueError as err:
            raise _UserError(f"{args.key}: {err}") from None
        sig = args.signature if args.signature is not None else api.default_signature_path(args.dir)
        bar = _Bar("hashing", _show_progress(args))
        try:
            data = api.sign_model(
                args.dir,
                key,
                signature_path=sig,
                hash_type=args.hash,
                method=args.method,
                shard_size=args.shard_size,
                ignore_paths=[*GIT_IGNORE_PATHS, *args.ignore_path],
                progress=bar.callback,
            )
        finally:
            bar.close()
    except (_UserError, SigningError) as err:
        return _err(str(err))
    except OSError as err:
        return _err(f"cannot write signature: {err}")
    from .bundle import verify_bundle

    signed = verify_bundle(data, {args.key.stem: key.public_key()})
    print(f"signed: root sha256:{signed.root_digest} ({signed.file_count} files, {signed.hash_type}, "
          f"{signed.method}) -> {sig}")
    return 0


def _key_names(paths: list[Path]) -> dict[str, Path]:
    names: dict[str, Path] = {}
    for p in paths:
        name = p.stem or p.name
        if name in names and names[name] != p:
            name = str(p)
        names[name] = p
    return names


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import api
    from .errors import VerificationError

    try:
        trusted = {name: _read(path, "public key") for name, path in _key_names(args.key).items()}
        sig = args.signature if args.signature is not None else api.default_signature_path(args.dir)
        bar = _Bar("verifying", _show_progress(args))
        try:
            model = api.verify_model(args.dir, sig, trusted, progress=bar.callback)
        finally:
            bar.close()
    except _UserError as err:
        return _err(str(err))
    except VerificationError as err:
        return _err(f"verification failed: {err}")
    print(f"verified: {api.describe(model)}")
    return 0


def _cmd_digest(args: argparse.Namespace) -> int:
    from . import api
    from .errors import SigningError
    from .manifest import DEFAULT_IGNORE_PATHS, build_manifest

    bar = _Bar("hashing", _show_progress(args))
    try:
        manifest = build_manifest(
            args.dir,
            hash_type=args.hash,
            method=args.method,
            shard_size=args.shard_size,
            ignore_paths=[*DEFAULT_IGNORE_PATHS, *args.ignore_path],
            progress=bar.callback,
        )
    except SigningError as err:
        return _err(str(err))
    finally:
        bar.close()
    if not manifest.resources:
        return _err(f"no files in {args.dir}")
    if args.resources:
        for r in manifest.resources:
            print(f"{r.algorithm}:{r.digest}  {r.name}")
    print(f"sha256:{manifest.root_digest}")
    if args.resources:
        print(f"({manifest.file_count} files, {api.human_size(manifest.total_bytes)})", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _hashing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hash",
        choices=("sha256", "blake3", "blake2b"),
        default="sha256",
        help="file digest (default sha256, what `model_signing verify` accepts; blake3 hashes a file on all cores)",
    )
    p.add_argument(
        "--method",
        choices=("files", "shards"),
        default="files",
        help="one digest per file (default) or per shard of --shard-size bytes",
    )
    p.add_argument("--shard-size", type=_positive_int, default=_DEFAULT_SHARD_SIZE, metavar="BYTES",
                   help=f"shard size for --method shards (default {_DEFAULT_SHARD_SIZE})")
    p.add_argument("--ignore-path", action="append", default=[], metavar="PATH",
                   help="a path relative to DIR to leave out (repeatable; .git* paths are always left out)")


def add_model_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``model`` with ``sign``, ``verify`` and ``digest``; each leaf sets ``func(args) -> int`` (exit code)."""
    model = subparsers.add_parser(
        "model",
        help="sign and verify model directories (OpenSSF Model Signing)",
        description="Sign and verify model directories in the OpenSSF Model Signing (OMS) format, compatible with "
        "the model_signing tool (key mode).",
    )
    sub = model.add_subparsers(dest="model_command", metavar="{sign,verify,digest}")
    sub.required = True

    sign = sub.add_parser("sign", help="hash DIR and sign it with an EC private key",
                          description="Hash DIR and write an OMS signature (default DIR/model.sig).")
    sign.add_argument("dir", type=Path, metavar="DIR")
    sign.add_argument("--key", type=Path, required=True, metavar="KEY.pem",
                      help="EC private key, PEM (P-256, P-384 or P-521)")
    sign.add_argument("--signature", type=Path, metavar="PATH", help="where to write the signature (DIR/model.sig)")
    sign.add_argument("--password-file", type=Path, metavar="PATH",
                      help="file holding the key's password (or set LLMOS_SIGNING_KEY_PASSWORD)")
    _hashing_options(sign)
    sign.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sign.set_defaults(func=_cmd_sign)

    verify = sub.add_parser(
        "verify",
        help="verify DIR against its signature and trusted public keys",
        description="Verify the signature (default DIR/model.sig) with the trusted keys, then re-hash DIR: every "
        "file must be signed and unchanged, and no other file may be present.",
    )
    verify.add_argument("dir", type=Path, metavar="DIR")
    verify.add_argument("--key", type=Path, action="append", required=True, metavar="PUB.pem",
                        help="trusted EC public key, PEM (repeatable; its name is the file name without extension)")
    verify.add_argument("--signature", type=Path, metavar="PATH", help="the signature file (DIR/model.sig)")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=_cmd_verify)

    digest = sub.add_parser("digest", help="print the root digest DIR would be signed with",
                            description="Print sha256:<root>, the digest `llmos model sign` would sign for DIR "
                            "with the same options (model.sig and .git* left out).")
    digest.add_argument("dir", type=Path, metavar="DIR")
    _hashing_options(digest)
    digest.add_argument("--resources", action="store_true", help="also print every file's digest")
    digest.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    digest.set_defaults(func=_cmd_digest)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmos", description="llmos model signing")
    sub = parser.add_subparsers(dest="command", metavar="{model}")
    sub.required = True
    add_model_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
