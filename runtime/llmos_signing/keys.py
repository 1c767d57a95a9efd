"""EC keys for OMS key mode: P-256, P-384 and P-521, each with the hash that matches its curve."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "PublicKey",
    "PrivateKey",
    "load_public_key",
    "load_private_key",
    "key_hint",
    "public_pem",
    "signature_hash",
]

PublicKey = ec.EllipticCurvePublicKey
PrivateKey = ec.EllipticCurvePrivateKey

_CURVE_HASH = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
_CURVE_LABEL = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_SUPPORTED = "OMS key mode uses EC keys on P-256, P-384 or P-521"


def _kind(key: object) -> str:
    curve = getattr(key, "curve", None)
    if curve is not None:
        return f"EC {curve.name}"
    name = type(key).__name__.lstrip("_")
    for prefix in ("Ed25519", "Ed448", "RSA", "DSA", "X25519", "X448"):
        if name.startswith(prefix):
            return prefix
    return name


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    if key.curve.name not in _CURVE_HASH:
        raise ValueError(f"unsupported key: EC curve {key.curve.name}; {_SUPPORTED}")


def _as_bytes(data: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    return bytes(data)


def load_public_key(data: bytes | str | PublicKey) -> PublicKey:
    """Load an EC public key from PEM (SubjectPublicKeyInfo) or DER bytes; ValueError names what is wrong."""
    if isinstance(data, ec.EllipticCurvePublicKey):
        _check_curve(data)
        return data
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise ValueError(f"unsupported key: {_kind(data)}; {_SUPPORTED}")
    raw = _as_bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            if b"PRIVATE KEY-----" in raw:
                raise ValueError("expected a public key but got a private key (use the .pub file)")
            key = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_der_public_key(raw)
    except ValueError as err:
        if "private key" in str(err):
            raise
        raise ValueError(f"not a PEM or DER public key ({err})") from None
    except Exception as err:  # noqa: BLE001 — cryptography raises UnsupportedAlgorithm for some key types
        raise ValueError(f"cannot load public key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"unsupported key: {_kind(key)}; {_SUPPORTED}")
    _check_curve(key)
    return key


def load_private_key(data: bytes | str | PrivateKey, password: bytes | str | None = None) -> PrivateKey:
    """Load an EC private key from PEM (PKCS#8 or SEC1) or DER bytes, optionally encrypted with ``password``."""
    if isinstance(data, ec.EllipticCurvePrivateKey):
        _check_curve(data)
        return data
    if not isinstance(data, (bytes, bytearray, memoryview, str)):
        raise ValueError(f"unsupported key: {_kind(data)}; {_SUPPORTED}")
    raw = _as_bytes(data)
    pw = _as_bytes(password) if password is not None else None
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            if b"PRIVATE KEY-----" not in raw:
                raise ValueError("expected a private key but got a public key or certificate")
            key = serialization.load_pem_private_key(raw, pw)
        else:
            key = serialization.load_der_private_key(raw, pw)
    except TypeError as err:  # password missing or given for an unencrypted key
        raise ValueError(f"cannot load private key: {err}") from None
    except ValueError as err:
        msg = str(err)
        if msg.startswith("expected a private key"):
            raise
        # A wrong password decrypts to garbage that, about once in 300 keys, has valid padding: OpenSSL then fails
        # to parse it ("Could not deserialize key data") instead of saying the password is wrong.
        encrypted = pw is not None and b"ENCRYPTED PRIVATE KEY" in raw
        if "password" in msg.lower() or "decrypt" in msg.lower() or encrypted:
            raise ValueError("cannot decrypt private key: wrong or missing password") from None
        raise ValueError(f"not a PEM or DER private key ({msg})") from None
    except Exception as err:  # noqa: BLE001 — any failure to load is "not a key", said with its cause
        raise ValueError(f"cannot load private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"unsupported key: {_kind(key)}; {_SUPPORTED}")
    _check_curve(key)
    return key


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(key: PublicKey | PrivateKey | bytes | str) -> str:
    """sha256 hex of the public key's SubjectPublicKeyInfo PEM text, as OMS writes in ``publicKey.hint``."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    pub = load_public_key(key)
    return hashlib.sha256(public_pem(pub)).hexdigest()


def signature_hash(key: PublicKey | PrivateKey) -> hashes.HashAlgorithm:
    """SHA-256/384/512 for P-256/384/521."""
    return _CURVE_HASH[key.curve.name]()


def curve_label(key: PublicKey | PrivateKey) -> str:
    return _CURVE_LABEL.get(key.curve.name, key.curve.name)
