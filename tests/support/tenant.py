"""Credentials of a tenant, as a platform team would hand them out: a ServiceAccount in a namespace of its own, bound
to the built-in `admin` ClusterRole in each of the tenant's namespaces and to nothing else. Its token becomes a
kubeconfig (server + CA + token), an ApiClient and a kubectl wrapper, so the hostile side of a test never uses the
cluster admin's rights. Also: a token bound to a pod, as the runtime in that pod holds.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client
from kubernetes import config as k8s_config


@dataclass
class Credentials:
    """Someone's kubeconfig and clients; `close()` when done."""

    username: str
    kubeconfig: Path
    api: client.ApiClient

    def kubectl(self, *args: str, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess:
        from llmos_operator.dev.cluster import binaries

        return subprocess.run([str(binaries(build=False).kubectl), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, check=check, timeout=60)

    def close(self) -> None:
        self.api.close()


def credentials_for_token(cluster_name: str, token: str, path: Path, username: str) -> Credentials:
    from llmos_operator.dev import platform

    kubeconfig = platform.kubeconfig_for_token(cluster_name, token, path)
    return Credentials(username, kubeconfig, k8s_config.new_client_from_config(config_file=str(kubeconfig)))


def _wait_for_service_account(core: client.CoreV1Api, name: str, namespace: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account(name, namespace)
            return
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def make_user(admin_api: client.ApiClient, cluster_name: str, home: str, name: str, *,
              admin_of: list[str] = (), view_of: list[str] = (), workdir: Path) -> Credentials:
    """A ServiceAccount `name` in namespace `home` (created if missing), bound to the built-in `admin` ClusterRole in
    each namespace of `admin_of` and to `view` in each of `view_of` — nothing else. Returns its credentials."""
    from llmos_operator.dev import platform

    core = client.CoreV1Api(admin_api)
    rbac = client.RbacAuthorizationV1Api(admin_api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=home,
                                                                              labels={"llmos.dev/test": "1"})))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    _wait_for_service_account(core, "default", home)
    try:
        core.create_namespaced_service_account(home, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    for role, namespaces in (("admin", admin_of), ("view", view_of)):
        for ns in namespaces:
            body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": f"{name}-{role}", "namespace": ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": home}]}
            try:
                rbac.create_namespaced_role_binding(ns, body)
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
    token = platform.token(cluster_name, name, home, duration="2h")
    return credentials_for_token(cluster_name, token, workdir / f"{home}-{name}.kubeconfig",
                                 f"system:serviceaccount:{home}:{name}")


def pod_bound_token(cluster_name: str, namespace: str, pod: str, service_account: str = "llmos-runtime") -> str:
    """A token of `service_account` bound to `pod` (what the kubelet projects into that pod): its user info carries
    authentication.kubernetes.io/pod-name and pod-uid, and it dies with the pod."""
    from llmos_operator.dev import platform

    return platform.token(cluster_name, service_account, namespace, duration="1h", bound_pod=pod)
