"""What the API server itself refuses a hostile tenant, with the Helm chart's admission policies and RBAC applied
(llmos_operator.dev.platform). The hostile side always uses a tenant's credentials — a ServiceAccount bound to the
built-in `admin` ClusterRole in the tenant's namespaces only — or a token bound to a runtime pod; never the admin's.

The operator is not needed here: namespaces are labelled `llmos.dev/tenant` by the test (as the operator does), and
the llmos Deployment is written with the operator ServiceAccount's token, exactly as the operator writes it.
"""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client

from tests.support.tenant import Credentials, credentials_for_token, make_user, pod_bound_token
from tests.support.waiting import wait_for

GROUP, VERSION = "llmos.dev", "v1alpha1"
GPU = "nvidia.com/gpu"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
MANAGED = {"app.kubernetes.io/managed-by": "llmos"}


@pytest.fixture(scope="module")
def platform(cluster, crds):
    from llmos_operator.dev import platform as dev_platform

    return dev_platform


@pytest.fixture(scope="module")
def tenant_namespaces(cluster, platform, operator):
    """Three namespaces made by the operator for real Tenants: `hostile-<id>` owns the first two (16 H100), and
    `hostile-<id>-rc` the third, where the platform allows --trust-remote-code (the operator labels it
    llmos.dev/allow-remote-code from Tenant.spec.policy.allowRemoteCode)."""
    core = client.CoreV1Api(cluster.api)
    custom = client.CustomObjectsApi(cluster.api)
    tenant = f"hostile-{uuid.uuid4().hex[:5]}"
    names = [f"{tenant}-{i}" for i in range(3)]
    tenants = {tenant: (names[:2], {"allowUnsignedModels": True}),
               f"{tenant}-rc": (names[2:], {"allowUnsignedModels": True, "allowRemoteCode": True})}
    for tenant_name, (namespaces, policy) in tenants.items():
        custom.create_cluster_custom_object(GROUP, VERSION, "tenants", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": tenant_name},
            "spec": {"namespaces": namespaces, "quota": {"gpus": {"h100": 16}}, "policy": policy}})
    for name in names:
        wait_for(lambda: _exists(core.read_namespaced_service_account, "llmos-runtime", name), timeout=60,
                 message=f"the operator's runtime ServiceAccount in {name}")
        wait_for(lambda: _exists(core.read_namespaced_service_account, "default", name), timeout=30,
                 message=f"default ServiceAccount in {name}")
    yield names
    for tenant_name in tenants:
        try:
            custom.delete_cluster_custom_object(GROUP, VERSION, "tenants", tenant_name)
        except client.ApiException:
            pass
    for name in [*names, f"{tenant}-home"]:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException:
            pass


def _exists(read, *args) -> bool:
    try:
        read(*args)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


@pytest.fixture(scope="module")
def tenant_admin(cluster, tenant_namespaces, tmp_path_factory) -> Credentials:
    home = tenant_namespaces[0].rsplit("-", 1)[0] + "-home"
    creds = make_user(cluster.api, cluster.name, home, "alice", admin_of=tenant_namespaces,
                      workdir=tmp_path_factory.mktemp("creds"))
    yield creds
    creds.close()


@pytest.fixture(scope="module")
def tenant_viewer(cluster, tenant_namespaces, tmp_path_factory) -> Credentials:
    home = tenant_namespaces[0].rsplit("-", 1)[0] + "-home"
    creds = make_user(cluster.api, cluster.name, home, "victor", view_of=tenant_namespaces,
                      workdir=tmp_path_factory.mktemp("creds"))
    yield creds
    creds.close()


@pytest.fixture(scope="module")
def operator_identity(cluster, platform, tmp_path_factory) -> Credentials:
    kubeconfig = platform.operator_kubeconfig(cluster.name)
    token = __import__("yaml").safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    creds = credentials_for_token(cluster.name, token, tmp_path_factory.mktemp("op") / "kubeconfig",
                                  platform.operator_username())
    yield creds
    creds.close()


