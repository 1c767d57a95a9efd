"""Helpers for tests of llmos_signing and of its users (operator, runtime): keys, test vectors, crafted bundles.

Not used at run time. Everything here writes only under the directory it is given.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .bundle import BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, pae
from .keys import public_pem, signature_hash
from .manifest import PREDICATE_TYPE, STATEMENT_TYPE

__all__ = ["generate_key", "write_keypair", "make_vectors", "craft_bundle", "statement_of", "VECTOR_SHARD_SIZE"]

_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
VECTOR_SHARD_SIZE = 1000  # make_vectors writes one file larger than this


def generate_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVES[curve]())


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_keypair(directory: Path, name: str = "signer", curve: str = "P-256") -> tuple[Path, Path]:
    """Write ``name.pem`` (private, PKCS#8) and ``name.pub`` (SubjectPublicKeyInfo) under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_key(curve)
    priv, pub = directory / f"{name}.pem", directory / f"{name}.pub"
    priv.write_bytes(private_pem(key))
    pub.write_bytes(public_pem(key.public_key()))
    return priv, pub


def make_vectors(root: Path) -> Path:
    """A small model directory that exercises ordering, nesting, empty files and sharding; returns ``root``.

    - ``a/b`` (a file inside directory ``a``) and ``a-c``: sorted by components ``a/b`` comes first, as a string
      ``a-c`` would ("-" < "/");
    - nested ``weights/layer.0/w.bin`` and ``weights/layer.10/w.bin``;
    - an empty file; a file with a space and a non-ASCII letter;
    - ``big.bin`` of 2,500 bytes: three shards at VECTOR_SHARD_SIZE;
    - ``.git/HEAD`` and ``.gitattributes``, which signing leaves out.
    """
    files = {
        "a/b": b"component-sorted first\n",
        "a-c": b"string-sorted first\n",
        "config.json": b'{"architectures": ["Tiny"], "hidden_size": 8}\n',
        "weights/layer.0/w.bin": bytes(range(256)) * 3,
        "weights/layer.10/w.bin": b"\x01" * 700,
        "empty.txt": b"",
        "tokenizer files/vocab-\u00e9.txt": "h\u00e9llo\n".encode(),
        "big.bin": bytes((i * 7) % 251 for i in range(2500)),
        ".git/HEAD": b"ref: refs/heads/main\n",
        ".gitattributes": b"*.bin filter=lfs\n",
    }
    for rel, data in files.items():
        p = root.joinpath(*rel.split("/"))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def statement_of(bundle: bytes) -> dict[str, Any]:
    """The decoded in-toto statement of a bundle (no verification)."""
    doc = json.loads(bundle)
    return json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))


def craft_bundle(
    statement: dict[str, Any] | bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    payload_type: str = PAYLOAD_TYPE,
    media_type: str = BUNDLE_MEDIA_TYPE,
    hint: str | None = "auto",
    raw_bytes: bool = False,
    fix_root: bool = False,
) -> bytes:
    """Sign an arbitrary statement into a bundle, validly, to test what verifiers make of odd contents.

    ``fix_root`` recomputes the subject digest over the resources (so that only the odd part is odd).
    ``hint=None`` leaves the hint out; ``raw_bytes`` writes the 1.0.x form (rawBytes + keyDetails) instead.
    """
    if isinstance(statement, dict):
        statement = json.loads(json.dumps(statement))
        if fix_root:
            h = hashlib.sha256()
            for r in statement["predicate"]["resources"]:
                h.update(bytes.fromhex(r["digest"]))
            statement["subject"][0]["digest"]["sha256"] = h.hexdigest()
        payload = json.dumps(statement, indent=2).encode()
    else:
        payload = statement
    sig = key.sign(pae(payload_type.encode(), payload), ec.ECDSA(signature_hash(key)))
    pem = public_pem(key.public_key())
    public_key: dict[str, Any] = {}
    if raw_bytes:
        public_key = {"rawBytes": base64.b64encode(pem).decode(), "keyDetails": "PKIX_ECDSA_P256_SHA_256"}
    elif hint == "auto":
        public_key = {"hint": hashlib.sha256(pem).hexdigest()}
    elif hint is not None:
        public_key = {"hint": hint}
    bundle = {
        "mediaType": media_type,
        "verificationMaterial": {"publicKey": public_key, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle).encode()


def default_statement(resources: list[dict[str, str]], *, method: str = "files", hash_type: str = "sha256",
                      shard_size: int | float | None = None, predicate_type: str = PREDICATE_TYPE,
                      statement_type: str = STATEMENT_TYPE, ignore_paths: list[str] | None = None) -> dict:
    """A statement around ``resources`` with a correct root digest."""
    h = hashlib.sha256()
    for r in resources:
        h.update(bytes.fromhex(r["digest"]))
    ser: dict[str, Any] = {"method": method, "hash_type": hash_type, "allow_symlinks": False,
                           "ignore_paths": ignore_paths if ignore_paths is not None else ["model.sig"]}
    if shard_size is not None:
        ser["shard_size"] = shard_size
    return {
        "_type": statement_type,
        "subject": [{"name": "model", "digest": {"sha256": h.hexdigest()}}],
        "predicateType": predicate_type,
        "predicate": {"serialization": ser, "resources": resources},
    }


def mkfifo_supported() -> bool:
    return hasattr(os, "mkfifo")
