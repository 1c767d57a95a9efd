"""`llmos model sign|verify|digest`: exit codes, one-line errors, key names, progress only on a terminal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import llmos_signing as ls
from llmos_signing.cli import add_model_commands, main
from llmos_signing.testing import make_vectors, statement_of, write_keypair

pytestmark = pytest.mark.unit


@pytest.fixture
def setup(tmp_path):
    model = make_vectors(tmp_path / "model")
    alice = write_keypair(tmp_path / "keys", "alice")
    bob = write_keypair(tmp_path / "keys", "bob")
    return model, alice, bob


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_sign_verify_digest(setup, capsys):
    model, (alice_priv, alice_pub), (_, bob_pub) = setup
    rc, out, err = run(capsys, "model", "sign", str(model), "--key", str(alice_priv))
    assert rc == 0, err
    assert out.startswith("signed: root sha256:") and (model / "model.sig").exists()
    assert err == ""  # not a terminal: no progress bar
    rc, out, err = run(capsys, "model", "verify", str(model), "--key", str(bob_pub), "--key", str(alice_pub))
    assert rc == 0, err
    root = ls.verify_bundle((model / "model.sig").read_bytes(), {"a": alice_pub.read_bytes()}).root_digest
    assert out.strip() == f"verified: root sha256:{root} signed by alice (8 files, 4.0 KiB)"
    rc, out, _ = run(capsys, "model", "digest", str(model))
    assert rc == 0 and out.strip() == f"sha256:{root}"


def test_options(setup, capsys, tmp_path):
    model, (alice_priv, alice_pub), _ = setup
    sig = tmp_path / "elsewhere.sig"
    rc, _, err = run(capsys, "model", "sign", str(model), "--key", str(alice_priv), "--signature", str(sig),
                     "--hash", "blake3")
    assert rc == 0, err
    assert statement_of(sig.read_bytes())["predicate"]["serialization"]["hash_type"] == "blake3"
    assert run(capsys, "model", "verify", str(model), "--key", str(alice_pub), "--signature", str(sig))[0] == 0
    rc, _, err = run(capsys, "model", "sign", str(model), "--key", str(alice_priv), "--method", "shards",
                     "--shard-size", "1000")
    assert rc == 0, err
    ser = statement_of((model / "model.sig").read_bytes())["predicate"]["serialization"]
    assert ser["method"] == "shards" and ser["shard_size"] == 1000
    assert run(capsys, "model", "verify", str(model), "--key", str(alice_pub))[0] == 0
    rc, out, _ = run(capsys, "model", "digest", str(model), "--method", "shards", "--shard-size", "1000")
    assert out.strip() == "sha256:" + ls.verify_bundle((model / "model.sig").read_bytes(),
                                                       {"a": alice_pub.read_bytes()}).root_digest


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda m: (m / "config.json").write_text("{}"), "error: verification failed: hash mismatch: config.json"),
        (lambda m: (m / "a" / "b").unlink(), "error: verification failed: missing file: a/b"),
        (lambda m: (m / "run.py").write_text("x"),
         "error: verification failed: extra file not in the signed manifest: run.py"),
        (lambda m: (m / "model.sig").write_bytes((m / "model.sig").read_bytes()[:100]), "malformed bundle"),
        (lambda m: (m / "model.sig").unlink(), "signature file not found"),
    ],
)
def test_verify_failures_are_one_line(setup, capsys, breakage, message):
    model, (alice_priv, alice_pub), _ = setup
    assert run(capsys, "model", "sign", str(model), "--key", str(alice_priv))[0] == 0
    breakage(model)
    rc, out, err = run(capsys, "model", "verify", str(model), "--key", str(alice_pub))
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_untrusted_key_names_the_trusted_keys(setup, capsys):
    model, (alice_priv, _), (_, bob_pub) = setup
    run(capsys, "model", "sign", str(model), "--key", str(alice_priv))
    rc, _, err = run(capsys, "model", "verify", str(model), "--key", str(bob_pub))
    assert rc == 1 and "untrusted key" in err and "'bob'" in err and err.count("\n") == 1


def test_user_errors(setup, capsys, tmp_path):
    model, (alice_priv, alice_pub), _ = setup
    rc, _, err = run(capsys, "model", "sign", str(model), "--key", str(alice_pub))
    assert rc == 1 and "private key" in err and err.count("\n") == 1
    rc, _, err = run(capsys, "model", "sign", str(model), "--key", str(tmp_path / "none.pem"))
    assert rc == 1 and "private key not found" in err
    rc, _, err = run(capsys, "model", "verify", str(model), "--key", str(tmp_path / "none.pub"))
    assert rc == 1 and "public key not found" in err
    rc, _, err = run(capsys, "model", "sign", str(tmp_path / "nope"), "--key", str(alice_priv))
    assert rc == 1 and "not found" in err
    with pytest.raises(SystemExit) as info:
        main(["model", "verify", str(model)])  # --key is required
    assert info.value.code == 2


def test_add_model_commands_plugs_into_another_parser(setup):
    import argparse

    model, (alice_priv, _), _ = setup
    parser = argparse.ArgumentParser(prog="llmos")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("dev")
    add_model_commands(sub)
    args = parser.parse_args(["model", "sign", str(model), "--key", str(alice_priv), "-q"])
    assert args.func(args) == 0


def test_module_entry_point(setup):
    model, (alice_priv, alice_pub), _ = setup

    def run_(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llmos_signing.cli", *a], capture_output=True, text=True)

    r = run_("model", "sign", str(model), "--key", str(alice_priv))
    assert r.returncode == 0, r.stderr
    r = run_("model", "verify", str(model), "--key", str(alice_pub))
    assert r.returncode == 0 and r.stdout.startswith("verified: root sha256:") and r.stderr == ""
    (model / "weights" / "extra.bin").write_bytes(b"1")
    r = run_("model", "verify", str(model), "--key", str(alice_pub))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == "error: verification failed: extra file not in the signed manifest: weights/extra.bin\n"
    json.loads((model / "model.sig").read_text())
