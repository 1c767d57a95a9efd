"""API keys, the pure parts: a key Secret read into its hash (never its text), refused with the field named, the
namespace's key table, the Tenant policy that forbids keyless deployments, the CLI's Secret."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from llmos_operator.api.types import ModelDeployment, Tenant, parse_object
from llmos_operator.cli_keys import key_secret
from llmos_operator.config import default_config
from llmos_operator.core.api_keys import (
    KeyRefused,
    parse_duration,
    parse_key_secret,
    render_key_table,
    summarize_key_secret,
)
from llmos_operator.core.policy import deployment_refusal
from llmos_runtime.keys import KeyTable, generate_key, key_hash

pytestmark = pytest.mark.unit


def secret(name="ci", **data):
    return {"type": "llmos.dev/api-key", "metadata": {"name": name, "namespace": "team-a", "resourceVersion": "1"},
            "data": {k: base64.b64encode(str(v).encode()).decode() for k, v in data.items()}}


def test_a_key_secret_becomes_its_hash_models_limits_and_expiry():
    key = generate_key()
    parsed = parse_key_secret(secret(key=key, models="chat, embed,chat", requestsPerMinute=600,
                                     tokensPerMinute=100000, concurrentRequests=4, expires="2027-01-01T00:00:00Z"))
    assert parsed.id == "team-a/ci" and parsed.hash == key_hash(key) and parsed.models == ("chat", "embed")
    assert parsed.limits == {"requestsPerMinute": 600, "tokensPerMinute": 100000, "concurrentRequests": 4}
    assert parsed.expires == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert key not in json.dumps(summarize_key_secret(secret(key=key)))  # the store never holds the text


@pytest.mark.parametrize(("data", "field"), [
    ({}, "data.key"), ({"key": "short"}, "data.key"), ({"key": "x" * 40 + " y"}, "data.key"),
    ({"key": "k" * 40, "requestsPerMinute": "many"}, "data.requestsPerMinute"),
    ({"key": "k" * 40, "concurrentRequests": 0}, "data.concurrentRequests"),
    ({"key": "k" * 40, "expires": "tomorrow"}, "data.expires"),
    ({"key": "k" * 40, "models": "ok,bad model"}, "data.models"),
])
def test_a_key_secret_that_breaks_a_rule_grants_nothing_and_says_which_field(data, field):
    with pytest.raises(KeyRefused, match=field.replace(".", r"\.")):
        parse_key_secret(secret(**data))
    assert summarize_key_secret(secret(**data))["refused"].startswith(field)


def test_the_key_table_holds_valid_keys_tenant_limits_and_replicas():
    good, bad = generate_key(), "short"
    summaries = [summarize_key_secret(secret("b", key=good, models="chat")),
                 summarize_key_secret(secret("a", key=bad))]
    cm = render_key_table("team-a", "acme", summaries, {"tokensPerMinute": 1000}, {"chat": 3})
    assert cm["metadata"]["name"] == "llmos-api-keys" and cm["metadata"]["namespace"] == "team-a"
    text = cm["data"]["keys.json"]
    assert good not in text and bad not in text
    table = KeyTable.loads(text)
    assert list(table.keys) == [key_hash(good)] and table.keys[key_hash(good)].models == frozenset({"chat"})
    assert table.tenant == "acme" and table.tenant_limits.tokens_per_minute == 1000 and table.replicas == {"chat": 3}


def test_durations():
    assert parse_duration("90d") == timedelta(days=90) and parse_duration("12h") == timedelta(hours=12)
    with pytest.raises(ValueError):
        parse_duration("3 months")


def test_the_cli_writes_a_secret_the_operator_reads():
    key = generate_key()
    s = key_secret("bot", "team-a", key, models=["chat"], limits={"requestsPerMinute": 60},
                   expires=datetime(2030, 1, 1, tzinfo=UTC))
    parsed = parse_key_secret(s)
    assert parsed.models == ("chat",) and parsed.limits == {"requestsPerMinute": 60} and parsed.hash == key_hash(key)


def _mdep(api_keys: str) -> ModelDeployment:
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "chat", "namespace": "team-a"},
                         "spec": {"model": "m", "gpu": {"class": "h100", "count": 1},
                                  "access": {"apiKeys": api_keys}}})  # type: ignore[return-value]


def test_a_tenant_may_forbid_keyless_deployments():
    strict = Tenant.model_validate({"metadata": {"name": "acme"}, "spec": {"policy": {"requireApiKeys": True}}})
    lax = Tenant.model_validate({"metadata": {"name": "acme"}, "spec": {}})
    refusal = deployment_refusal(_mdep("Disabled"), strict, default_config())
    assert refusal is not None and refusal[0] == "ApiKeysRequired" and "spec.access.apiKeys" in refusal[1]
    assert deployment_refusal(_mdep("Required"), strict, default_config()) is None
    assert deployment_refusal(_mdep("Disabled"), lax, default_config()) is None
    assert _mdep("Required").spec.access.api_keys == "Required"


def test_the_limit_store_is_rendered_when_the_platform_configured_one():
    from llmos_operator.config import config_from_yaml
    from llmos_operator.render.access import access_flags

    d = _mdep("Required")
    assert access_flags(d, default_config()) == ["--api-keys-configmap", "llmos-api-keys"]
    cfg = config_from_yaml("limits: {storeURL: 'redis://limits.llmos-system:6379'}")
    assert access_flags(d, cfg)[-2:] == ["--limits-store", "redis://limits.llmos-system:6379"]
    assert access_flags(_mdep("Disabled"), cfg) == []