# Tenant namespaces enforce Pod Security `restricted`: test pods meet it, so that only the policy under test refuses.
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _container(name: str, image: str, **extra) -> dict:
    return {"name": name, "image": image, "securityContext": dict(RESTRICTED_CONTAINER), **extra}


def _gpu_pod_spec(containers: int = 1) -> dict:
    return {
        "securityContext": dict(RESTRICTED_POD),
        "nodeSelector": dict(H100),
        "tolerations": [dict(GPU_TOLERATION)],
        "containers": [_container(f"c{i}", "registry.example/cuda:12",
                                  resources={"limits": {GPU: "8"}, "requests": {GPU: "8"}}) for i in range(containers)],
    }


def _workload(kind: str, name: str, *, labels: dict | None = None, replicas: int = 1, pod: dict | None = None) -> dict:
    labels = labels or {"app": name}
    pod = pod or _gpu_pod_spec()
    template = {"metadata": {"labels": labels}, "spec": pod}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": pod}
    if kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"):
        spec = {"selector": {"matchLabels": labels}, "template": template}
        if kind != "DaemonSet":
            spec["replicas"] = replicas
        if kind == "StatefulSet":
            spec["serviceName"] = name
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "labels": labels}, "spec": spec}
    job_template = {"metadata": {"labels": labels}, "spec": {**pod, "restartPolicy": "Never"}}
    if kind == "Job":
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                "spec": {"parallelism": 8, "template": job_template}}
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": job_template}}}}


def _create(creds: Credentials, namespace: str, obj: dict) -> tuple[int, str]:
    """Create `obj` as `creds` (kubectl create, so any kind); (exit code, stderr)."""
    out = creds.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(obj))
    return out.returncode, out.stderr


def _assert_refused_by(stderr: str, policy: str, *needles: str) -> None:
    """Refused by `policy`'s validation itself (a CEL error would also deny, fail-closed: not what is tested)."""
    assert "denied request" in stderr and policy in stderr, stderr
    assert "resulted in error" not in stderr and "failed to evaluate" not in stderr.lower(), stderr
    for needle in needles:
        assert needle in stderr, stderr


def _assert_refused_by_either(stderr: str, gpu_needle: str, own_needle: str = "only the llmos operator changes") -> None:
    """A spec change of an llmos GPU Deployment by a tenant is refused by both the GPU policy and the
    deployments-are-the-operators policy; the API server reports one of them."""
    if "llmos-operator-gpu-only-through-llmos" in stderr:
        _assert_refused_by(stderr, "llmos-operator-gpu-only-through-llmos", gpu_needle, "use a ModelDeployment")
    else:
        _assert_refused_by(stderr, "llmos-operator-deployments-are-the-operators", own_needle)


# --- a. no GPU outside admission ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Pod", "Deployment", "Job"])
def test_tenant_gpu_pod_deployment_and_job_refused_in_each_of_three_namespaces(tenant_admin, tenant_namespaces, kind):
    for ns in tenant_namespaces:
        rc, err = _create(tenant_admin, ns, _workload(kind, f"mine-{kind.lower()}"))
        assert rc != 0
        _assert_refused_by(err, "llmos-operator-gpu-only-through-llmos", "use a ModelDeployment", GPU, "c0")


@pytest.mark.parametrize("kind", ["ReplicaSet", "StatefulSet", "DaemonSet", "CronJob"])
def test_other_gpu_workload_kinds_refused_too(tenant_admin, tenant_namespaces, kind):
    pod = _gpu_pod_spec()
    pod["initContainers"], pod["containers"] = pod["containers"], [_container("main", "registry.example/x")]
    rc, err = _create(tenant_admin, tenant_namespaces[1], _workload(kind, f"mine-{kind.lower()}", pod=pod))
    assert rc != 0
    _assert_refused_by(err, "llmos-operator-gpu-only-through-llmos", "c0")


