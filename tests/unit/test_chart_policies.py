"""The chart's admission policies repeat names the operator owns (api/names.py) as literals: a renamed child or label
must be renamed in both, or the policy protects a name nobody uses. Text checks of the templates (the policies
themselves are acted out against the API server in tests/integration/test_isolation_*.py and
test_tenancy_baseline.py)."""

import re
from pathlib import Path

import pytest

from llmos_operator.api import names
from llmos_operator.render.tenant import RELEASED_CHILDREN, TENANT_CHILDREN

pytestmark = pytest.mark.unit

TEMPLATES = Path(__file__).resolve().parents[2] / "helm" / "llmos" / "templates"


def _text(name: str) -> str:
    return (TEMPLATES / name).read_text()


def test_every_tenant_child_name_is_reserved_by_the_children_policy():
    children = _text("admission-children.yaml")
    reserved = re.search(r"\{\{- \$reserved := dict (.*?) \}\}", children).group(1)
    quoted = set(re.findall(r'"([a-z][-a-z0-9]*)"', reserved))
    plural = {"ResourceQuota": "resourcequotas", "LimitRange": "limitranges", "NetworkPolicy": "networkpolicies",
              "RoleBinding": "rolebindings", "ServiceAccount": "serviceaccounts"}
    for kind, name in TENANT_CHILDREN:
        assert plural[kind] in quoted, kind
        # the runtime's ServiceAccount comes from isolation.runtimeServiceAccount (values.yaml: the same name)
        assert name in quoted or name == names.RUNTIME_SERVICE_ACCOUNT, name
    for _, name in RELEASED_CHILDREN:
        assert name.startswith(names.RELEASED_PREFIX)
    assert f"startsWith('{names.RELEASED_PREFIX}')" in _text("_helpers.tpl")
    assert f"runtimeServiceAccount: {names.RUNTIME_SERVICE_ACCOUNT}" in (TEMPLATES.parent / "values.yaml").read_text()


def test_labels_the_policies_read_are_the_ones_llmos_writes():
    helpers = _text("_helpers.tpl")
    assert f"'{names.LABEL_MANAGED_BY}'].orValue('') == '{names.MANAGED_BY}'" in helpers
    assert f"'{names.LABEL_MODEL_DEPLOYMENT}'" in helpers
    assert f"'{names.LABEL_ALLOW_EXEC}'].orValue('') == 'true'" in _text("admission-tenancy.yaml")
    assert f"'{names.LABEL_ALLOW_REMOTE_CODE}'].orValue('') == 'true'" in _text("admission-policies.yaml")
    assert f"'{names.LABEL_TENANT}'" in _text("admission-tenancy.yaml")
    for label in ("tenant", "released"):  # the bindings select both kinds of namespace
        assert getattr(names, f"LABEL_{label.upper()}") == f"llmos.dev/{label}"
    assert 'key: llmos.dev/{{ $label }}' in helpers


def test_the_scale_policy_reads_the_model_deployment_from_the_selector():
    policies = _text("admission-policies.yaml")
    prefix = f"{names.LABEL_MODEL_DEPLOYMENT}="
    assert f"p.startsWith('{prefix}')" in policies and f"p.substring({len(prefix)})" in policies
