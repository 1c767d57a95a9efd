"""llmos_signing: manifest, sign, verify — every failure cause fails closed, with a one-line error naming the file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import llmos_signing as ls
from llmos_signing import VerificationError
from llmos_signing.testing import (
    VECTOR_SHARD_SIZE,
    craft_bundle,
    default_statement,
    generate_key,
    make_vectors,
    private_pem,
    statement_of,
)

pytestmark = pytest.mark.unit

SHA256_EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.fixture(scope="module")
def key():
    return generate_key("P-256")


@pytest.fixture(scope="module")
def other_key():
    return generate_key("P-256")


@pytest.fixture
def model(tmp_path):
    return make_vectors(tmp_path / "model")


def pub(k) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def signed(model: Path, key, **kw) -> bytes:
    return ls.sign_model(model, private_pem(key), **kw)


def expect(reason: str, fn, *args, path: str | None = "unset", contains: str | None = None, **kw):
    with pytest.raises(VerificationError) as info:
        fn(*args, **kw)
    err = info.value
    assert err.reason == reason, f"{err.reason}: {err}"
    assert "\n" not in str(err) and str(err)
    if path != "unset":
        assert err.path == path
        if path is not None:
            assert path in str(err)
    if contains is not None:
        assert contains in str(err), str(err)
    return err


# --- round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hash_type,method",
    [("sha256", "files"), ("blake3", "files"), ("blake2b", "files"), ("sha256", "shards"), ("blake2b", "shards")],
)
def test_sign_verify_round_trip(model, key, hash_type, method):
    bundle = signed(model, key, hash_type=hash_type, method=method, shard_size=VECTOR_SHARD_SIZE)
    assert (model / "model.sig").read_bytes() == bundle
    seen = []
    v = ls.verify_model(model, model / "model.sig", {"alice": pub(key)}, progress=lambda d, t: seen.append((d, t)))
    assert v.signer == "alice"
    assert v.key_hint == ls.key_hint(key.public_key())
    assert v.hash_type == hash_type and v.method == method
    assert v.file_count == (8 if method == "files" else 7)  # shards: the empty file has no shard
    assert v.total_bytes == sum(p.stat().st_size for p in model.rglob("*") if p.is_file()
                                and not p.relative_to(model).parts[0].startswith((".git", "model.sig")))
    assert seen and seen[-1][0] == seen[-1][1] == v.total_bytes
    # verify_bundle alone agrees and touches no file
    sm = ls.verify_bundle(bundle, {"alice": key.public_key()})
    assert sm.root_digest == v.root_digest
    assert "model.sig" in sm.serialization["ignore_paths"] and ".git" in sm.serialization["ignore_paths"]


def test_manifest_order_is_by_path_components(model, key):
    stmt = statement_of(signed(model, key))
    names = [r["name"] for r in stmt["predicate"]["resources"]]
    assert names.index("a/b") < names.index("a-c")
    assert names.index("weights/layer.0/w.bin") < names.index("weights/layer.10/w.bin")
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert ".git/HEAD" not in names and ".gitattributes" not in names and "model.sig" not in names
    assert {"name": "empty.txt", "algorithm": "sha256", "digest": SHA256_EMPTY} in stmt["predicate"]["resources"]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in stmt["predicate"]["resources"])).hexdigest()
    assert stmt["subject"] == [{"name": "model", "digest": {"sha256": root}}]
    assert stmt["predicateType"] == "https://model_signing/signature/v1.0"


def test_shards_names_and_order(model, key):
    stmt = statement_of(signed(model, key, method="shards", shard_size=VECTOR_SHARD_SIZE))
    res = stmt["predicate"]["resources"]
    big = [r["name"] for r in res if r["name"].startswith("big.bin:")]
    assert big == ["big.bin:0:1000", "big.bin:1000:2000", "big.bin:2000:2500"]
    assert {r["algorithm"] for r in res} == {"sha256-sharded-1000"}
    data = (model / "big.bin").read_bytes()
    assert res[[r["name"] for r in res].index("big.bin:1000:2000")]["digest"] == hashlib.sha256(data[1000:2000]).hexdigest()
    assert stmt["predicate"]["serialization"]["shard_size"] == 1000
    assert not any(r["name"].startswith("empty.txt") for r in res)


def test_digest_equals_signed_root(model, key):
    root = ls.build_manifest(model).root_digest
    assert ls.verify_bundle(signed(model, key), {"k": pub(key)}).root_digest == root


def test_single_file_model(tmp_path, key):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x" * 5000)
    bundle = signed(f, key)
    assert (tmp_path / "model.safetensors.sig").exists()
    assert [r["name"] for r in statement_of(bundle)["predicate"]["resources"]] == ["."]
    assert ls.verify_model(f, bundle, {"k": pub(key)}).total_bytes == 5000
    f.write_bytes(b"y" * 5000)
    expect("HashMismatch", ls.verify_model, f, bundle, {"k": pub(key)}, path=".")


def test_signature_elsewhere_inside_the_directory_is_left_out(model, key):
    sig = model / "sigs" / "release.sig"
    bundle = signed(model, key, signature_path=sig)
    assert "sigs/release.sig" in ls.verify_bundle(bundle, {"k": pub(key)}).ignore_paths
    ls.verify_model(model, sig, {"k": pub(key)})


def test_large_files_and_every_reader(tmp_path, key):
    import blake3

    from llmos_signing import hashing

    d = tmp_path / "m"
    d.mkdir()
    (d / "a.bin").write_bytes(os.urandom(3 << 20) + b"tail")  # over the single-read size: the buffered reader
    (d / "big.bin").write_bytes(os.urandom(hashing.BLAKE3_PARALLEL_MIN + 12345))  # blake3 on all cores (mmap)
    (d / "c.bin").write_bytes(b"\0" * ((2 << 20) + 17))
    for hash_type, fn in (("sha256", hashlib.sha256), ("blake3", blake3.blake3), ("blake2b", hashlib.blake2b)):
        bundle = signed(d, key, hash_type=hash_type)
        ls.verify_model(d, bundle, {"k": pub(key)})
        digest = {r.name: r.digest for r in ls.verify_bundle(bundle, {"k": pub(key)}).resources}
        for name in ("a.bin", "big.bin", "c.bin"):
            assert digest[name] == fn((d / name).read_bytes()).hexdigest(), (hash_type, name)
    # ranges (shards) through every path, blake3 on all cores included (mapped windows)
    data = (d / "big.bin").read_bytes()
    bounds = [(0, 100), (100, (2 << 20) + 100), ((2 << 20) + 100, len(data))]
    tasks = [hashing.HashTask(f"big.bin:{s}:{e}", str(d / "big.bin"), "big.bin", s, e, len(data)) for s, e in bounds]
    for hash_type, fn, threads in (("sha256", hashlib.sha256, 2), ("blake3", blake3.blake3, 2),
                                   ("blake3", blake3.blake3, 1)):
        got = hashing.hash_tasks(tasks, hash_type, threads=threads)
        for (s, e), t in zip(bounds, tasks, strict=True):
            assert got[t.key] == fn(data[s:e]).digest(), (hash_type, threads, s, e)


def test_all_curves(model):
    for curve in ("P-256", "P-384", "P-521"):
        k = generate_key(curve)
        bundle = signed(model, k)
        assert ls.verify_model(model, bundle, {curve: pub(k)}).signer == curve


def test_signer_is_the_name_of_the_matching_key(model, key, other_key):
    bundle = signed(model, key)
    v = ls.verify_model(model, bundle, {"bob": pub(other_key), "alice": key.public_key()})
    assert v.signer == "alice"


# --- failure causes: the files ------------------------------------------------------------------------------


def test_changed_byte(model, key):
    bundle = signed(model, key)
    p = model / "weights" / "layer.10" / "w.bin"
    data = bytearray(p.read_bytes())
    data[123] ^= 1
    p.write_bytes(bytes(data))
    err = expect("HashMismatch", ls.verify_model, model, bundle, {"k": pub(key)}, path="weights/layer.10/w.bin")
    assert str(err) == "hash mismatch: weights/layer.10/w.bin"


@pytest.mark.parametrize("method", ["files", "shards"])
def test_changed_byte_in_a_shard(model, key, method):
    bundle = signed(model, key, method=method, shard_size=VECTOR_SHARD_SIZE)
    p = model / "big.bin"
    data = bytearray(p.read_bytes())
    data[1500] ^= 0xFF
    p.write_bytes(bytes(data))
    expect("HashMismatch", ls.verify_model, model, bundle, {"k": pub(key)}, path="big.bin")


def test_shards_size_change(model, key):
    bundle = signed(model, key, method="shards", shard_size=VECTOR_SHARD_SIZE)
    with open(model / "big.bin", "ab") as f:
        f.write(b"more")
    expect("HashMismatch", ls.verify_model, model, bundle, {"k": pub(key)}, path="big.bin", contains="size changed")


def test_missing_file(model, key):
    bundle = signed(model, key)
    (model / "a" / "b").unlink()
    err = expect("MissingFile", ls.verify_model, model, bundle, {"k": pub(key)}, path="a/b")
    assert str(err) == "missing file: a/b"


def test_missing_empty_file(model, key):
    bundle = signed(model, key)
    (model / "empty.txt").unlink()
    expect("MissingFile", ls.verify_model, model, bundle, {"k": pub(key)}, path="empty.txt")


@pytest.mark.parametrize("rel", ["evil.py", "weights/layer.0/__init__.py", "new_dir/x.py", "empty_extra"])
def test_extra_file_is_never_ignored(model, key, rel):
    bundle = signed(model, key)
    p = model.joinpath(*rel.split("/"))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"" if rel == "empty_extra" else b"import os; os.system('id')\n")
    err = expect("ExtraFile", ls.verify_model, model, bundle, {"k": pub(key)}, path=rel)
    assert rel in str(err)


def test_ignored_paths_may_change(model, key):
    bundle = signed(model, key)
    (model / ".git" / "HEAD").write_bytes(b"changed")
    (model / ".git" / "objects").mkdir()
    (model / ".git" / "objects" / "x").write_bytes(b"new")
    (model / ".gitignore").write_bytes(b"*.tmp\n")
    ls.verify_model(model, bundle, {"k": pub(key)})


def test_symlink_file(model, key):
    bundle = signed(model, key)
    target = model / "config.json"
    moved = model.parent / "outside.json"
    shutil.move(target, moved)
    os.symlink(moved, target)
    expect("Symlink", ls.verify_model, model, bundle, {"k": pub(key)}, path="config.json")


def test_symlink_dir(model, key):
    bundle = signed(model, key)
    os.symlink(model / "weights", model / "more")
    expect("Symlink", ls.verify_model, model, bundle, {"k": pub(key)}, path="more")


def test_symlink_is_refused_when_signing(model, key):
    os.symlink("/etc/hostname", model / "link")
    with pytest.raises(ls.SigningError, match="symlink in model directory: link"):
        signed(model, key)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no fifos")
def test_special_file(model, key):
    bundle = signed(model, key)
    os.mkfifo(model / "pipe")
    expect("SpecialFile", ls.verify_model, model, bundle, {"k": pub(key)}, path="pipe")


def test_missing_directory_and_signature(model, key, tmp_path):
    bundle = signed(model, key)
    expect("NotFound", ls.verify_model, tmp_path / "nope", bundle, {"k": pub(key)})
    expect("NotFound", ls.verify_model, model, tmp_path / "nope.sig", {"k": pub(key)}, contains="nope.sig")


def test_newline_in_a_file_name_stays_on_one_line(model, key):
    bundle = signed(model, key)
    (model / "evil\nname.py").write_bytes(b"x")
    err = expect("ExtraFile", ls.verify_model, model, bundle, {"k": pub(key)})
    assert "evil\\x0aname.py" in str(err)


def test_first_mismatch_in_manifest_order_is_named(model, key):
    bundle = signed(model, key)
    (model / "a-c").write_bytes(b"changed")
    (model / "a" / "b").write_bytes(b"changed")
    expect("HashMismatch", ls.verify_model, model, bundle, {"k": pub(key)}, path="a/b")


# --- failure causes: keys and the bundle ----------------------------------------------------------------------


def test_untrusted_key(model, key, other_key):
    bundle = signed(model, key)
    err = expect("UntrustedKey", ls.verify_bundle, bundle, {"bob": pub(other_key)}, path=None)
    assert "bob" in str(err)
    expect("UntrustedKey", ls.verify_bundle, bundle, {})


def test_hint_of_a_trusted_key_but_signed_by_another(model, key, other_key):
    stmt = statement_of(signed(model, key))
    bundle = craft_bundle(stmt, other_key, hint=ls.key_hint(key.public_key()))
    expect("BadSignature", ls.verify_bundle, bundle, {"alice": pub(key)})


def test_bad_signature_when_payload_altered(model, key):
    bundle = json.loads(signed(model, key))
    stmt = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    stmt["predicate"]["resources"][0]["digest"] = "00" * 32
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    expect("BadSignature", ls.verify_bundle, json.dumps(bundle).encode(), {"k": pub(key)})


def test_bad_signature_bytes(model, key):
    bundle = json.loads(signed(model, key))
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    expect("BadSignature", ls.verify_bundle, json.dumps(bundle).encode(), {"k": pub(key)})


def test_verification_is_over_the_exact_payload_bytes(model, key):
    stmt = statement_of(signed(model, key))
    payload = json.dumps(stmt, indent=7, sort_keys=True).encode()  # any producer's formatting
    ls.verify_bundle(craft_bundle(payload, key), {"k": pub(key)})
    bundle = json.loads(craft_bundle(payload, key))
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()  # same JSON, re-encoded
    expect("BadSignature", ls.verify_bundle, json.dumps(bundle).encode(), {"k": pub(key)})


@pytest.mark.parametrize("cut", [0, 1, 50, -200, -2])
def test_truncated_bundle(model, key, cut):
    bundle = signed(model, key)
    expect("MalformedBundle", ls.verify_bundle, bundle[:cut], {"k": pub(key)})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.pop("dsseEnvelope"),
        lambda b: b.pop("verificationMaterial"),
        lambda b: b["dsseEnvelope"].update(payload="%%%not base64%%%"),
        lambda b: b["dsseEnvelope"].update(signatures=[]),
        lambda b: b["dsseEnvelope"].pop("payloadType"),
        lambda b: b.update(mediaType="application/json"),
        lambda b: b.pop("mediaType"),
    ],
)
def test_malformed_bundle(model, key, mutate):
    bundle = json.loads(signed(model, key))
    mutate(bundle)
    expect("MalformedBundle", ls.verify_bundle, json.dumps(bundle).encode(), {"k": pub(key)})


def test_duplicate_json_keys_are_refused(model, key):
    text = signed(model, key).decode()
    text = text.replace('{"mediaType":', '{"mediaType":"x","mediaType":', 1)
    expect("MalformedBundle", ls.verify_bundle, text.encode(), {"k": pub(key)}, contains="duplicate")


def test_certificate_bundles_are_unsupported(model, key):
    bundle = json.loads(signed(model, key))
    bundle["verificationMaterial"] = {"x509CertificateChain": {"certificates": []}, "tlogEntries": []}
    expect("UnsupportedBundle", ls.verify_bundle, json.dumps(bundle).encode(), {"k": pub(key)})


def test_wrong_payload_type(model, key):
    bundle = craft_bundle(statement_of(signed(model, key)), key, payload_type="application/json")
    expect("WrongPayloadType", ls.verify_bundle, bundle, {"k": pub(key)})


def test_wrong_statement_type(model, key):
    stmt = statement_of(signed(model, key))
    stmt["_type"] = "https://in-toto.io/Statement/v0.1"
    expect("WrongStatementType", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


@pytest.mark.parametrize("ptype", ["https://model_signing/Digests/v0.1", "https://slsa.dev/provenance/v1", None])
def test_wrong_predicate_type(model, key, ptype):
    stmt = statement_of(signed(model, key))
    stmt["predicateType"] = ptype
    err = expect("WrongPredicateType", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})
    if ptype and "Digests" in ptype:
        assert "re-sign" in str(err)


def test_subject_digest_must_be_the_root(model, key):
    stmt = statement_of(signed(model, key))
    stmt["subject"][0]["digest"]["sha256"] = "ab" * 32
    expect("InconsistentManifest", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})
    stmt = statement_of(signed(model, key))
    stmt["subject"].append(dict(stmt["subject"][0]))
    expect("InconsistentManifest", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})
    stmt = statement_of(signed(model, key))
    stmt["predicate"]["resources"] = []
    expect("InconsistentManifest", ls.verify_bundle, craft_bundle(stmt, key, fix_root=True), {"k": pub(key)})


def test_algorithm_must_match_serialization(model, key):
    stmt = statement_of(signed(model, key))
    stmt["predicate"]["resources"][0]["algorithm"] = "md5"
    expect("InconsistentManifest", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


def test_unsupported_hash(model, key):
    stmt = statement_of(signed(model, key))
    stmt["predicate"]["serialization"]["hash_type"] = "md5"
    expect("UnsupportedHash", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


@pytest.mark.parametrize(
    "name", ["../outside", "/etc/passwd", "a/../../x", "a//b", "./a", "a/./b", "", "a/..", "weights/\x00"]
)
def test_path_traversal_in_resource_name(key, name):
    stmt = default_statement([{"name": name, "algorithm": "sha256", "digest": SHA256_EMPTY}])
    expect("PathTraversal", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


def test_path_traversal_in_shard_name(key):
    stmt = default_statement(
        [{"name": "../x:0:10", "algorithm": "sha256-sharded-1000", "digest": SHA256_EMPTY}],
        method="shards",
        shard_size=1000,
    )
    expect("PathTraversal", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


def test_bad_shard_names(key):
    for name in ("x", "x:0", "x:10:5", "x:0:2000", "x:-1:5", "x:500:1000"):
        stmt = default_statement([{"name": name, "algorithm": "sha256-sharded-1000", "digest": SHA256_EMPTY}],
                                 method="shards", shard_size=1000)
        expect("MalformedBundle", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


def test_ignore_everything_is_refused(key):
    stmt = default_statement([{"name": "a", "algorithm": "sha256", "digest": SHA256_EMPTY}], ignore_paths=["."])
    expect("MalformedBundle", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


def test_numbers_are_parsed_leniently(model, key):
    stmt = statement_of(signed(model, key, method="shards", shard_size=VECTOR_SHARD_SIZE))
    stmt["predicate"]["serialization"]["shard_size"] = 1000.0
    bundle = craft_bundle(stmt, key)
    v = ls.verify_model(model, bundle, {"k": pub(key)})
    assert v.serialization["shard_size"] == 1000 and isinstance(v.serialization["shard_size"], int)
    stmt["predicate"]["serialization"]["shard_size"] = 1000.5
    expect("MalformedBundle", ls.verify_bundle, craft_bundle(stmt, key), {"k": pub(key)})


def test_old_key_material_formats(model, key, other_key):
    stmt = statement_of(signed(model, key))
    ls.verify_model(model, craft_bundle(stmt, key, raw_bytes=True), {"k": pub(key)})  # 1.0.x rawBytes + keyDetails
    expect("UntrustedKey", ls.verify_bundle, craft_bundle(stmt, key, raw_bytes=True), {"o": pub(other_key)})
    v = ls.verify_bundle(craft_bundle(stmt, key, hint=None), {"o": pub(other_key), "k": pub(key)})  # no hint at all
    assert v.signer == "k"
    expect("BadSignature", ls.verify_bundle, craft_bundle(stmt, key, hint=None), {"o": pub(other_key)})


def test_compat_pae_of_model_signing_0_2(model, key):
    stmt = statement_of(signed(model, key))
    payload = json.dumps(stmt).encode()
    pt = "application/vnd.in-toto+json"
    message = f"DSSEV1 {len(pt)} {pt} {len(payload)} {payload}".encode()
    sig = key.sign(message, ec.ECDSA(hashes.SHA256()))
    bundle = json.loads(craft_bundle(payload, key))
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    ls.verify_bundle(json.dumps(bundle).encode(), {"k": pub(key)})


# --- keys ---------------------------------------------------------------------------------------------------


def test_key_hint_is_sha256_of_the_spki_pem(key):
    assert ls.key_hint(key.public_key()) == hashlib.sha256(pub(key)).hexdigest()
    assert ls.key_hint(pub(key)) == ls.key_hint(key)


@pytest.mark.parametrize(
    "make,word",
    [
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
    ],
)
def test_unsupported_keys_are_refused_clearly(make, word):
    k = make()
    priv = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for fn, data in ((ls.load_private_key, priv), (ls.load_public_key, pem)):
        with pytest.raises(ValueError, match=word) as info:
            fn(data)
        assert "P-256" in str(info.value)
    expect("BadTrustedKey", ls.verify_bundle, b"{}", {"weird": pem}, contains="weird")


def test_key_material_mixups(key):
    with pytest.raises(ValueError, match="private key"):
        ls.load_public_key(private_pem(key))
    with pytest.raises(ValueError, match="public key"):
        ls.load_private_key(pub(key))
    with pytest.raises(ValueError):
        ls.load_public_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ls.key_hint(ls.load_public_key(der)) == ls.key_hint(key)


def test_encrypted_private_key(key):
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw"))
    assert ls.key_hint(ls.load_private_key(enc, b"pw")) == ls.key_hint(key)
    with pytest.raises(ValueError, match="password"):
        ls.load_private_key(enc, b"wrong")
    with pytest.raises(ValueError):
        ls.load_private_key(enc)


# --- signing errors -------------------------------------------------------------------------------------------


def test_signing_refuses_what_it_cannot_sign(tmp_path, key, model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ls.SigningError, match="nothing to sign"):
        signed(tmp_path / "empty", key)
    with pytest.raises(ls.SigningError, match="blake3"):
        signed(model, key, hash_type="blake3", method="shards")
    with pytest.raises(ls.SigningError, match="hash"):
        signed(model, key, hash_type="md5")
    with pytest.raises(ls.SigningError, match="not found"):
        signed(tmp_path / "missing", key)


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, llmos_signing.cli\n"
        "heavy = [m for m in ('cryptography', 'kopf', 'kubernetes', 'pydantic', 'tqdm', 'blake3') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import llmos_signing\n"
        "llmos_signing.verify_model\n"
        "heavy = [m for m in ('kopf', 'kubernetes', 'pydantic', 'model_signing') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_file_that_changes_size_after_listing_is_a_mismatch(tmp_path):
    from llmos_signing import hashing

    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 5000)
    listed = [hashing.HashTask("f.bin", str(p), "f.bin", 0, 4000, 4000)]  # listed at 4000 bytes, 5000 by now
    err = expect("HashMismatch", hashing.hash_tasks, listed, "sha256", path="f.bin")
    assert "changed while hashing" in str(err)
    empty = [hashing.HashTask("f.bin", str(p), "f.bin", 0, 0, 0)]
    expect("HashMismatch", hashing.hash_tasks, empty, "sha256", path="f.bin")


def test_cores_share_the_largest_digests(tmp_path, monkeypatch):
    """Three equal files on two workers: all three are in progress before any finishes (largest remaining first),
    so the cores finish together instead of one core hashing two whole files."""
    from llmos_signing import hashing

    monkeypatch.setattr(hashing, "SLICE", 1 << 20)
    tasks = []
    for name in ("x", "y", "z"):
        p = tmp_path / name
        p.write_bytes(os.urandom(8 << 20))
        tasks.append(hashing.HashTask(name, str(p), name, 0, 8 << 20, 8 << 20))
    events = []
    real = hashing._read_into_hash

    def spy(fd, task, h, off, stop, counter):
        events.append((task.key, off, stop))
        return real(fd, task, h, off, stop, counter)

    monkeypatch.setattr(hashing, "_read_into_hash", spy)
    got = hashing.hash_tasks(tasks, "sha256", threads=2)
    for t in tasks:
        assert got[t.key] == hashlib.sha256(Path(t.path).read_bytes()).digest()
    first_end = min(i for i, (_, _, stop) in enumerate(events) if stop == 8 << 20)
    assert {k for k, _, _ in events[:first_end]} == {"x", "y", "z"}