def test_tenant_workloads_without_gpus_pass(cluster, tenant_admin, tenant_namespaces):
    """Control: the refusal is about GPUs, not RBAC."""
    cpu_only = _workload("Deployment", "cpu-only", pod={
        "securityContext": dict(RESTRICTED_POD),
        "containers": [_container("app", "registry.example/x", resources={"requests": {"cpu": "1"}})]})
    rc, err = _create(tenant_admin, tenant_namespaces[0], cpu_only)
    assert rc == 0, err



# --- b. llmos's Deployment is the operator's -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def llmos_deployment(cluster, tenant_admin, tenant_namespaces):
    """The tenant's ModelDeployment of 2 × 8 H100, admitted: the operator writes the Deployment (its identity, its
    labels); its ReplicaSet and pods are made by kube-controller-manager, which the GPU policy must let through."""
    ns = tenant_namespaces[0]
    model = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "m"},
             "spec": {"source": {"uri": "hf://org/m"}, "signature": {"policy": "Disabled"}}}
    served = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "served"},
              "spec": {"model": "m", "replicas": 2, "gpu": {"class": "h100", "count": 8}}}
    for obj in (model, served):
        rc, err = _create(tenant_admin, ns, obj)
        assert rc == 0, err
    core = client.CoreV1Api(cluster.api)
    wait_for(lambda: len(core.list_namespaced_pod(ns, label_selector="llmos.dev/model-deployment=served").items) == 2,
             timeout=60, message="the llmos Deployment's two GPU pods (created by kube-controller-manager)")
    return ns, "served"


def test_controllers_make_the_llmos_deployments_gpu_pods(cluster, llmos_deployment):
    ns, name = llmos_deployment
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(ns, label_selector=f"llmos.dev/model-deployment={name}")
    assert len(pods.items) == 2
    assert all(p.spec.containers[0].resources.limits[GPU] == "8" for p in pods.items)


def test_tenant_cannot_scale_or_extend_the_llmos_deployment(tenant_admin, llmos_deployment):
    ns, name = llmos_deployment
    out = tenant_admin.kubectl("scale", "-n", ns, f"deployment/{name}", "--replicas=4")
    assert out.returncode != 0
    _assert_refused_by(out.stderr, "llmos-operator-deployments-are-the-operators", "only the llmos operator changes",
                       f"kubectl scale modeldeployment/{name}")

    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "runtime", "image": "registry.example/cuda:12", "resources": {"limits": {GPU: "8"}}},
        {"name": "extra", "image": "registry.example/miner", "resources": {"limits": {GPU: "8"}}}]}}}}
    out = tenant_admin.kubectl("patch", "-n", ns, f"deployment/{name}", "--type=strategic", "-p", json.dumps(patch))
    assert out.returncode != 0
    _assert_refused_by_either(out.stderr, "container(s) runtime, extra")
    patch["spec"]["template"]["spec"]["containers"][1]["resources"] = {}  # a CPU-only sidecar: still refused
    out = tenant_admin.kubectl("patch", "-n", ns, f"deployment/{name}", "--type=strategic", "-p", json.dumps(patch))
    assert out.returncode != 0
    _assert_refused_by_either(out.stderr, "container(s) runtime")

    out = tenant_admin.kubectl("patch", "-n", ns, f"deployment/{name}", "--type=merge",
                               "-p", '{"spec": {"replicas": 3}}')
    assert out.returncode != 0
    _assert_refused_by_either(out.stderr, "container(s) runtime")

    out = tenant_admin.kubectl("label", "-n", ns, f"deployment/{name}", "app.kubernetes.io/managed-by-")
    assert out.returncode != 0
    _assert_refused_by_either(out.stderr, "container(s) runtime", "app.kubernetes.io/managed-by=llmos")

    # (The trust ConfigMaps are immutable as well; the adapters one is not, so the policy is what refuses here.)
    out = tenant_admin.kubectl("patch", "-n", ns, f"configmap/{name}-adapters", "--type=merge",
                               "-p", '{"data": {"adapters.json": "{\\"adapters\\": []}"}}')
    assert out.returncode != 0
    _assert_refused_by(out.stderr, "llmos-operator-configmaps-are-the-operators", "only the llmos operator changes")


