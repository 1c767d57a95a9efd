"""Generate the CustomResourceDefinitions of the llmos API from its pydantic types.

    python -m llmos_operator.api.crdgen --write   # write crds/<plural>.llmos.dev.yaml and helm/llmos/crds/
    python -m llmos_operator.api.crdgen --check   # exit 1 if the checked-in files differ from the types

pydantic's JSON schema is turned into a Kubernetes *structural* schema: ``$ref`` inlined, ``title`` dropped,
``Optional[X]`` (``anyOf`` with null) becomes X left out of ``required``, ``int | str`` becomes
``x-kubernetes-int-or-string``, a numeric ``exclusiveMinimum`` becomes OpenAPI v3.0's boolean form, and defaults
under ``status`` are dropped. :func:`structural_problems` checks the result against the rules the API server applies.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .types import CATEGORY, GROUP, KINDS, VERSION, Resource

REPO_ROOT = Path(__file__).resolve().parents[3]
OUTPUT_DIRS = ("crds", "helm/llmos/crds")
HEADER = "# Generated from operator/llmos_operator/api/types.py by `python -m llmos_operator.api.crdgen --write`.\n" \
         "# Do not edit by hand: a unit test fails when this file and the types disagree.\n"

# Keys a structural schema node may carry (apiextensions.k8s.io/v1 JSONSchemaProps, minus the ones llmos avoids).
ALLOWED_KEYS = {
    "type", "description", "format", "properties", "required", "items", "additionalProperties", "enum", "default",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "pattern",
    "minItems", "maxItems", "minProperties", "maxProperties", "nullable",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations", "x-kubernetes-embedded-resource",
}
_KEY_ORDER = ["description", "type", "format", "enum", "default"]


def _structural(node: dict[str, Any], defs: dict[str, Any], *, in_status: bool) -> dict[str, Any]:
    """Convert one pydantic JSON-schema node into a structural one."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # siblings of $ref (description, default, …) win
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if node.get("x-kubernetes-int-or-string"):
            pass  # int | str: the extension alone says it
        elif len(variants) == 1:
            inner = variants[0]
            if "$ref" in inner:
                inner = {**defs[inner["$ref"].rsplit("/", 1)[-1]]}
            node = {**inner, **{k: v for k, v in node.items() if k != "default"}}
            if node.get("default", ...) is None:
                node.pop("default")
        else:
            raise ValueError(f"cannot express anyOf {variants} structurally")
    if node.get("default", ...) is None:
        node.pop("default")
    node.pop("title", None)
    if in_status:
        node.pop("default", None)
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if isinstance(node.get("exclusiveMaximum"), (int, float)) and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if "properties" in node:
        node["properties"] = {
            name: _structural(sub, defs, in_status=in_status) for name, sub in node["properties"].items()
        }
        node.setdefault("type", "object")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"], defs, in_status=in_status)
    elif node.get("additionalProperties") is False:
        node.pop("additionalProperties")  # structural schemas prune unknown fields anyway
    if "items" in node:
        node["items"] = _structural(node["items"], defs, in_status=in_status)
    unknown = set(node) - ALLOWED_KEYS
    if unknown:
        raise ValueError(f"schema keys not allowed in a CRD: {sorted(unknown)} in {node}")
    ordered = {k: node[k] for k in _KEY_ORDER if k in node}
    ordered.update({k: node[k] for k in sorted(node) if k not in ordered})
    return ordered


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """Structural schema of one pydantic model (spec or status type)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs, in_status=model.__name__.endswith("Status"))


def openapi_schema(cls: type[Resource]) -> dict[str, Any]:
    fields = cls.model_fields
    spec_schema = schema_of(fields["spec"].annotation)  # type: ignore[arg-type]
    status_schema = schema_of(fields["status"].annotation)  # type: ignore[arg-type]
    root: dict[str, Any] = {
        "description": (cls.__doc__ or "").strip().splitlines()[0],
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", **({"properties": {"name": cls.NAME_SCHEMA}} if cls.NAME_SCHEMA else {})},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if fields["spec"].is_required():
        root["required"] = ["spec"]
    return root


def crd_for(cls: type[Resource]) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(cls)},
        "subresources": {"status": {}},
        "additionalPrinterColumns": [c.schema() for c in cls.PRINTER_COLUMNS],
    }
    if cls.SCALE:
        version["subresources"]["scale"] = dict(cls.SCALE)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{cls.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "llmos", "app.kubernetes.io/part-of": "llmos"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": cls.KIND,
                "listKind": f"{cls.KIND}List",
                "plural": cls.PLURAL,
                "singular": cls.KIND.lower(),
                "shortNames": list(cls.SHORT_NAMES),
                "categories": [CATEGORY],
            },
            "scope": cls.SCOPE,
            "versions": [version],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, for every kind."""
    return {f"{cls.PLURAL}.{GROUP}.yaml": crd_for(cls) for cls in KINDS.values()}


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # shared sub-schemas are written out in full, without &anchors
        return True


