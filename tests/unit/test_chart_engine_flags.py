"""The chart's engine-flag allow-list (parameter of the <fullname>-engine-flags admission policy) is generated from
runtime/llmos_runtime/engine_args.py: no drift, same normalisation, never --trust-remote-code."""

import re
from pathlib import Path

import pytest

from llmos_operator.dev import chartgen
from llmos_runtime.engine_args import DEFAULT_ALLOWED_FLAGS, REMOTE_CODE_FLAG, normalise_flag

pytestmark = pytest.mark.unit


def test_checked_in_template_equals_the_generated_one():
    assert chartgen.OUTPUT.read_text() == chartgen.render(), \
        "run python -m llmos_operator.dev.chartgen --write"
    assert chartgen.main(["--check"]) == 0


def test_every_allowed_flag_is_a_key_and_nothing_else():
    keys = re.findall(r'^  "(--[^"]+)": "engine_args\.DEFAULT_ALLOWED_FLAGS"$', chartgen.render(), re.M)
    assert set(keys) == {normalise_flag(f) for f in DEFAULT_ALLOWED_FLAGS}
    assert REMOTE_CODE_FLAG not in keys
    # ConfigMap keys: [-._a-zA-Z0-9]+ (the policy looks flags up with `flag in params.data`).
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", k) for k in keys)


def test_check_fails_on_drift(tmp_path: Path, monkeypatch):
    stale = tmp_path / "engine-flags.yaml"
    stale.write_text(chartgen.render().replace('  "--seed": "engine_args.DEFAULT_ALLOWED_FLAGS"\n', ""))
    monkeypatch.setattr(chartgen, "OUTPUT", stale)
    monkeypatch.setattr(chartgen, "REPO_ROOT", tmp_path)
    assert chartgen.main(["--check"]) == 1


def test_docs_list_the_same_flags():
    doc = (chartgen.REPO_ROOT / "docs" / "security.md").read_text()
    listed = doc.split("Today's list:")[1].split("**Tenant rights")[0]
    assert set(re.findall(r"`(--[a-z0-9-]+)`", listed)) == {normalise_flag(f) for f in DEFAULT_ALLOWED_FLAGS}