def test_tenant_cannot_pull_a_gpu_pod_out_of_its_replicaset(cluster, tenant_admin, llmos_deployment):
    """A relabelled pod would leave its ReplicaSet and keep its GPUs while a replacement starts."""
    ns, name = llmos_deployment
    pod = client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector=f"llmos.dev/model-deployment={name}").items[0].metadata.name
    out = tenant_admin.kubectl("label", "-n", ns, f"pod/{pod}", "--overwrite", "llmos.dev/model-deployment=stolen")
    assert out.returncode != 0
    _assert_refused_by(out.stderr, "llmos-operator-gpu-only-through-llmos", "use a ModelDeployment")
    # Annotations stay free (the runtime's adapter report; kubectl annotate by the tenant).
    out = tenant_admin.kubectl("annotate", "-n", ns, f"pod/{pod}", "note=hello")
    assert out.returncode == 0, out.stderr


def test_tenant_cannot_orphan_gpu_pods(cluster, tenant_admin, tenant_namespaces, llmos_deployment):
    """Deleting with --cascade=orphan would keep the GPU pods running while the ledger frees their reservation."""
    ns, name = llmos_deployment
    rs = client.AppsV1Api(cluster.api).list_namespaced_replica_set(
        ns, label_selector=f"llmos.dev/model-deployment={name}").items[0].metadata.name
    for target in (f"deployment/{name}", f"replicaset/{rs}"):
        out = tenant_admin.kubectl("delete", "-n", ns, target, "--cascade=orphan")
        assert out.returncode != 0
        _assert_refused_by(out.stderr, "llmos-operator-no-orphaned-gpus", "without --cascade=orphan")
    rc, err = _create(tenant_admin, ns, _mdep("orphan-me", []))
    assert rc == 0, err
    out = tenant_admin.kubectl("delete", "-n", ns, "modeldeployment/orphan-me", "--cascade=orphan")
    assert out.returncode != 0
    _assert_refused_by(out.stderr, "llmos-operator-no-orphaned-gpus")
    out = tenant_admin.kubectl("delete", "-n", ns, "modeldeployment/orphan-me")
    assert out.returncode == 0, out.stderr


def test_the_operator_may_change_its_deployment(operator_identity, llmos_deployment):
    """The operator writes replicas through the Deployment itself (server-side apply), never `deployments/scale`
    (its RBAC has no such right)."""
    ns, name = llmos_deployment
    apps = client.AppsV1Api(operator_identity.api)
    apps.patch_namespaced_deployment(name, ns, {"spec": {"replicas": 1},
                                                "metadata": {"annotations": {"llmos.dev/note": "operator"}}})
    apps.patch_namespaced_deployment(name, ns, {"spec": {"replicas": 2}})


# --- c. engine flags -----------------------------------------------------------------------------------------------

def _mdep(name: str, args: list[str]) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": "m", "replicas": 1, "gpu": {"class": "h100", "count": 1}, "engine": {"extraArgs": args}}}


@pytest.mark.parametrize("args,index,flag", [
    (["--trust-remote-code"], 0, "--trust-remote-code"),
    (["--max-num-seqs", "8", "--tokenizer", "/x"], 2, "--tokenizer"),
    (["--lora-modules", "a=/x"], 0, "--lora-modules"),
    (["--tokenizer=/x"], 0, "--tokenizer"),
    (["--chat_template", "/x"], 0, "--chat-template"),
    (["--seed", "1", "--speculative-config", "{}"], 2, "--speculative-config"),
])
def test_disallowed_engine_flags_refused_with_the_field_path(tenant_admin, tenant_namespaces, args, index, flag):
    rc, err = _create(tenant_admin, tenant_namespaces[0], _mdep(f"bad-{uuid.uuid4().hex[:5]}", args))
    assert rc != 0
    _assert_refused_by(err, "llmos-operator-engine-flags", f"spec.engine.extraArgs[{index}]", flag)


