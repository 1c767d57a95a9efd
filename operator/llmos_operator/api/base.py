"""What every kind of the llmos API shares: the group and version, the Rule machinery (CEL beside its Python twin), the
base model, conditions and object references, the printer columns and the Resource base, and parsing.

These pydantic models are the single source of the API. ``crdgen`` turns them into ``crds/*.yaml``; the operator
parses the objects it watches with :func:`parse_object`. Python attribute names are snake_case; the JSON (and YAML)
names are camelCase through aliases, and both are accepted when building a model in Python.

Validation rules that the API server must enforce with CEL live next to the type they belong to, as :class:`Rule`
entries in ``__rules__``. Each carries its CEL expression (emitted into ``x-kubernetes-validations``) and the same
check in Python (run by pydantic), so that :func:`parse_object` and the API server refuse the same objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel, to_snake
from pydantic_core import PydanticCustomError

GROUP = "llmos.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "llmos"

# Regular expressions shared by the schema (Go RE2 syntax: no look-around) and Python.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SOURCE_URI = r"^(file|pvc|s3|gs|hf|oci)://.+$"
PVC_URI = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$"
HF_URI = r"^hf://[^/]+(/[^/]+)?$"
ADAPTER_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_TYPE = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")

SignaturePolicy = Literal["Required", "Disabled"]
SourceVerify = Literal["inPlace", "copy"]
Quantization = Literal["none", "awq", "gptq", "fp8"]
ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Rule:
    """One validation rule of an object: CEL for the API server, the same check in Python for :func:`parse_object`.

    ``check`` gets the validated pydantic object and returns True when the rule holds. ``field_path`` is relative to
    the object (``.engine.tensorParallelSize``) and names the field the API server reports the error on.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def schema(self) -> dict[str, Any]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def _add_rules_to_schema(schema: dict[str, Any], cls: type) -> None:
    rules: tuple[Rule, ...] = cls.__dict__.get("__rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.schema() for r in rules]


class ApiModel(BaseModel):
    """Base of every API type: camelCase aliases, snake_case accepted, unknown fields ignored, rules checked."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        json_schema_extra=_add_rules_to_schema,
    )
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for name, info in type(self).model_fields.items():
            # Lists the CRD declares as sets or maps: the API server refuses repeated items, so parse_object does.
            extra: dict[str, Any] = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            list_type = extra.get("x-kubernetes-list-type")
            if list_type not in ("set", "map"):
                continue
            seen: set[Any] = set()
            map_keys: list[str] = list(extra.get("x-kubernetes-list-map-keys") or ())
            for item in getattr(self, name) or ():
                key = item if list_type == "set" else tuple(getattr(item, to_snake(k), None) for k in map_keys)
                if key in seen:
                    shown = item if list_type == "set" else ", ".join(map(str, key))
                    raise PydanticCustomError(
                        "llmos_rule", "{message}",
                        {"message": f"Duplicate value: {shown}", "field_path": f".{info.alias or name}"})
                seen.add(key)
        for rule in type(self).__dict__.get("__rules__", ()):
            if not rule.check(self):
                raise PydanticCustomError(
                    "llmos_rule", "{message}", {"message": rule.message, "field_path": rule.field_path or ""}
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (camelCase, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces


class Condition(ApiModel):
    """A Kubernetes condition (the shape of metav1.Condition)."""

    type: str = Field(max_length=316, pattern=CONDITION_TYPE, description="Type of condition in CamelCase.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024, pattern=CONDITION_REASON, description="Machine-readable reason in CamelCase."
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation the condition was computed from."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status last changed (RFC 3339)."
    )


def _conditions_field(description: str = "Current state, as Kubernetes conditions.") -> Any:
    return Field(
        default_factory=list,
        max_length=16,
        description=description,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class ObjectMeta(ApiModel):
    """The parts of metadata llmos reads. (The CRD schema leaves metadata to the API server.)"""

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SecretKeyRef(ApiModel):
    """A key of a Secret."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="Secret name.")
    namespace: str | None = Field(
        None, max_length=63, pattern=DNS_LABEL,
        description="Secret namespace: the operator's own namespace (the default); any other is refused.",
    )
    key: str = Field("publicKey", max_length=253, description="Key inside the Secret.")


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the object's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN, description="ConfigMap name.")
    key: str = Field("model.sig", max_length=253, description="Key inside the ConfigMap.")




# ---------------------------------------------------------------------------------------------------------------------
# Resources


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


def _condition_column(name: str, cond: str, field: str = "status", priority: int = 0) -> PrinterColumn:
    return PrinterColumn(
        name, "string", f'.status.conditions[?(@.type=="{cond}")].{field}', f"{cond} condition {field}", priority
    )


_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


class Resource(ApiModel):
    """Common part of the three kinds."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    SCOPE: ClassVar[Literal["Namespaced", "Cluster"]]
    SHORT_NAMES: ClassVar[tuple[str, ...]]
    PRINTER_COLUMNS: ClassVar[tuple[PrinterColumn, ...]]
    SCALE: ClassVar[dict[str, Any] | None] = None
    # Restriction of metadata.name (the only part of metadata a CRD schema may restrict), checked by parse_as too.
    NAME_SCHEMA: ClassVar[dict[str, Any] | None] = None

    api_version: str = API_VERSION
    kind: str = ""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @property
    def key(self) -> str:
        """``namespace/name`` (or ``name`` for a cluster-scoped object)."""
        ns = self.metadata.namespace
        return f"{ns}/{self.metadata.name}" if ns else self.metadata.name


# ---------------------------------------------------------------------------------------------------------------------
# Parsing raw objects


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. spec.gpu.count
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidObject(ValueError):
    """A raw object does not match the API. ``errors`` name each field path, as the API server would."""

    def __init__(self, kind: str, name: str, errors: list[FieldError]):
        self.kind, self.name, self.errors = kind, name, errors
        super().__init__(f"{kind} {name!r} is invalid: " + "; ".join(str(e) for e in errors))


def _loc_to_path(loc: tuple[Any, ...], extra: str = "") -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    if extra:
        out += extra if out else extra.lstrip(".")
    return out


T = TypeVar("T", bound=Resource)


def parse_as(cls: type[T], raw: Mapping[str, Any]) -> T:
    """Validate a raw object (as kopf or the API returns it) into ``cls``; raise :class:`InvalidObject`."""
    name = ((raw.get("metadata") or {}).get("name")) or ""
    try:
        obj = cls.model_validate(raw)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            extra = (err.get("ctx") or {}).get("field_path", "") if err["type"] == "llmos_rule" else ""
            errors.append(FieldError(_loc_to_path(err["loc"], extra), err["msg"]))
        raise InvalidObject(cls.KIND, name, errors) from None
    rule = cls.NAME_SCHEMA
    if rule and (len(obj.metadata.name) > rule["maxLength"] or not re.match(rule["pattern"], obj.metadata.name)):
        why = f"must match {rule['pattern']} (at most {rule['maxLength']} characters)"
        raise InvalidObject(cls.KIND, name, [FieldError("metadata.name", why)])
    return obj
