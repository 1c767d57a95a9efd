"""OMS signature files: a Sigstore bundle (v0.3, key mode) holding a DSSE envelope over an in-toto statement.

Verification here never touches model files: the operator, which does not have the weights, uses it alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from . import hashing
from .errors import VerificationError, printable
from .keys import PrivateKey, PublicKey, key_hint, load_public_key, public_pem, signature_hash
from .manifest import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Manifest,
    Resource,
    check_resource_path,
    normalize_ignore_paths,
    split_shard_name,
)

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "PAYLOAD_TYPE",
    "SignedManifest",
    "VerifiedModel",
    "build_bundle",
    "verify_bundle",
    "pae",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_OLDER_MEDIA_TYPES = (
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
)
PAYLOAD_TYPE = "application/vnd.in-toto+json"
_OLD_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"

TrustedKeys = Mapping[str, bytes | str | PublicKey]


@dataclass
class SignedManifest:
    """What a valid bundle says, after its signature checked out against a trusted key.

    ``resources`` are (name, algorithm, hex digest) in the signed order; ``signer`` is the NAME of the trusted key
    that verified; ``serialization`` is the signed serialization with numbers normalized to int.
    """

    root_digest: str
    signer: str
    key_hint: str
    resources: list[Resource]
    serialization: dict[str, Any]
    file_count: int
    hash_type: str
    method: str
    model_name: str = ""
    shard_size: int | None = None
    ignore_paths: tuple[str, ...] = ()

    def files(self) -> list[str]:
        """Signed file paths, in manifest order (each once, also for the shards method)."""
        if self.method == "files":
            return [r.name for r in self.resources]
        seen: dict[str, None] = {}
        for r in self.resources:
            seen.setdefault(split_shard_name(r.name)[0], None)
        return list(seen)


@dataclass
class VerifiedModel(SignedManifest):
    """A model directory whose files matched a SignedManifest, byte for byte."""

    total_bytes: int = 0


def pae(payload_type: bytes, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)


def _pae_compat(payload_type: bytes, payload: bytes) -> bytes:
    # model_signing 0.2 signed this by mistake (str of the bytes); its verifier still accepts it, and so do we.
    pt = payload_type.decode("utf-8", "replace")
    return f"DSSEV1 {len(pt)} {pt} {len(payload)} {payload!r}".encode()


# --- signing --------------------------------------------------------------------------------------------------


def build_bundle(manifest: Manifest, private_key: PrivateKey) -> bytes:
    """Sign ``manifest`` into OMS bundle JSON bytes (what model_signing writes for `sign key`)."""
    payload = json.dumps(manifest.statement(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ptype = PAYLOAD_TYPE.encode()
    sig = private_key.sign(pae(ptype, payload), ec.ECDSA(signature_hash(private_key)))
    pub = private_key.public_key()
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": hashlib.sha256(public_pem(pub)).hexdigest()},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8") + b"\n"


# --- verification ---------------------------------------------------------------------------------------------


def _malformed(message: str) -> VerificationError:
    return VerificationError("MalformedBundle", f"malformed bundle: {message}")


class _Duplicate(ValueError):
    pass


def _dict_no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _loads(data: bytes, what: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"{what} is not UTF-8 text") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise _malformed(f"{what} is empty")
    try:
        return json.loads(text, object_pairs_hook=_dict_no_duplicates, parse_constant=_reject_constant)
    except _Duplicate as dup:
        raise _malformed(f"{what} has duplicate key {dup.args[0]!r}") from None
    except (ValueError, RecursionError) as err:
        pos = getattr(err, "pos", None)
        where = f" at byte {pos}" if pos is not None else ""
        hint = " (truncated?)" if pos is not None and pos >= len(text.rstrip()) else ""
        raise _malformed(f"{what} is not valid JSON{where}{hint}") from None


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise _malformed(f"{what} missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        s = value.strip()
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not base64") from None


def _obj(parent: Any, key: str, what: str) -> dict:
    value = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(value, dict):
        raise _malformed(f"{what} missing or not an object")
    return value


def _int(value: Any, what: str) -> int:
    """Lenient: 8, 8.0 and "8" are all 8 (JSON round-trips through protobuf turn ints into floats)."""
    if isinstance(value, bool):
        raise _malformed(f"{what} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise _malformed(f"{what} is not an integer: {value!r}")


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise _malformed(f"{what} is not a boolean: {value!r}")


@dataclass
class _Trusted:
    name: str
    key: PublicKey
    hint: str = field(default="")


def _load_trusted(trusted_keys: TrustedKeys) -> list[_Trusted]:
    out = []
    for name, material in trusted_keys.items():
        try:
            key = load_public_key(material)
        except ValueError as err:
            raise VerificationError("BadTrustedKey", f"trusted key {name!r} is unusable: {err}") from None
        out.append(_Trusted(str(name), key, key_hint(key)))
    return out


def _check_signature(env: dict, candidates: list[_Trusted]) -> tuple[_Trusted, str, bytes]:
    payload = _b64(env.get("payload"), "dsseEnvelope.payload")
    ptype = env.get("payloadType")
    if not isinstance(ptype, str):
        raise _malformed("dsseEnvelope.payloadType missing or not a string")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise _malformed("dsseEnvelope.signatures missing or empty")
    raw_sigs = []
    for i, s in enumerate(sigs):
        if not isinstance(s, dict):
            raise _malformed(f"dsseEnvelope.signatures[{i}] is not an object")
        raw_sigs.append(_b64(s.get("sig"), f"dsseEnvelope.signatures[{i}].sig"))
    pt = ptype.encode("utf-8")
    messages = (pae(pt, payload), _pae_compat(pt, payload))
    for cand in candidates:
        algo = ec.ECDSA(signature_hash(cand.key))
        for sig in raw_sigs:
            for message in messages:
                try:
                    cand.key.verify(sig, message, algo)
                except InvalidSignature:
                    continue
                return cand, ptype, payload
    names = ", ".join(repr(c.name) for c in candidates)
    raise VerificationError(
        "BadSignature", f"bad signature: the DSSE signature does not verify with trusted key {names} (bundle altered?)"
    )


def _pick_keys(material: dict, keys: list[_Trusted]) -> tuple[list[_Trusted], str]:
    if not keys:
        raise VerificationError("UntrustedKey", "untrusted key: no trusted keys were given")
    pk = material.get("publicKey")
    if not isinstance(pk, dict):
        for k in ("x509CertificateChain", "certificate"):
            if k in material:
                raise VerificationError(
                    "UnsupportedBundle",
                    "unsupported bundle: it is signed with a certificate (Sigstore keyless or PKI); "
                    "llmos verifies key-mode bundles (model_signing sign key)",
                )
        raise _malformed("verificationMaterial.publicKey missing")
    hint = pk.get("hint")
    if hint is not None and not isinstance(hint, str):
        raise _malformed("verificationMaterial.publicKey.hint is not a string")
    if hint:
        hint = hint.strip().lower()
        return _keys_with_hint(keys, hint), hint
    raw = pk.get("rawBytes")  # the 1.0.x format: the public key itself (PEM or DER, base64)
    if isinstance(raw, str) and raw:
        try:
            embedded = load_public_key(_b64(raw, "publicKey.rawBytes"))
        except (ValueError, VerificationError):
            embedded = None
        if embedded is not None:
            h = key_hint(embedded)
            return _keys_with_hint(keys, h), h
    return keys, ""  # no hint at all: the signature decides


def _keys_with_hint(keys, hint: str):
    """The trusted keys whose hint is `hint`; none is an UntrustedKey failure."""
    matching = [k for k in keys if k.hint == hint]
    if not matching:
        trusted = ", ".join(repr(k.name) for k in keys)
        raise VerificationError(
            "UntrustedKey", f"untrusted key: signed by key {hint[:16]}… which is none of the trusted keys ({trusted})"
        )
    return matching


def verify_bundle(bundle: bytes | str, trusted_keys: TrustedKeys) -> SignedManifest:
    """Check an OMS bundle without touching any model file.

    In order: media type, key hint, DSSE signature over the exact decoded payload bytes, payload type, statement
    type, predicate type, one subject whose sha256 equals the root over the resources, resource names (no path
    traversal), algorithms, serialization. Raises VerificationError; returns the SignedManifest.
    """
    if isinstance(bundle, str):
        bundle = bundle.encode("utf-8")
    elif isinstance(bundle, (bytearray, memoryview)):
        bundle = bytes(bundle)
    if not isinstance(bundle, bytes):
        raise TypeError("bundle must be bytes (read the signature file first, or use verify_model with a Path)")
    keys = _load_trusted(trusted_keys)
    doc = _loads(bundle, "bundle")
    if not isinstance(doc, dict):
        raise _malformed("bundle is not a JSON object")
    media = doc.get("mediaType")
    if media != BUNDLE_MEDIA_TYPE:
        if media in _OLDER_MEDIA_TYPES:
            raise VerificationError(
                "UnsupportedBundle", f"unsupported bundle: media type {media} (OMS key mode writes {BUNDLE_MEDIA_TYPE})"
            )
        raise _malformed(f"mediaType is {printable(str(media))!r}, expected {BUNDLE_MEDIA_TYPE}")
    material = _obj(doc, "verificationMaterial", "verificationMaterial")
    candidates, hint = _pick_keys(material, keys)
    env = doc.get("dsseEnvelope")
    if not isinstance(env, dict):
        if "messageSignature" in doc:
            raise VerificationError(
                "UnsupportedBundle", "unsupported bundle: a message signature, not a DSSE envelope (not OMS)"
            )
        raise _malformed("dsseEnvelope missing or not an object")
    signer, ptype, payload = _check_signature(env, candidates)
    if ptype != PAYLOAD_TYPE:
        raise VerificationError(
            "WrongPayloadType", f"wrong payload type {printable(ptype)!r}, expected {PAYLOAD_TYPE}"
        )
    stmt = _loads(payload, "statement")
    if not isinstance(stmt, dict):
        raise _malformed("statement is not a JSON object")
    if stmt.get("_type") != STATEMENT_TYPE:
        raise VerificationError(
            "WrongStatementType",
            f"wrong statement type {printable(str(stmt.get('_type')))!r}, expected {STATEMENT_TYPE}"
        )
    ptype_pred = stmt.get("predicateType")
    if ptype_pred != PREDICATE_TYPE:
        if ptype_pred == _OLD_PREDICATE_TYPE:
            raise VerificationError(
                "WrongPredicateType",
                f"wrong predicate type: {_OLD_PREDICATE_TYPE} (model_signing before 1.0) is not supported; "
                "re-sign the model with model_signing 1.x or llmos",
            )
        raise VerificationError(
            "WrongPredicateType",
            f"wrong predicate type {printable(str(ptype_pred))!r}, expected {PREDICATE_TYPE}",
        )
    return _parse_statement(stmt, signer.name, hint or signer.hint)


def _parse_statement(stmt: dict, signer: str, hint: str) -> SignedManifest:
    subjects = stmt.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1 or not isinstance(subjects[0], dict):
        n = len(subjects) if isinstance(subjects, list) else 0
        raise VerificationError("InconsistentManifest", f"inconsistent manifest: expected one subject, found {n}")
    subject = subjects[0]
    digest = subject.get("digest")
    want = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(want, str) or len(want) != 64:
        raise VerificationError("InconsistentManifest", "inconsistent manifest: subject has no sha256 digest")
    want = want.lower()
    name = subject.get("name")
    model_name = name if isinstance(name, str) else ""

    predicate = _obj(stmt, "predicate", "predicate")
    ser_in = _obj(predicate, "serialization", "predicate.serialization")
    method = ser_in.get("method")
    if method not in ("files", "shards"):
        raise _malformed(f"unknown serialization method {printable(str(method))!r}")
    hash_type = hashing.normalize_hash_type(ser_in.get("hash_type", ""))
    if hash_type is None:
        raise VerificationError(
            "UnsupportedHash", f"unsupported hash type {printable(str(ser_in.get('hash_type')))!r}"
        )
    shard_size = None
    if method == "shards":
        shard_size = _int(ser_in.get("shard_size"), "serialization.shard_size")
        if shard_size <= 0:
            raise _malformed("serialization.shard_size must be positive")
    allow_symlinks = _bool(ser_in.get("allow_symlinks", False), "serialization.allow_symlinks")
    raw_ignore = ser_in.get("ignore_paths", [])
    if raw_ignore is None:
        raw_ignore = []
    if not isinstance(raw_ignore, list) or not all(isinstance(p, str) for p in raw_ignore):
        raise _malformed("serialization.ignore_paths is not a list of strings")
    try:
        ignore = tuple(normalize_ignore_paths(raw_ignore))
    except ValueError as err:
        raise _malformed(f"serialization: {err}") from None
    serialization: dict[str, Any] = {"method": method, "hash_type": hash_type, "allow_symlinks": allow_symlinks}
    if shard_size is not None:
        serialization["shard_size"] = shard_size
    serialization["ignore_paths"] = list(ignore)

    raw_resources = predicate.get("resources")
    if not isinstance(raw_resources, list):
        raise _malformed("predicate.resources missing or not a list")
    if not raw_resources:
        raise VerificationError("InconsistentManifest", "inconsistent manifest: it signs no files")
    algorithm = hash_type if method == "files" else f"{hash_type}-sharded-{shard_size}"
    algorithms = {algorithm}
    if hash_type == "blake2b":
        algorithms.add("blake2" if method == "files" else f"blake2-sharded-{shard_size}")
    size = hashing.DIGEST_SIZE[hash_type]
    resources: list[Resource] = []
    seen: set[str] = set()
    paths: set[str] = set()
    root = hashlib.sha256()
    for i, r in enumerate(raw_resources):
        if not isinstance(r, dict):
            raise _malformed(f"resource {i} is not an object")
        rname, ralg, rdig = r.get("name"), r.get("algorithm"), r.get("digest")
        if not isinstance(rname, str) or not isinstance(ralg, str) or not isinstance(rdig, str):
            raise _malformed(f"resource {i} lacks a name, algorithm or digest string")
        if method == "shards":
            try:
                path, start, end = split_shard_name(rname)
            except ValueError:
                raise _malformed(f"shard name {printable(rname)!r} is not path:start:end") from None
            if not (0 <= start < end and end - start <= shard_size and start % shard_size == 0):
                raise _malformed(f"shard {printable(rname)!r} does not fit shard size {shard_size}")
        else:
            path = rname
        why = check_resource_path(path)
        if why is not None:
            raise VerificationError(
                "PathTraversal", f"path traversal in resource name {printable(rname)!r}: {why}", path
            )
        if rname in seen:
            raise _malformed(f"resource {printable(rname)!r} appears twice")
        seen.add(rname)
        paths.add(path)
        if ralg not in algorithms:
            raise VerificationError(
                "InconsistentManifest",
                f"inconsistent manifest: resource {printable(rname)!r} uses {printable(ralg)!r}, "
                f"the serialization says {algorithm}",
                path,
            )
        try:
            raw = bytes.fromhex(rdig)
        except ValueError:
            raise _malformed(f"digest of {printable(rname)!r} is not hex") from None
        if len(raw) != size:
            raise _malformed(f"digest of {printable(rname)!r} has {len(raw)} bytes, {hash_type} has {size}")
        root.update(raw)
        resources.append(Resource(rname, ralg, raw.hex()))
    if "." in paths and len(paths) > 1:
        raise VerificationError("PathTraversal", "path traversal: '.' names the whole model beside other files", ".")
    got = root.hexdigest()
    if got != want:
        raise VerificationError(
            "InconsistentManifest",
            f"inconsistent manifest: subject digest {want[:16]}… is not the root of its resources ({got[:16]}…)",
        )
    return SignedManifest(
        root_digest=got,
        signer=signer,
        key_hint=hint,
        resources=resources,
        serialization=serialization,
        file_count=len(paths),
        hash_type=hash_type,
        method=method,
        model_name=model_name,
        shard_size=shard_size,
        ignore_paths=ignore,
    )