@pytest.mark.parametrize("args", [
    ["--max-num-seqs", "8"], ["--max_num_seqs", "8"], ["--max_num_seqs=8", "--enforce-eager"], ["--seed", "-1"],
    [],
])
def test_allowed_engine_flags_pass(tenant_admin, tenant_namespaces, args):
    rc, err = _create(tenant_admin, tenant_namespaces[0], _mdep(f"ok-{uuid.uuid4().hex[:5]}", args))
    assert rc == 0, err


def test_many_refused_flags_give_one_bounded_message(tenant_admin, tenant_namespaces):
    args = ["--max-num-seqs", "8"] + [f"--bad-{i}" for i in range(62)]
    rc, err = _create(tenant_admin, tenant_namespaces[0], _mdep("many", args))
    assert rc != 0
    _assert_refused_by(err, "llmos-operator-engine-flags", "spec.engine.extraArgs[2]", "--bad-0",
                       "and 61 more refused arguments")


def test_tenant_cannot_label_its_namespace_to_allow_remote_code(tenant_admin, tenant_namespaces):
    out = tenant_admin.kubectl("label", "namespace", tenant_namespaces[0], "llmos.dev/allow-remote-code=true")
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr


def test_remote_code_only_where_the_platform_allows_it_and_updates_are_judged(tenant_admin, tenant_namespaces):
    rc, err = _create(tenant_admin, tenant_namespaces[2], _mdep("remote", ["--trust-remote-code"]))
    assert rc == 0, err
    rc, err = _create(tenant_admin, tenant_namespaces[1], _mdep("plain", ["--seed", "1"]))
    assert rc == 0, err
    out = tenant_admin.kubectl("patch", "-n", tenant_namespaces[1], "modeldeployment/plain", "--type=merge",
                               "-p", json.dumps({"spec": {"engine": {"extraArgs": ["--seed", "1", "--config", "/x"]}}}))
    assert out.returncode != 0
    _assert_refused_by(out.stderr, "llmos-operator-engine-flags", "spec.engine.extraArgs[2]", "--config")


# --- d. the runtime's token ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime_pods(cluster, platform, tenant_namespaces, operator_identity):
    """Two pods running as llmos-runtime. The ServiceAccount and its RoleBinding to the chart's runtime ClusterRole
    are written with the operator's identity, as the operator writes them: its `bind` right on exactly that role
    is what lets it grant pod get/patch it does not hold."""
    ns = tenant_namespaces[1]
    core = client.CoreV1Api(cluster.api)
    binding = client.RbacAuthorizationV1Api(cluster.api).read_namespaced_role_binding("llmos-runtime-pods", ns)
    assert binding.role_ref.name == f"{platform.fullname()}-runtime"  # bound by the operator itself
    names = ["runtime-a", "runtime-b"]
    for name in names:
        core.create_namespaced_pod(ns, {"metadata": {"name": name, "labels": {"app": "runtime", **MANAGED}},
                                        "spec": {"serviceAccountName": "llmos-runtime",
                                                 "securityContext": dict(RESTRICTED_POD),
                                                 "containers": [_container("runtime", "registry.example/rt")]}})
    return ns, names


@pytest.fixture(scope="module")
def token_of_pod_a(cluster, runtime_pods, tmp_path_factory) -> Credentials:
    ns, (a, _) = runtime_pods
    token = pod_bound_token(cluster.name, ns, a)
    creds = credentials_for_token(cluster.name, token, tmp_path_factory.mktemp("rt") / "kubeconfig",
                                  f"system:serviceaccount:{ns}:llmos-runtime")
    yield creds
    creds.close()


