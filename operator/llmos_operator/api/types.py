"""The llmos API: Tenant, Model and ModelDeployment (group ``llmos.dev``, version ``v1alpha1``).

These pydantic models are the single source of the API. ``crdgen`` turns them into ``crds/*.yaml``; the operator
parses the objects it watches with :func:`parse_object`. Python attribute names are snake_case; the JSON (and YAML)
names are camelCase through aliases, and both are accepted when building a model in Python.

Validation rules that the API server must enforce with CEL live next to the type they belong to, as :class:`Rule`
entries in ``__rules__``. Each carries its CEL expression (emitted into ``x-kubernetes-validations``) and the same
check in Python (run by pydantic), so that :func:`parse_object` and the API server refuse the same objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import *  # noqa: F403 — every name of the API, from one module
from .base import FieldError, InvalidObject, Resource, parse_as
from .model import *  # noqa: F403
from .model import Model
from .model_deployment import *  # noqa: F403
from .model_deployment import ModelDeployment
from .tenant import *  # noqa: F403
from .tenant import Tenant

KINDS: dict[str, type[Resource]] = {cls.KIND: cls for cls in (Tenant, Model, ModelDeployment)}


def parse_object(raw: Mapping[str, Any]) -> Resource:
    """Parse a Tenant, Model or ModelDeployment by its ``kind``."""
    kind = raw.get("kind")
    cls = KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        name = (raw.get("metadata") or {}).get("name", "")
        raise InvalidObject(str(kind), name, [FieldError("kind", "unknown kind")])
    return parse_as(cls, raw)
