"""The generated CRDs: no drift from the types, structural, and carrying what the API promises."""

import shutil
from pathlib import Path

import pytest
import yaml

from llmos_operator.api import crdgen

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = crdgen.all_crds()


def crd(kind_plural: str) -> dict:
    return CRDS[f"{kind_plural}.llmos.dev.yaml"]


def schema(kind_plural: str) -> dict:
    return crd(kind_plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict, path: str = ""):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def test_checked_in_files_equal_the_generated_ones_in_both_directories():
    assert crdgen.drift(ROOT) == [], "run `make crds` (python -m llmos_operator.api.crdgen --write)"
    for name in CRDS:
        assert (ROOT / "crds" / name).read_text() == (ROOT / "helm/llmos/crds" / name).read_text()


def test_check_mode_fails_on_drift_and_write_repairs(tmp_path, capsys):
    for d in crdgen.OUTPUT_DIRS:
        shutil.copytree(ROOT / d, tmp_path / d)
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 0
    target = tmp_path / "helm/llmos/crds/modeldeployments.llmos.dev.yaml"
    target.write_text(target.read_text().replace("minimum: 1", "minimum: 2"))
    (tmp_path / "crds/models.llmos.dev.yaml").unlink()
    assert crdgen.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "helm/llmos/crds/modeldeployments.llmos.dev.yaml" in err and "crds/models.llmos.dev.yaml" in err
    assert crdgen.main(["--write", "--root", str(tmp_path)]) == 0
    assert crdgen.drift(tmp_path) == []


@pytest.mark.parametrize("plural", ["tenants", "models", "modeldeployments"])
def test_schemas_are_structural(plural):
    assert crdgen.structural_problems(schema(plural)) == []
    text = crdgen.to_yaml(crd(plural))
    for word in ("$ref", "$defs", "anyOf", "title:", "&id", "*id", "null"):
        assert word not in text, word
    assert yaml.safe_load(text) == crd(plural)


def test_structural_checker_catches_what_the_api_server_refuses():
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/x"},
            "b": {"type": "number", "exclusiveMinimum": 0},
            "c": {"type": "array"},
            "d": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "status": {"type": "object", "properties": {"n": {"type": "integer", "default": 0}}},
        },
    }
    problems = "\n".join(crdgen.structural_problems(bad))
    for expected in (".a: keys not allowed", ".a: no type", ".b: exclusiveMinimum must be a boolean",
                     ".c: array without", ".d: both properties", ".status.n: default under status"):
        assert expected in problems


@pytest.mark.parametrize("plural", ["tenants", "models", "modeldeployments"])
def test_every_string_is_bounded(plural):
    """CEL cost estimation and request size need maxLength on strings (enums and timestamps are bounded)."""
    for path, node in walk(schema(plural)):
        if node.get("type") == "string" and path.startswith((".spec", ".status")):
            assert "maxLength" in node or "enum" in node or node.get("format") == "date-time", path
        if node.get("type") == "array" and path.startswith(".spec"):
            assert "maxItems" in node, path


def test_names_scope_categories_subresources():
    expected = {"tenants": ("Tenant", "Cluster", ["tn"]), "models": ("Model", "Namespaced", ["mdl"]),
                "modeldeployments": ("ModelDeployment", "Namespaced", ["mdep"])}
    for plural, (kind, scope, short) in expected.items():
        spec = crd(plural)["spec"]
        assert spec["group"] == "llmos.dev" and spec["scope"] == scope
        assert spec["names"]["kind"] == kind and spec["names"]["shortNames"] == short
        assert spec["names"]["categories"] == ["llmos"]
        version = spec["versions"][0]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"]["status"] == {}
    assert crd("modeldeployments")["spec"]["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}


def columns(plural: str) -> dict[str, str]:
    return {c["name"]: c["jsonPath"] for c in crd(plural)["spec"]["versions"][0]["additionalPrinterColumns"]
            if not c.get("priority")}


def test_printer_columns():
    assert columns("modeldeployments") == {
        "Model": ".spec.model", "GPU": ".status.gpuSummary", "Desired": ".status.desiredReplicas",
        "Granted": ".status.grantedReplicas", "Ready": ".status.readySummary",
        "Admitted": '.status.conditions[?(@.type=="QuotaAdmitted")].status', "Age": ".metadata.creationTimestamp"}
    assert columns("models") == {
        "Source": ".spec.source.uri", "Verified": '.status.conditions[?(@.type=="Verified")].status',
        "Signer": ".status.signer", "Digest": ".status.shortDigest", "Age": ".metadata.creationTimestamp"}
    assert columns("tenants") == {
        "Namespaces": ".spec.namespaces", "GPUs": ".status.gpuSummary", "Admitted": ".status.admitted",
        "Queued": ".status.queued", "Age": ".metadata.creationTimestamp"}


def test_validation_rules_and_defaults():
    md = schema("modeldeployments")
    spec = md["properties"]["spec"]
    assert spec["required"] == ["model", "gpu"] and md["required"] == ["spec"]
    assert spec["properties"]["gpu"]["properties"]["count"]["minimum"] == 1
    assert spec["properties"]["replicas"]["default"] == 1
    (tp_rule,) = spec["x-kubernetes-validations"]
    assert tp_rule["fieldPath"] == ".engine.tensorParallelSize"
    assert "self.gpu.count % self.engine.tensorParallelSize == 0" in tp_rule["rule"]
    assert "tensorParallelSize" in tp_rule["message"]
    rollout = spec["properties"]["rollout"]
    assert rollout["default"] == {}
    assert rollout["properties"]["maxSurge"] == {
        "description": rollout["properties"]["maxSurge"]["description"], "default": "auto",
        "x-kubernetes-int-or-string": True}
    assert {r["fieldPath"] for r in rollout["x-kubernetes-validations"]} == {".maxSurge", ".maxUnavailable"}
    assert spec["properties"]["gpu"]["properties"]["class"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    gmu = spec["properties"]["engine"]["properties"]["gpuMemoryUtilization"]
    assert gmu["minimum"] == 0 and gmu["exclusiveMinimum"] is True and gmu["maximum"] == 1
    assert md["properties"]["metadata"]["properties"]["name"]["maxLength"] == 63

    m = schema("models")["properties"]["spec"]
    assert m["properties"]["signature"]["default"] == {}
    assert m["properties"]["signature"]["properties"]["policy"]["default"] == "Required"
    assert m["properties"]["signature"]["properties"]["policy"]["enum"] == ["Required", "Disabled"]
    assert m["properties"]["quantization"]["enum"] == ["none", "awq", "gptq", "fp8"]
    assert m["properties"]["source"]["properties"]["uri"]["pattern"] == "^(file|pvc|s3|gs|hf|oci)://.+$"
    assert m["properties"]["adapters"]["x-kubernetes-list-map-keys"] == ["name"]

    t = schema("tenants")["properties"]
    assert t["spec"]["properties"]["quota"]["properties"]["gpus"]["additionalProperties"] == {
        "type": "integer", "minimum": 0}
    assert t["spec"]["properties"]["namespaces"]["x-kubernetes-list-type"] == "set"
    assert set(t["status"]["properties"]["reservations"]["additionalProperties"]["required"]) == {"class", "gpus", "uid"}
    # Nothing is defaulted inside status.
    for _path, node in walk(t["status"]):
        assert "default" not in node
