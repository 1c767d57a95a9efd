"""API keys on the real control plane, with the operator under its chart's RBAC: a key made with `llmos key create`
(as the tenant, with its own token) reaches the namespace's key table as its hash; the runtime's own watch of that
table, with a token of the runtime's ServiceAccount bound to a pod, sees a new and a revoked key within the 10 s the
issue allows (the measured path: Secret written → operator → ConfigMap → watch → the guard's file); that token
reads no other ConfigMap; the key's plain text is in no object of the namespace but its Secret."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from llmos_operator.cli_keys import key_secret
from llmos_runtime.keys import TABLE_FILE, generate_key, key_hash
from llmos_runtime.keysync import ConfigMapSource, KeyTableWriter
from tests.support.tenant import make_user, pod_bound_token
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def _table(core: client.CoreV1Api, ns: str) -> dict | None:
    try:
        cm = core.read_namespaced_config_map("llmos-api-keys", ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(cm.data["keys.json"])


def _exists(read, name: str, ns: str) -> bool:
    try:
        read(name, ns)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _llmos(*args: str, kubeconfig: Path, check: bool = True) -> str:
    out = subprocess.run([sys.executable, "-m", "llmos_operator.cli", *args, "--kubeconfig", str(kubeconfig)],
                         capture_output=True, text=True, check=check)
    return out.stdout


class GuardFile:
    """The runtime's side, in this process: ConfigMapSource → KeyTableWriter → the guard's table file."""

    def __init__(self, ns: str, api: client.ApiClient, guard_dir: Path):
        self.path = guard_dir / TABLE_FILE
        self.writer = KeyTableWriter(guard_dir, lambda: ["m"])
        self.source = ConfigMapSource("llmos-api-keys", ns, self.writer, core_api=client.CoreV1Api(api))
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self.source.run(self._stop),),
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.source.stop()

    def hashes(self) -> set[str]:
        try:
            return {k["hash"] for k in json.loads(self.path.read_text())["keys"]}
        except (OSError, ValueError):
            return set()


@pytest.fixture
def tenant_user(cluster, namespace, tmp_path):
    user = make_user(cluster.api, cluster.name, f"{namespace[:50]}-u", "tenant-admin", admin_of=[namespace],
                     workdir=tmp_path)
    yield user
    user.close()
    client.CoreV1Api(cluster.api).delete_namespace(f"{namespace[:50]}-u")


def test_keys_reach_every_replica_within_seconds_and_only_as_hashes(cluster, namespace, objects, tenant_user,
                                                                    tmp_path):
    from kubernetes.config import new_client_from_config

    from llmos_operator.dev import platform

    core = client.CoreV1Api(cluster.api)
    objects.tenant(gpus={"h100": 2}, limits={"requestsPerMinute": 1000})
    objects.model()
    objects.deployment("chat", replicas=2)
    wait_for(lambda: _exists(core.read_namespaced_service_account, "llmos-runtime", namespace), timeout=30,
             message="the runtime's ServiceAccount")
    table = wait_for(lambda: _table(core, namespace), timeout=30, message="the namespace's key table")
    assert table["keys"] == [] and table["tenantLimits"] == {"requestsPerMinute": 1000}

    # The runtime's watch, with a token of llmos-runtime bound to a pod (what the kubelet mounts).
    pod = core.create_namespaced_pod(namespace, {
        "metadata": {"name": "stand-in"},
        "spec": {"serviceAccountName": "llmos-runtime", "automountServiceAccountToken": False,
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always",
                                 "securityContext": {"allowPrivilegeEscalation": False,
                                                     "capabilities": {"drop": ["ALL"]}}}]}})
    token = pod_bound_token(cluster.name, namespace, pod.metadata.name)
    runtime_api = new_client_from_config(str(platform.kubeconfig_for_token(cluster.name, token,
                                                                            tmp_path / "runtime.kubeconfig")))
    with pytest.raises(client.ApiException) as denied:  # the runtime's token reads that one ConfigMap only
        client.CoreV1Api(runtime_api).list_namespaced_config_map(namespace)
    assert denied.value.status == 403

    tenant_kubeconfig = Path(tenant_user.kubeconfig)
    created, revoked = [], []
    with GuardFile(namespace, runtime_api, tmp_path) as guard:
        wait_for(lambda: guard.writer.loaded.is_set(), timeout=10, message="the runtime's first table")
        tenant_core = client.CoreV1Api(tenant_user.api)
        for i in range(5):  # timed from the tenant's write (the CLI's own start-up is not the propagation)
            key = generate_key()
            t0 = time.monotonic()
            tenant_core.create_namespaced_secret(namespace, key_secret(f"bot-{i}", namespace, key, models=["m"],
                                                                       limits={"requestsPerMinute": 600}))
            wait_for(lambda: key_hash(key) in guard.hashes(), timeout=10, interval=0.02,
                     message="a new key in the guard's table")
            created.append(time.monotonic() - t0)
            t0 = time.monotonic()
            tenant_core.delete_namespaced_secret(f"bot-{i}", namespace)
            wait_for(lambda: key_hash(key) not in guard.hashes(), timeout=10, interval=0.02,
                     message="a revoked key gone from the guard's table")
            revoked.append(time.monotonic() - t0)
        print(f"\nkey in force after {[round(x, 3) for x in created]} s, revoked after "
              f"{[round(x, 3) for x in revoked]} s")
        assert max(created + revoked) < 10

        # A key kept, then every object of the namespace scanned for its text.
        key = _llmos("key", "create", "kept", "-n", namespace, kubeconfig=tenant_kubeconfig).strip().splitlines()[-1]
        wait_for(lambda: key_hash(key) in guard.hashes(), timeout=10, message="the kept key")
        listing = _llmos("key", "list", "-n", namespace, kubeconfig=tenant_kubeconfig)
        assert "kept" in listing and key not in listing
        _llmos("key", "revoke", "bot-gone", "-n", namespace, kubeconfig=tenant_kubeconfig, check=False)
    holders = _objects_holding(cluster, namespace, key)
    assert holders == [("Secret", "kept")], holders
    assert key_hash(key) in json.dumps(_table(core, namespace))


def _objects_holding(cluster, namespace: str, text: str) -> list[tuple[str, str]]:
    """Every object of every namespaced kind in ``namespace`` (and every Tenant), as the API returns it: which ones
    contain ``text`` (Secrets decoded too)."""
    import base64

    kinds = cluster.kubectl("api-resources", "--namespaced=true", "--verbs=list", "-o", "name").stdout.split()
    assert "secrets" in kinds and "configmaps" in kinds and "modeldeployments.llmos.dev" in kinds
    listed = json.loads(cluster.kubectl("get", ",".join(kinds), "-n", namespace, "-o", "json").stdout)["items"]
    listed += json.loads(cluster.kubectl("get", "tenants", "-o", "json").stdout)["items"]
    holders = []
    for item in listed:
        blob = json.dumps(item)
        if item["kind"] == "Secret":
            blob += "".join(base64.b64decode(v).decode(errors="replace") for v in (item.get("data") or {}).values())
        if text in blob:
            holders.append((item["kind"], item["metadata"]["name"]))
    return sorted(set(holders))