def test_runtime_token_annotates_only_its_own_pod(token_of_pod_a, runtime_pods):
    ns, (a, b) = runtime_pods
    core = client.CoreV1Api(token_of_pod_a.api)
    report = {"metadata": {"annotations": {"llmos.dev/adapters": '{"loaded": ["x"]}'}}}
    core.patch_namespaced_pod(a, ns, report)
    assert core.read_namespaced_pod(a, ns).metadata.annotations["llmos.dev/adapters"] == '{"loaded": ["x"]}'

    refused = [
        (b, report, "bound to " + a),
        (b, {"spec": {"containers": [{"name": "runtime", "image": "registry.example/evil"}]}}, "bound to " + a),
        (b, {"metadata": {"labels": {"app": "stolen"}}}, "bound to " + a),
        (a, {"metadata": {"labels": {"app": "stolen"}}}, "only the llmos.dev/adapters annotation"),
        (a, {"metadata": {"annotations": {"other": "x"}}}, "only the llmos.dev/adapters annotation"),
        (a, {"spec": {"containers": [{"name": "runtime", "image": "registry.example/evil"}]}},
         "only the llmos.dev/adapters annotation"),
    ]
    for pod, patch, needle in refused:
        with pytest.raises(client.ApiException) as exc:
            core.patch_namespaced_pod(pod, ns, patch)
        assert exc.value.status in (403, 422), exc.value.body
        assert "llmos-operator-runtime-own-pod-only" in exc.value.body and needle in exc.value.body, exc.value.body


def test_runtime_token_bound_to_no_pod_changes_nothing(cluster, platform, runtime_pods, tmp_path):
    ns, (a, _) = runtime_pods
    creds = credentials_for_token(cluster.name, platform.token(cluster.name, "llmos-runtime", ns, duration="10m"),
                                  tmp_path / "kubeconfig", "runtime-unbound")
    try:
        with pytest.raises(client.ApiException) as exc:
            client.CoreV1Api(creds.api).patch_namespaced_pod(
                a, ns, {"metadata": {"annotations": {"llmos.dev/adapters": "{}"}}})
        assert "bound to no pod" in exc.value.body
    finally:
        creds.close()


# --- RBAC: secrets, the operator's rights, tenant roles -------------------------------------------------------------

def test_tenant_cannot_read_secrets_of_the_operator(tenant_admin, platform):
    for verb in (["get", "secret", "anything"], ["get", "secrets"]):
        out = tenant_admin.kubectl(*verb, "-n", platform.SYSTEM_NAMESPACE)
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr


