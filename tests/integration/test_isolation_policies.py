"""What the API server itself refuses a hostile tenant, with the Helm chart's admission policies and RBAC applied
(llmos_operator.dev.platform): GPUs only through admission for every kind that carries pod specs (policy
gpu-only-through-llmos), engine flags, the runtime's token, RBAC. The hostile side always uses a tenant's credentials —
a ServiceAccount bound to the built-in `admin` ClusterRole in the tenant's namespaces only — or a token bound to a
runtime pod; never the admin's. llmos's objects being the operator's: test_isolation_children.py; the tenancy baseline
(pods, Services, NetworkPolicies, quota, exec): test_tenancy_baseline.py.
"""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client

from tests.support.hostile import (  # noqa: F401 — fixtures
    GANG_CRD,
    GPU,
    GROUP,
    MANAGED,
    VERSION,
    assert_refused_by,
    container,
    create,
    gpu_pod_spec,
    model_deployment,
    operator_identity,
    platform,
    pod_spec,
    serve,
    tenant_admin,
    tenant_namespaces,
    workload,
)
from tests.support.tenant import Credentials, credentials_for_token, make_user, pod_bound_token
from tests.support.waiting import wait_for

GPU_POLICY = "llmos-operator-gpu-only-through-llmos"


@pytest.fixture(scope="module")
def tenant_viewer(cluster, tenant_namespaces, tmp_path_factory) -> Credentials:
    home = tenant_namespaces[0].rsplit("-", 1)[0] + "-home"
    creds = make_user(cluster.api, cluster.name, home, "victor", view_of=tenant_namespaces,
                      workdir=tmp_path_factory.mktemp("creds"))
    yield creds
    creds.close()


