"""``llmos key create|list|revoke``: API keys as Secrets of type ``llmos.dev/api-key`` (core/api_keys.py), written
with the caller's own kubeconfig (a tenant's ``admin`` of its namespace is enough). ``create`` prints the key once,
as the last line of stdout; nothing else ever shows it."""

from __future__ import annotations

import argparse
import base64
import sys
from datetime import UTC, datetime
from typing import Any

from llmos_runtime.keys import generate_key

from .api.names import API_KEY_SECRET_TYPE, LABEL_MANAGED_BY
from .core.api_keys import LIMIT_FIELDS, KeyRefused, parse_duration, parse_key_secret

FIELDS = (("rpm", "requestsPerMinute"), ("tpm", "tokensPerMinute"), ("concurrency", "concurrentRequests"))


def _core(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig)
    except config.ConfigException:
        config.load_incluster_config()
    return client.CoreV1Api()


def key_secret(name: str, namespace: str, key: str, *, models: list[str] | None = None,
               limits: dict[str, int] | None = None, expires: datetime | None = None) -> dict[str, Any]:
    data = {"key": key}
    if models:
        data["models"] = ",".join(models)
    for field, value in (limits or {}).items():
        data[field] = str(value)
    if expires is not None:
        data["expires"] = expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": "v1", "kind": "Secret", "type": API_KEY_SECRET_TYPE,
            "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_MANAGED_BY: "llmos-cli"}},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _create(args: argparse.Namespace) -> int:
    limits = {field: getattr(args, opt) for opt, field in FIELDS if getattr(args, opt) is not None}
    for field, value in limits.items():
        if not 1 <= value <= LIMIT_FIELDS[field]:
            print(f"llmos: {field} must be from 1 to {LIMIT_FIELDS[field]}", file=sys.stderr)
            return 2
    expires = None
    if args.expires:
        try:
            expires = datetime.now(UTC) + parse_duration(args.expires)
        except ValueError as exc:
            print(f"llmos: --expires: {exc}", file=sys.stderr)
            return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    key = generate_key()
    secret = key_secret(args.name, args.namespace, key, models=models, limits=limits, expires=expires)
    try:
        parse_key_secret(secret)
    except KeyRefused as exc:
        print(f"llmos: {exc}", file=sys.stderr)
        return 2
    _core(args.kubeconfig).create_namespaced_secret(args.namespace, secret)
    print(f"API key {args.namespace}/{args.name} created; it is shown once, here:", file=sys.stderr)
    print(key)
    return 0


def _list(args: argparse.Namespace) -> int:
    items = _core(args.kubeconfig).list_namespaced_secret(
        args.namespace, field_selector=f"type={API_KEY_SECRET_TYPE}").items
    rows = [("NAME", "MODELS", "RPM", "TPM", "CONCURRENCY", "EXPIRES", "STATUS")]
    for s in sorted(items, key=lambda s: s.metadata.name):
        raw = {"type": s.type, "metadata": {"name": s.metadata.name, "namespace": s.metadata.namespace},
               "data": s.data or {}}
        try:
            k = parse_key_secret(raw)
        except KeyRefused as exc:
            rows.append((s.metadata.name, "", "", "", "", "", f"refused: {exc}"))
            continue
        when = datetime.fromtimestamp(k.expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if k.expires else "never"
        expired = k.expires is not None and k.expires <= datetime.now(UTC).timestamp()
        rows.append((s.metadata.name, ",".join(k.models) if k.models else "*",
                     *(str(k.limits.get(f, "-")) for _, f in FIELDS), when, "expired" if expired else "active"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from kubernetes.client import ApiException

    core = _core(args.kubeconfig)
    try:
        found = core.read_namespaced_secret(args.name, args.namespace)
    except ApiException as exc:
        if exc.status == 404:
            print(f"llmos: no API key {args.namespace}/{args.name}", file=sys.stderr)
            return 1
        raise
    if found.type != API_KEY_SECRET_TYPE:
        print(f"llmos: Secret {args.namespace}/{args.name} is not an API key (type {found.type})", file=sys.stderr)
        return 1
    core.delete_namespaced_secret(args.name, args.namespace)
    print(f"API key {args.namespace}/{args.name} revoked: refused by every replica within seconds")
    return 0


def add_key_commands(sub: Any) -> None:
    key = sub.add_parser("key", help="API keys of a namespace's models (Secrets of type llmos.dev/api-key)")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    create = key_sub.add_parser("create", help="make a key; it is printed once, as the last line")
    create.add_argument("name")
    create.add_argument("--models", help="served model names it may call, comma-separated (default: all)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    create.add_argument("--concurrency", type=int, help="requests at once")
    create.add_argument("--expires", help="lifetime, e.g. 90d, 12h, 2w (default: never)")
    create.set_defaults(func=_create)
    listing = key_sub.add_parser("list", help="the namespace's keys (never their text)")
    listing.set_defaults(func=_list)
    revoke = key_sub.add_parser("revoke", help="delete a key")
    revoke.add_argument("name")
    revoke.set_defaults(func=_revoke)
    for p in (create, listing, revoke):
        p.add_argument("-n", "--namespace", required=True)
        p.add_argument("--kubeconfig", default=None)