def to_yaml(crd: dict[str, Any]) -> str:
    return HEADER + yaml.dump(crd, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=120)


def rendered_files(root: Path = REPO_ROOT) -> dict[Path, str]:
    """Every path the generator owns → its wanted content."""
    out = {}
    for name, crd in all_crds().items():
        text = to_yaml(crd)
        for d in OUTPUT_DIRS:
            out[root / d / name] = text
    return out


def drift(root: Path = REPO_ROOT) -> list[str]:
    """Paths (relative to root) whose content differs from the types, or that are missing."""
    return [
        str(path.relative_to(root))
        for path, text in rendered_files(root).items()
        if not path.exists() or path.read_text() != text
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Structural-schema checks (what the API server refuses, so that a test catches it without a cluster)


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """Ways in which ``schema`` is not a structural schema that the API server accepts with defaults and CEL."""
    problems: list[str] = []
    here = path or "<root>"
    unknown = set(schema) - ALLOWED_KEYS
    if unknown:
        problems.append(f"{here}: keys not allowed: {sorted(unknown)}")
    if "type" not in schema and not (
        schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        problems.append(f"{here}: no type")
    typ = schema.get("type")
    if typ is not None and typ not in {"object", "array", "string", "integer", "number", "boolean"}:
        problems.append(f"{here}: bad type {typ!r}")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{here}: both properties and additionalProperties")
    if typ == "array" and not isinstance(schema.get("items"), dict):
        problems.append(f"{here}: array without a single items schema")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and not isinstance(schema[key], bool):
            problems.append(f"{here}: {key} must be a boolean in OpenAPI v3.0")
    if "default" in schema and (path.startswith(".status") or path.startswith(".metadata")):
        problems.append(f"{here}: default under status/metadata")
    if "default" in schema and typ == "object" and schema["default"] != {}:
        problems.append(f"{here}: object defaults other than {{}} are not applied through nested defaults")
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        item = schema.get("items", {})
        properties = item.get("properties", {})
        missing = [k for k in keys if k not in item.get("required", []) and "default" not in properties.get(k, {})]
        if not keys or missing:
            problems.append(f"{here}: list-type map needs map keys that items require ({missing or 'none given'})")
    if list_type == "set" and schema.get("items", {}).get("type") in ("object", "array"):
        problems.append(f"{here}: list-type set needs scalar items")
    for rule in schema.get("x-kubernetes-validations", []):
        if not rule.get("rule") or not (rule.get("message") or rule.get("messageExpression")):
            problems.append(f"{here}: validation rule without rule or message: {rule}")
    for name, sub in schema.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        problems += structural_problems(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        problems += structural_problems(schema["items"], f"{path}[]")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmos_operator.api.crdgen", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the CRD files")
    mode.add_argument("--check", action="store_true", help="exit 1 if the files differ from the types")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    for name, crd in all_crds().items():
        problems = structural_problems(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        if problems:
            print(f"{name}: not structural:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
    if args.write:
        for path, text in rendered_files(args.root).items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path.relative_to(args.root)}")
        return 0
    if args.check:
        stale = drift(args.root)
        if stale:
            print("CRDs differ from operator/llmos_operator/api/types.py (run `make crds`):\n  " + "\n  ".join(stale),
                  file=sys.stderr)
            return 1
        print("CRDs are up to date")
        return 0
    for name, crd in all_crds().items():
        sys.stdout.write(f"---\n# {name}\n" + to_yaml(crd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