@pytest.fixture(scope="module")
def gang_crd(cluster, tenant_admin, tenant_namespaces):
    """A workload kind of a CRD, listed in isolation.extraGpuWorkloads by the session's install; namespace admins
    may write it (a ClusterRole aggregated into `admin`, as such operators ship)."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "test-gangs-edit", "labels": {"rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
            "rules": [{"apiGroups": ["test.llmos.dev"], "resources": ["gangs"], "verbs": ["*"]}]}
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                         "items": [GANG_CRD, role]}))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/gangs.test.llmos.dev")
    wait_for(lambda: cluster.kubectl("auth", "can-i", "create", "gangs.test.llmos.dev", "--as", tenant_admin.username,
                                     "-n", tenant_namespaces[1], check=False).stdout.strip() == "yes",
             timeout=30, message="the aggregated role")
    return "Gang"


# --- a. no GPU outside admission ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Pod", "Deployment", "Job"])
def test_tenant_gpu_pod_deployment_and_job_refused_in_each_of_three_namespaces(tenant_admin, tenant_namespaces, kind):
    for ns in tenant_namespaces:
        rc, err = create(tenant_admin, ns, workload(kind, f"mine-{kind.lower()}"))
        assert rc != 0
        assert_refused_by(err, GPU_POLICY, "use a ModelDeployment", GPU, "c0")


@pytest.mark.parametrize("kind", ["ReplicaSet", "StatefulSet", "DaemonSet", "CronJob", "ReplicationController"])
def test_other_gpu_workload_kinds_refused_too(tenant_admin, tenant_namespaces, kind):
    """ReplicationControllers were accepted with GPUs before (issue 18, item 8)."""
    pod = gpu_pod_spec()
    pod["initContainers"], pod["containers"] = pod["containers"], [container("main")]
    rc, err = create(tenant_admin, tenant_namespaces[1], workload(kind, f"mine-{kind.lower()}", pod=pod))
    assert rc != 0
    assert_refused_by(err, GPU_POLICY, "c0")


def test_an_extra_workload_kind_is_judged_in_every_pod_template(cluster, tenant_admin, tenant_namespaces, gang_crd):
    """A kind the chart knows only from isolation.extraGpuWorkloads (its pod specs by a CEL expression): GPUs in its
    second worker template are found; without GPUs it passes."""
    ns = tenant_namespaces[1]
    rc, err = create(tenant_admin, ns, workload(gang_crd, "gang"))
    assert rc != 0
    assert_refused_by(err, GPU_POLICY, "asks for a GPU", "c0", "use a ModelDeployment")
    rc, err = create(tenant_admin, ns, workload(gang_crd, "gang", pod=pod_spec()))
    assert rc == 0, err
    out = tenant_admin.kubectl("patch", "-n", ns, "gang/gang", "--type=merge", "-p", json.dumps(
        {"spec": {"leader": {"template": {"spec": gpu_pod_spec()}}}}))
    assert out.returncode != 0
    assert_refused_by(out.stderr, GPU_POLICY, "c0")


def test_tenant_workloads_without_gpus_pass(cluster, tenant_admin, tenant_namespaces):
    """Control: the refusal is about GPUs, not RBAC."""
    for kind in ("Deployment", "ReplicationController"):
        cpu_only = workload(kind, f"cpu-only-{kind.lower()}", pod=pod_spec(
            container("app", resources={"requests": {"cpu": "100m"}})))
        rc, err = create(tenant_admin, tenant_namespaces[0], cpu_only)
        assert rc == 0, err


@pytest.fixture(scope="module")
def served(cluster, tenant_admin, tenant_namespaces):
    ns = tenant_namespaces[0]
    serve(cluster, tenant_admin, ns, "served")
    return ns, "served"


@pytest.mark.parametrize("target", ["deployment", "replicaset"])
def test_scale_subresources_of_llmos_workloads_are_the_operators(cluster, tenant_admin, served, target):
    """`kubectl scale` (the */scale subresources: a Scale shows no pod spec) of llmos's Deployment or ReplicaSet would
    add GPU pods outside admission; a HorizontalPodAutoscaler acts through the same door."""
    ns, name = served
    if target == "replicaset":
        target_name = client.AppsV1Api(cluster.api).list_namespaced_replica_set(
            ns, label_selector=f"llmos.dev/model-deployment={name}").items[0].metadata.name
    else:
        target_name = name
    out = tenant_admin.kubectl("scale", "-n", ns, f"{target}/{target_name}", "--replicas=4")
    assert out.returncode != 0
    assert_refused_by(out.stderr, GPU_POLICY, f"{target}s/{target_name} runs the GPU pods of ModelDeployment {name}",
                      f"kubectl scale modeldeployment/{name}")


def test_scale_of_a_tenants_own_workloads_passes(tenant_admin, tenant_namespaces):
    ns = tenant_namespaces[0]
    for kind in ("Deployment", "ReplicationController"):
        name = f"scaled-{kind.lower()}"
        rc, err = create(tenant_admin, ns, workload(kind, name, replicas=0, pod=pod_spec()))
        assert rc == 0, err
        out = tenant_admin.kubectl("scale", "-n", ns, f"{kind.lower()}/{name}", "--replicas=2")
        assert out.returncode == 0, out.stderr


# --- c. engine flags -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,index,flag", [
    (["--trust-remote-code"], 0, "--trust-remote-code"),
    (["--max-num-seqs", "8", "--tokenizer", "/x"], 2, "--tokenizer"),
    (["--lora-modules", "a=/x"], 0, "--lora-modules"),
    (["--tokenizer=/x"], 0, "--tokenizer"),
    (["--chat_template", "/x"], 0, "--chat-template"),
    (["--seed", "1", "--speculative-config", "{}"], 2, "--speculative-config"),
])
def test_disallowed_engine_flags_refused_with_the_field_path(tenant_admin, tenant_namespaces, args, index, flag):
    rc, err = create(tenant_admin, tenant_namespaces[0], model_deployment(f"bad-{uuid.uuid4().hex[:5]}", args))
    assert rc != 0
    assert_refused_by(err, "llmos-operator-engine-flags", f"spec.engine.extraArgs[{index}]", flag)


@pytest.mark.parametrize("args", [
    ["--max-num-seqs", "8"], ["--max_num_seqs", "8"], ["--max_num_seqs=8", "--enforce-eager"], ["--seed", "-1"],
    [],
])
def test_allowed_engine_flags_pass(tenant_admin, tenant_namespaces, args):
    rc, err = create(tenant_admin, tenant_namespaces[0], model_deployment(f"ok-{uuid.uuid4().hex[:5]}", args))
    assert rc == 0, err


def test_many_refused_flags_give_one_bounded_message(tenant_admin, tenant_namespaces):
    args = ["--max-num-seqs", "8"] + [f"--bad-{i}" for i in range(62)]
    rc, err = create(tenant_admin, tenant_namespaces[0], model_deployment("many", args))
    assert rc != 0
    assert_refused_by(err, "llmos-operator-engine-flags", "spec.engine.extraArgs[2]", "--bad-0",
                       "and 61 more refused arguments")


def test_tenant_cannot_label_its_namespace_to_allow_remote_code(tenant_admin, tenant_namespaces):
    out = tenant_admin.kubectl("label", "namespace", tenant_namespaces[0], "llmos.dev/allow-remote-code=true")
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr


def test_remote_code_only_where_the_platform_allows_it_and_updates_are_judged(tenant_admin, tenant_namespaces):
    rc, err = create(tenant_admin, tenant_namespaces[2], model_deployment("remote", ["--trust-remote-code"]))
    assert rc == 0, err
    rc, err = create(tenant_admin, tenant_namespaces[1], model_deployment("plain", ["--seed", "1"]))
    assert rc == 0, err
    out = tenant_admin.kubectl("patch", "-n", tenant_namespaces[1], "modeldeployment/plain", "--type=merge",
                               "-p", json.dumps({"spec": {"engine": {"extraArgs": ["--seed", "1", "--config", "/x"]}}}))
    assert out.returncode != 0
    assert_refused_by(out.stderr, "llmos-operator-engine-flags", "spec.engine.extraArgs[2]", "--config")


# --- d. the runtime's token ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime_pods(cluster, platform, tenant_namespaces, operator_identity):
    """Two pods running as llmos-runtime, made by the platform admin (a tenant may not: the children policy). The
    ServiceAccount and its RoleBinding to the chart's runtime ClusterRole are written with the operator's identity,
    as the operator writes them: its `bind` right on exactly that role is what lets it grant pod get/patch it does
    not hold."""
    ns = tenant_namespaces[1]
    core = client.CoreV1Api(cluster.api)
    binding = client.RbacAuthorizationV1Api(cluster.api).read_namespaced_role_binding("llmos-runtime-pods", ns)
    assert binding.role_ref.name == f"{platform.fullname()}-runtime"  # bound by the operator itself
    names = ["runtime-a", "runtime-b"]
    for name in names:
        core.create_namespaced_pod(ns, {"metadata": {"name": name, "labels": {"app": "runtime", **MANAGED}},
                                        "spec": pod_spec(container("runtime", "registry.example/rt"),
                                                         serviceAccountName="llmos-runtime")})
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
                           ("create", "rolebindings"), ("patch", "limitranges"), ("delete", "limitranges")):
        assert _can_i(cluster, op, verb, resource, "-n", ns), (verb, resource)
    assert _can_i(cluster, op, "patch", "modeldeployments.llmos.dev", "--subresource=status", "-n", ns)
    assert not _can_i(cluster, op, "patch", "modeldeployments.llmos.dev", "-n", ns)


def test_tenant_roles_admin_edits_viewer_reads_nobody_writes_tenants(cluster, tenant_admin, tenant_viewer,
                                                                    tenant_namespaces):
    ns = tenant_namespaces[0]
    model = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "m"},
             "spec": {"source": {"uri": "hf://org/tiny"}, "signature": {"policy": "Disabled"}}}
    rc, err = create(tenant_admin, ns, model)
    assert rc == 0 or "AlreadyExists" in err, err
    rc, err = create(tenant_admin, ns, model_deployment("mine", ["--seed", "1"]))
    assert rc == 0, err
    for who in (tenant_admin, tenant_viewer):
        out = who.kubectl("get", "models,modeldeployments", "-n", ns, "-o", "name")
        assert out.returncode == 0 and "modeldeployment.llmos.dev/mine" in out.stdout, out.stderr
    assert _can_i(cluster, tenant_admin.username, "patch", "modeldeployments.llmos.dev/scale", "-n", ns)
    assert _can_i(cluster, tenant_admin.username, "delete", "models.llmos.dev", "-n", ns)
    assert not _can_i(cluster, tenant_admin.username, "get", "models.llmos.dev", "-n", "default")

    rc, err = create(tenant_viewer, ns, model_deployment("viewer", []))
    assert rc != 0 and "forbidden" in err.lower(), err
    out = tenant_viewer.kubectl("delete", "-n", ns, "modeldeployment/mine")
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr

    tenant = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": "grab"},
              "spec": {"namespaces": ["kube-system"], "quota": {"gpus": {"h100": 64}}}}
    for who in (tenant_admin, tenant_viewer):
        rc, err = create(who, ns, tenant)
        assert rc != 0 and "forbidden" in err.lower(), err
        for verb in ("get", "list", "create", "patch", "delete"):
            assert not _can_i(cluster, who.username, verb, "tenants.llmos.dev")
    # The built-in `edit` role gets the same rights on llmos kinds as `admin` (aggregation).
    rules = client.RbacAuthorizationV1Api(cluster.api).read_cluster_role("edit").rules
    assert any("modeldeployments/scale" in (r.resources or []) for r in rules)
    assert not any("tenants" in (r.resources or []) for r in rules)


POLICIES = {"gpu-only-through-llmos", "no-orphaned-gpus", "engine-flags", "runtime-own-pod-only",
            "children-are-the-operators", "tenant-pods", "tenant-services", "tenant-network-policies", "no-exec"}


def test_policies_compile_without_errors_or_warnings(cluster):
    """The API server type-checked every expression against every kind it matches: no type or cost warning (an
    expression that does not type-check against a kind still runs, but may fail at run time — fail closed)."""
    def ours():
        out = json.loads(cluster.kubectl("get", "validatingadmissionpolicies", "-o", "json").stdout)
        found = [p for p in out["items"] if p["metadata"]["name"].startswith("llmos-operator-")]
        checked = all("typeChecking" in p.get("status", {}) and p["status"].get("observedGeneration") ==
                      p["metadata"]["generation"] for p in found)
        return checked and found

    policies = wait_for(ours, timeout=30, message="every policy type-checked")
    assert {p["metadata"]["name"].removeprefix("llmos-operator-") for p in policies} == POLICIES
    for policy in policies:
        assert not policy["status"]["typeChecking"].get("expressionWarnings"), policy["status"]


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
    rc, err = create(tenant_admin, ns, workload("Pod", "after-release"))
    assert rc != 0
    assert_refused_by(err, "llmos-operator-gpu-only-through-llmos", "use a ModelDeployment")
