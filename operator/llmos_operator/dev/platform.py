"""What the platform installs with the Helm chart, applied to the local cluster for `make demo` and the tests: the
CRDs, the operator's ServiceAccount and RBAC, the tenant roles, the admission policies and their parameter — all
rendered by the chart itself (`helm template`, the helm built from source), so the cluster under test enforces
exactly what a Helm install ships. The operator's Deployment is left out: the operator runs as a local process, but
with a token of the chart's ServiceAccount (:func:`operator_kubeconfig`), never the admin kubeconfig, so its RBAC
is proven enough.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import yaml

from . import cluster

CHART = cluster.REPO_ROOT / "helm" / "llmos"
RELEASE = "llmos"
SYSTEM_NAMESPACE = "llmos-system"
FIELD_MANAGER = "llmos-dev"
# The chart's templates that make up the platform side (everything but the operator's own Deployment and config).
# leader-election.yaml grants the Lease, so that operators started without --standalone (several replicas, as the
# chart runs them) can elect one.
PLATFORM_TEMPLATES = (
    "templates/serviceaccount.yaml",
    "templates/rbac.yaml",
    "templates/leader-election.yaml",
    "templates/tenant-roles.yaml",
    "templates/admission-policies.yaml",
    "templates/admission-children.yaml",
    "templates/admission-tenancy.yaml",
    "templates/engine-flags.yaml",
)
# Admission policies a newer chart no longer renders are deleted from a cluster an older one was installed on (they
# would keep refusing what the chart now allows).
PRUNED_KINDS = ("validatingadmissionpolicies", "validatingadmissionpolicybindings")
TOKEN_DURATION = "48h"


def fullname(release: str = RELEASE) -> str:
    return f"{release}-operator"


def operator_username(release: str = RELEASE, namespace: str = SYSTEM_NAMESPACE) -> str:
    return f"system:serviceaccount:{namespace}:{fullname(release)}"


def render(templates: tuple[str, ...] = PLATFORM_TEMPLATES, *, release: str = RELEASE,
           namespace: str = SYSTEM_NAMESPACE, values: dict | None = None) -> list[dict]:
    """`helm template` of the chart restricted to `templates`; the rendered objects."""
    helm = cluster.binaries(build=False).helm_bin
    cmd = [str(helm), "template", release, str(CHART), "--namespace", namespace]
    for template in templates:
        cmd += ["--show-only", template]
    if values:
        cmd += ["--values", "-"]
    out = subprocess.run(cmd, input=yaml.safe_dump(values) if values else None, capture_output=True, text=True)
    if out.returncode != 0:
        raise cluster.ClusterError(f"helm template failed: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _apply(name: str, objects: list[dict]) -> None:
    result = cluster.kubectl(name, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
                             "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
                             check=False)
    if result.returncode != 0:
        raise cluster.ClusterError(f"could not apply the chart's objects: {result.stderr.strip()}")


def install(name: str = cluster.DEFAULT_CLUSTER, *, values: dict | None = None) -> None:
    """CRDs, the release namespace, then RBAC, tenant roles and admission policies. Idempotent (server-side apply)."""
    if not cluster.controllers_use_service_accounts(name):
        raise cluster.ClusterError(
            f"cluster {name!r} runs kube-controller-manager with the admin's identity (started by an older "
            "`llmos dev up`); the chart's GPU admission policy admits only the controllers' ServiceAccounts. "
            f"Recreate it: llmos dev down --name {name} && llmos dev up --name {name}")
    result = cluster.kubectl(name, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
                             "-f", str(CHART / "crds"), check=False)
    if result.returncode != 0:
        raise cluster.ClusterError(f"could not apply the chart's CRDs: {result.stderr.strip()}")
    cluster.kubectl(name, "wait", "--for=condition=Established", "--timeout=60s", "crd/tenants.llmos.dev",
                    "crd/models.llmos.dev", "crd/modeldeployments.llmos.dev")
    _apply(name, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}])
    objects = render(values=values)
    _apply(name, objects)
    _prune(name, objects)


def _prune(name: str, objects: list[dict], release: str = RELEASE) -> None:
    rendered = {o["metadata"]["name"] for o in objects if o["kind"].startswith("ValidatingAdmissionPolicy")}
    for kind in PRUNED_KINDS:
        listed = cluster.kubectl(name, "get", kind, "-l", f"app.kubernetes.io/instance={release}",
                                 "-o", "jsonpath={.items[*].metadata.name}", check=False)
        stale = [n for n in listed.stdout.split() if n not in rendered]
        if stale:
            cluster.kubectl(name, "delete", kind, *stale, "--ignore-not-found")


def operator_environment(name: str = cluster.DEFAULT_CLUSTER, *, values: dict | None = None) -> dict[str, str]:
    """What the chart gives the operator's container besides its token: the configuration it mounts (the chart's
    ConfigMap, rendered with the same values) and the namespace it runs in."""
    (configmap,) = render(("templates/configmap.yaml",), values=values)
    path = cluster.cluster_dir(name) / "operator-config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(configmap["data"]["config.yaml"])
    return {"LLMOS_OPERATOR_CONFIG": str(path), "LLMOS_OPERATOR_NAMESPACE": SYSTEM_NAMESPACE}


def token(name: str, service_account: str, namespace: str, *, duration: str = TOKEN_DURATION,
          bound_pod: str | None = None) -> str:
    """`kubectl create token`: a ServiceAccount token, optionally bound to a pod (its user info then names the pod)."""
    args = ["create", "token", service_account, "-n", namespace, f"--duration={duration}"]
    if bound_pod:
        args += ["--bound-object-kind", "Pod", "--bound-object-name", bound_pod]
    return cluster.kubectl(name, *args).stdout.strip()


def kubeconfig_for_token(name: str, token_value: str, path: Path, *, namespace: str | None = None) -> Path:
    """A kubeconfig like the one a pod has: the cluster's server and CA, and a bearer token. Nothing of the
    admin's client certificate is copied."""
    admin = yaml.safe_load(cluster.kubeconfig_path(name).read_text())
    server = admin["clusters"][0]["cluster"]
    cluster_entry = {"server": server["server"]}
    if "certificate-authority-data" in server:
        cluster_entry["certificate-authority-data"] = server["certificate-authority-data"]
    elif "certificate-authority" in server:
        ca = Path(server["certificate-authority"]).read_bytes()
        cluster_entry["certificate-authority-data"] = base64.b64encode(ca).decode()
    else:
        cluster_entry["insecure-skip-tls-verify"] = server.get("insecure-skip-tls-verify", False)
    context = {"cluster": "local", "user": "token"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "token",
        "clusters": [{"name": "local", "cluster": cluster_entry}],
        "users": [{"name": "token", "user": {"token": token_value}}],
        "contexts": [{"name": "token", "context": context}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config))
    return path


def operator_kubeconfig(name: str = cluster.DEFAULT_CLUSTER) -> Path:
    """A kubeconfig holding a fresh token of the chart's operator ServiceAccount (call :func:`install` first)."""
    value = token(name, fullname(), SYSTEM_NAMESPACE)
    return kubeconfig_for_token(name, value, cluster.cluster_dir(name) / "operator.kubeconfig")