def _can_i(cluster, user: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", "--as", user, *args, check=False)
    assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
    return out.stdout.strip() == "yes"


def test_operator_rights_are_what_it_uses(cluster, platform, tenant_namespaces, operator_identity):
    op = platform.operator_username()
    ns = tenant_namespaces[0]
    assert _can_i(cluster, op, "get", "secrets", "-n", platform.SYSTEM_NAMESPACE)
    assert _can_i(cluster, op, "watch", "secrets", "-n", platform.SYSTEM_NAMESPACE)  # metadata: keys re-verified
    for where in (["-n", "default"], ["-n", "kube-system"], ["-n", ns], ["--all-namespaces"]):
        assert not _can_i(cluster, op, "get", "secrets", *where)
        assert not _can_i(cluster, op, "list", "secrets", *where)
    assert not _can_i(cluster, op, "patch", "pods", "-n", ns)
    assert not _can_i(cluster, op, "create", "roles", "-n", ns)
    assert not _can_i(cluster, op, "escalate", "clusterroles")
    assert _can_i(cluster, op, "bind", f"clusterroles/{platform.fullname()}-runtime")
    assert not _can_i(cluster, op, "bind", "clusterroles/admin")
    assert not _can_i(cluster, op, "bind", "clusterroles/cluster-admin")
    with pytest.raises(client.ApiException) as exc:  # and for real: no RoleBinding to `admin`
        client.RbacAuthorizationV1Api(operator_identity.api).create_namespaced_role_binding(ns, {
            "metadata": {"name": "grab"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                                      "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]})
    assert exc.value.status == 403
    assert not _can_i(cluster, op, "delete", "namespaces")
    assert not _can_i(cluster, op, "create", "pods", "-n", ns)
    for verb, resource in (("create", "deployments.apps"), ("delete", "deployments.apps"),
                           ("patch", "resourcequotas"), ("patch", "networkpolicies.networking.k8s.io"),
                           ("create", "rolebindings")):
        assert _can_i(cluster, op, verb, resource, "-n", ns), (verb, resource)
    assert _can_i(cluster, op, "patch", "modeldeployments.llmos.dev", "--subresource=status", "-n", ns)
    assert not _can_i(cluster, op, "patch", "modeldeployments.llmos.dev", "-n", ns)


def test_tenant_roles_admin_edits_viewer_reads_nobody_writes_tenants(cluster, tenant_admin, tenant_viewer,
                                                                    tenant_namespaces):
    ns = tenant_namespaces[0]
    model = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "m"},
             "spec": {"source": {"uri": "hf://org/tiny"}, "signature": {"policy": "Disabled"}}}
    rc, err = _create(tenant_admin, ns, model)
    assert rc == 0 or "AlreadyExists" in err, err
    rc, err = _create(tenant_admin, ns, _mdep("mine", ["--seed", "1"]))
    assert rc == 0, err
    for who in (tenant_admin, tenant_viewer):
        out = who.kubectl("get", "models,modeldeployments", "-n", ns, "-o", "name")
        assert out.returncode == 0 and "modeldeployment.llmos.dev/mine" in out.stdout, out.stderr
    assert _can_i(cluster, tenant_admin.username, "patch", "modeldeployments.llmos.dev/scale", "-n", ns)
    assert _can_i(cluster, tenant_admin.username, "delete", "models.llmos.dev", "-n", ns)
    assert not _can_i(cluster, tenant_admin.username, "get", "models.llmos.dev", "-n", "default")

    rc, err = _create(tenant_viewer, ns, _mdep("viewer", []))
    assert rc != 0 and "forbidden" in err.lower(), err
    out = tenant_viewer.kubectl("delete", "-n", ns, "modeldeployment/mine")
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr

    tenant = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": "grab"},
              "spec": {"namespaces": ["kube-system"], "quota": {"gpus": {"h100": 64}}}}
    for who in (tenant_admin, tenant_viewer):
        rc, err = _create(who, ns, tenant)
        assert rc != 0 and "forbidden" in err.lower(), err
        for verb in ("get", "list", "create", "patch", "delete"):
            assert not _can_i(cluster, who.username, verb, "tenants.llmos.dev")
    # The built-in `edit` role gets the same rights on llmos kinds as `admin` (aggregation).
    rules = client.RbacAuthorizationV1Api(cluster.api).read_cluster_role("edit").rules
    assert any("modeldeployments/scale" in (r.resources or []) for r in rules)
    assert not any("tenants" in (r.resources or []) for r in rules)


def test_policies_compile_without_errors(cluster):
    """The API server compiled every expression (a type or cost error would show in status.typeChecking)."""
    out = json.loads(cluster.kubectl("get", "validatingadmissionpolicies", "-o", "json").stdout)
    ours = [p for p in out["items"] if p["metadata"]["name"].startswith("llmos-operator-")]
    assert len(ours) == 6
    for policy in ours:
        warnings = (policy.get("status", {}).get("typeChecking") or {}).get("expressionWarnings") or []
        assert not [w for w in warnings if "cost" in w.get("warning", "").lower()], warnings


# --- last, as it releases a namespace the tests above use -----------------------------------------------------------

def test_a_released_namespace_still_refuses_gpus(cluster, tenant_admin, tenant_namespaces):
    """The remote-code tenant's Tenant is deleted: the operator releases its namespace (llmos.dev/released), and
    the tenant's users, still admins there, get no GPU."""
    core = client.CoreV1Api(cluster.api)
    ns = tenant_namespaces[2]
    tenant = core.read_namespace(ns).metadata.labels["llmos.dev/tenant"]
    client.CustomObjectsApi(cluster.api).delete_cluster_custom_object(GROUP, VERSION, "tenants", tenant)
    wait_for(lambda: (core.read_namespace(ns).metadata.labels or {}).get("llmos.dev/released") == tenant,
             timeout=30, message="the namespace released")
    rc, err = _create(tenant_admin, ns, _workload("Pod", "after-release"))
    assert rc != 0
    _assert_refused_by(err, "llmos-operator-gpu-only-through-llmos", "use a ModelDeployment")
