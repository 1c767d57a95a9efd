"""llmos's objects are the platform's (issue 18, items 1, 2 and 9): in tenant and released namespaces the tenant — with
its own token, `admin` there — cannot create, change or delete what carries llmos's labels, the fixed names of a
Tenant's children or the runtime's identity (policy children-are-the-operators), nor orphan GPU pods (policy
no-orphaned-gpus); while the operator, kube-controller-manager and platform admins still do their work, and the
tenant's own objects pass. A ModelDeployment child's name without llmos's labels is the operator's to refuse
(ChildConflict): a policy cannot look the ModelDeployment up.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.support.hostile import (  # noqa: F401 — fixtures
    GPU,
    GROUP,
    MANAGED,
    VERSION,
    assert_refused_by,
    container,
    create,
    model_deployment,
    operator_identity,
    platform,
    pod_spec,
    serve,
    tenant_admin,
    tenant_namespaces,
    workload,
)
from tests.support.waiting import wait_for

CHILDREN = "llmos-operator-children-are-the-operators"
GPU_POLICY = "llmos-operator-gpu-only-through-llmos"
ORPHANS = "llmos-operator-no-orphaned-gpus"


def assert_refused_by_one_of(stderr: str, *policies: tuple[str, ...]) -> None:
    """Several policies refuse this request; the API server names the first that did. Each entry: (policy, needles)."""
    for policy, *needles in policies:
        if policy in stderr:
            assert_refused_by(stderr, policy, *needles)
            return
    raise AssertionError(f"refused by none of {[p[0] for p in policies]}: {stderr}")


@pytest.fixture(scope="module")
def served(cluster, tenant_admin, tenant_namespaces):
    """The tenant's ModelDeployment of 2 × 8 H100, admitted: the operator writes the Deployment, Service, ConfigMaps
    and PDB; kube-controller-manager its ReplicaSet and pods — which the policies must let through."""
    ns = tenant_namespaces[0]
    serve(cluster, tenant_admin, ns, "served")
    return ns, "served"


def _pod_of(cluster, ns: str, name: str) -> str:
    return client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector=f"llmos.dev/model-deployment={name}").items[0].metadata.name


def _replica_set_of(cluster, ns: str, name: str) -> str:
    return client.AppsV1Api(cluster.api).list_namespaced_replica_set(
        ns, label_selector=f"llmos.dev/model-deployment={name}").items[0].metadata.name


def test_controllers_make_the_llmos_deployments_gpu_pods(cluster, served):
    ns, name = served
    pods = client.CoreV1Api(cluster.api).list_namespaced_pod(ns, label_selector=f"llmos.dev/model-deployment={name}")
    assert len(pods.items) == 2
    assert all(p.spec.containers[0].resources.limits[GPU] == "8" for p in pods.items)


def test_tenant_cannot_scale_extend_or_relabel_the_llmos_deployment(tenant_admin, served):
    ns, name = served
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "runtime", "image": "registry.example/cuda:12", "resources": {"limits": {GPU: "8"}}},
        {"name": "extra", "image": "registry.example/miner", "resources": {"limits": {GPU: "8"}}}]}}}}
    hint = f"change ModelDeployment {name} instead"
    for args in (["--type=strategic", "-p", json.dumps(patch)], ["--type=merge", "-p", '{"spec": {"replicas": 3}}']):
        out = tenant_admin.kubectl("patch", "-n", ns, f"deployment/{name}", *args)
        assert out.returncode != 0
        assert_refused_by_one_of(out.stderr, (CHILDREN, "only the llmos operator may change it", hint),
                                 (GPU_POLICY, "container(s) runtime", "use a ModelDeployment"))
    out = tenant_admin.kubectl("label", "-n", ns, f"deployment/{name}", "app.kubernetes.io/managed-by-")
    assert out.returncode != 0
    # Which of llmos's labels the message names depends on which one is left on the changed object.
    assert_refused_by_one_of(out.stderr, (CHILDREN, "is llmos's (its label"), (GPU_POLICY,))
    # The adapters ConfigMap (the trust ones are immutable as well).
    out = tenant_admin.kubectl("patch", "-n", ns, f"configmap/{name}-adapters", "--type=merge",
                               "-p", '{"data": {"adapters.json": "{\\"adapters\\": []}"}}')
    assert out.returncode != 0
    assert_refused_by(out.stderr, CHILDREN, f"ConfigMap {name}-adapters", hint)


def test_tenant_cannot_touch_llmos_pods(cluster, tenant_admin, served):
    """A relabelled pod would leave its ReplicaSet and keep its GPUs while a replacement starts; an annotation could
    forge the runtime's adapter report; a deleted pod is the ModelDeployment's to restart."""
    ns, name = served
    pod = _pod_of(cluster, ns, name)
    out = tenant_admin.kubectl("label", "-n", ns, f"pod/{pod}", "--overwrite", "llmos.dev/model-deployment=stolen")
    assert out.returncode != 0
    assert_refused_by_one_of(out.stderr, (CHILDREN, "is llmos's (its label"), (GPU_POLICY,))
    out = tenant_admin.kubectl("annotate", "-n", ns, f"pod/{pod}", "llmos.dev/adapters={\"loaded\": [\"forged\"]}")
    assert out.returncode != 0
    assert_refused_by(out.stderr, CHILDREN, f"Pod {pod}", "only the llmos operator may change it")
    out = tenant_admin.kubectl("delete", "-n", ns, f"pod/{pod}", "--wait=false")
    assert out.returncode != 0
    assert_refused_by(out.stderr, CHILDREN, "only the llmos operator may delete it", f"ModelDeployment {name}")


@pytest.mark.parametrize("target", ["service", "configmap", "poddisruptionbudget", "deployment", "replicaset"])
def test_tenant_cannot_delete_llmos_children(cluster, tenant_admin, served, target):
    ns, name = served
    object_name = {"configmap": f"{name}-adapters", "replicaset": _replica_set_of(cluster, ns, name)}.get(target, name)
    out = tenant_admin.kubectl("delete", "-n", ns, f"{target}/{object_name}", "--wait=false")
    assert out.returncode != 0
    assert_refused_by(out.stderr, CHILDREN, "only the llmos operator may delete it")


def test_the_orphan_finalizer_attack_is_refused(cluster, tenant_admin, served):
    """Issue 18, item 1: the tenant wrote `finalizers: [orphan]` onto llmos's Deployment and deleted the
    ModelDeployment; the garbage collector orphaned the ReplicaSet and its 4-GPU pod kept running outside the ledger.
    Refused on the Deployment and ReplicaSet (they are the operator's), on the ModelDeployment (no-orphaned-gpus),
    and so is a delete with --cascade=orphan."""
    ns, name = served
    finalizer = json.dumps({"metadata": {"finalizers": ["orphan"]}})
    for target in (f"deployment/{name}", f"replicaset/{_replica_set_of(cluster, ns, name)}"):
        out = tenant_admin.kubectl("patch", "-n", ns, target, "--type=merge", "-p", finalizer)
        assert out.returncode != 0
        assert_refused_by(out.stderr, CHILDREN, "only the llmos operator may change it")
        out = tenant_admin.kubectl("delete", "-n", ns, target, "--cascade=orphan", "--wait=false")
        assert out.returncode != 0
        assert_refused_by_one_of(out.stderr, (ORPHANS, "without --cascade=orphan"), (CHILDREN,))
    out = tenant_admin.kubectl("patch", "-n", ns, f"modeldeployment/{name}", "--type=merge", "-p", finalizer)
    assert out.returncode != 0
    assert_refused_by(out.stderr, ORPHANS, f"the finalizer orphan on ModelDeployment {name}", "metadata.finalizers")
    born_orphaning = model_deployment("orphan-me")
    born_orphaning["metadata"]["finalizers"] = ["orphan"]
    rc, err = create(tenant_admin, ns, born_orphaning)
    assert rc != 0
    assert_refused_by(err, ORPHANS, "the finalizer orphan")
    rc, err = create(tenant_admin, ns, model_deployment("orphan-me"))
    assert rc == 0, err
    out = tenant_admin.kubectl("delete", "-n", ns, "modeldeployment/orphan-me", "--cascade=orphan")
    assert out.returncode != 0
    assert_refused_by(out.stderr, ORPHANS, "without --cascade=orphan")
    out = tenant_admin.kubectl("delete", "-n", ns, "modeldeployment/orphan-me")
    assert out.returncode == 0, out.stderr


def test_a_deployment_planted_with_llmos_labels_is_refused(tenant_admin, tenant_namespaces):
    """Issue 18, item 2: the tenant made a Deployment `chat` with llmos's labels (no GPU, an init container, a
    PYTHONPATH) before its ModelDeployment `chat`, and the operator's apply merged its GPUs into it. Its labels, or
    llmos's labels in its pod template, make it llmos's: refused. (The same name without llmos's labels is refused by
    the operator: Degraded ChildConflict.)"""
    ns = tenant_namespaces[1]
    pod = pod_spec(container("runtime", env=[{"name": "PYTHONPATH", "value": "/evil"}]),
                   initContainers=[container("plant", "registry.example/evil:1")])
    labels = {"app.kubernetes.io/name": "llmos-runtime", "llmos.dev/model-deployment": "chat", **MANAGED}
    for obj, needle in (
        (workload("Deployment", "chat", labels=labels, replicas=0, pod=pod), "its label app.kubernetes.io/managed-by"),
        (workload("Deployment", "chat", labels={"app": "chat"}, template_labels=labels, replicas=0, pod=pod),
         "the llmos labels of its pod template"),
        (workload("Job", "chat", labels={"app": "chat"}, template_labels={"llmos.dev/model-deployment": "chat"},
                  pod=pod), "the llmos labels of its pod template"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "chat-adapters", "labels": labels}},
         "its label"),
    ):
        rc, err = create(tenant_admin, ns, obj)
        assert rc != 0
        assert_refused_by(err, CHILDREN, needle, "only the llmos operator may create it")


@pytest.mark.parametrize("kind,name", [("networkpolicy", "llmos-tenant-isolation"),
                                       ("networkpolicy", "llmos-tenant-egress"),
                                       ("rolebinding", "llmos-runtime-pods"), ("serviceaccount", "llmos-runtime")])
def test_tenant_cannot_change_or_delete_its_namespaces_llmos_objects(tenant_admin, tenant_namespaces, kind, name):
    """Issue 18, item 9: the tenant deleted llmos's NetworkPolicies and the runtime's RoleBinding."""
    ns = tenant_namespaces[1]
    out = tenant_admin.kubectl("delete", "-n", ns, f"{kind}/{name}", "--wait=false")
    assert out.returncode != 0
    assert_refused_by(out.stderr, CHILDREN, "only the llmos operator may delete it", "llmos writes it from the Tenant")
    out = tenant_admin.kubectl("label", "-n", ns, f"{kind}/{name}", "mine=yes")
    assert out.returncode != 0
    assert_refused_by_one_of(out.stderr, (CHILDREN, "only the llmos operator may change it"),
                             ("llmos-operator-tenant-network-policies",))


def test_tenant_has_no_rights_on_quotas_and_limit_ranges(tenant_admin, tenant_namespaces):
    """The quota objects are beyond the `admin` role altogether (Multi-Tenancy Benchmark: block modification of
    resource quotas)."""
    ns = tenant_namespaces[1]
    for target in ("resourcequota/llmos-tenant-quota", "limitrange/llmos-tenant-limits"):
        out = tenant_admin.kubectl("delete", "-n", ns, target)
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr


def test_the_runtimes_identity_is_llmos_alone(tenant_admin, tenant_namespaces):
    """A tenant pod running as llmos-runtime, a token of it (kubectl create token, or a legacy token Secret) would
    speak as the runtime of a model pod; rights granted to it would be code-in-a-model-pod's rights."""
    ns = tenant_namespaces[1]
    as_runtime = pod_spec(serviceAccountName="llmos-runtime")
    for obj in (workload("Pod", "as-runtime", pod=as_runtime), workload("Deployment", "as-runtime", pod=as_runtime)):
        rc, err = create(tenant_admin, ns, obj)
        assert rc != 0
        assert_refused_by(err, CHILDREN, "its pods run as llmos-runtime")
    out = tenant_admin.kubectl("create", "token", "llmos-runtime", "-n", ns)
    assert out.returncode != 0
    assert_refused_by(out.stderr, CHILDREN, "a token of the llmos runtime's service account")
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
              "metadata": {"name": "runtime-token", "annotations": {"kubernetes.io/service-account.name":
                                                                     "llmos-runtime"}}}
    rc, err = create(tenant_admin, ns, secret)
    assert rc != 0
    assert_refused_by(err, CHILDREN, "a token Secret of llmos-runtime")
    grant = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "runtime-edit"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
             "subjects": [{"kind": "ServiceAccount", "name": "llmos-runtime", "namespace": ns}]}
    rc, err = create(tenant_admin, ns, grant)
    assert rc != 0
    assert_refused_by(err, CHILDREN, "it grants llmos-runtime")
    out = tenant_admin.kubectl("create", "token", "default", "-n", ns)  # control: its own accounts' tokens
    assert out.returncode == 0, out.stderr


def test_tenants_own_objects_pass(tenant_admin, tenant_namespaces):
    """Control (Multi-Tenancy Benchmarks, profile 2): the tenant creates, changes and deletes its own Roles,
    RoleBindings (to roles it holds), ServiceAccounts, ConfigMaps, Services and workloads."""
    ns = tenant_namespaces[1]
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}
    objects = [
        role,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ci"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "ci-reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": ns}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "ci-edit"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
         "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "labels": {"app": "mine"}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}},
        workload("Deployment", "web", replicas=0, pod=pod_spec(serviceAccountName="ci")),
    ]
    for obj in objects:
        rc, err = create(tenant_admin, ns, obj)
        assert rc == 0, err
    for target in ("role/reader", "rolebinding/ci-reader", "configmap/settings", "deployment/web"):
        out = tenant_admin.kubectl("label", "-n", ns, target, "tier=one")
        assert out.returncode == 0, out.stderr
    for target in ("rolebinding/ci-edit", "rolebinding/ci-reader", "role/reader", "configmap/settings"):
        out = tenant_admin.kubectl("delete", "-n", ns, target)
        assert out.returncode == 0, out.stderr


def test_the_operator_may_change_its_deployment(operator_identity, served):
    """The operator writes replicas through the Deployment itself (a whole-object update guarded by its uid), never
    `deployments/scale` nor a patch (its RBAC has neither right)."""
    ns, name = served
    apps = client.AppsV1Api(operator_identity.api)
    for replicas in (1, 2):
        for attempt in range(10):  # the Deployment controller and the operator write it too: read again on 409
            current = apps.read_namespaced_deployment(name, ns)
            current.spec.replicas = replicas
            current.metadata.annotations = {**(current.metadata.annotations or {}), "llmos.dev/note": "operator"}
            try:
                apps.replace_namespaced_deployment(name, ns, current)
                break
            except client.ApiException as exc:
                if exc.status != 409 or attempt == 9:
                    raise


def test_controllers_still_scale_and_collect_llmos_objects(cluster, tenant_admin, tenant_namespaces):
    """Scaling a ModelDeployment down and up: the operator writes the Deployment, the Deployment controller scales
    the ReplicaSet, the ReplicaSet controller deletes and makes pods, the kubelet (here KWOK, with the admin's
    identity) finishes their deletion. Deleting it: the garbage collector deletes its children."""
    ns = tenant_namespaces[2]  # the other Tenant's: `served` holds all the first one's GPUs
    name = "scaled"
    serve(cluster, tenant_admin, ns, name, replicas=2, count=1)
    core, apps = client.CoreV1Api(cluster.api), client.AppsV1Api(cluster.api)

    def pods() -> int:
        return len([p for p in core.list_namespaced_pod(ns, label_selector=f"llmos.dev/model-deployment={name}").items
                    if p.metadata.deletion_timestamp is None])

    for replicas in (1, 3):
        out = tenant_admin.kubectl("scale", "-n", ns, f"modeldeployment/{name}", f"--replicas={replicas}")
        assert out.returncode == 0, out.stderr
        wait_for(lambda r=replicas: pods() == r, timeout=60, message=f"{replicas} pods of {name}")
    out = tenant_admin.kubectl("delete", "-n", ns, f"modeldeployment/{name}")
    assert out.returncode == 0, out.stderr
    wait_for(lambda: not apps.list_namespaced_deployment(ns, label_selector=f"llmos.dev/model-deployment={name}")
             .items and not core.list_namespaced_pod(ns, label_selector=f"llmos.dev/model-deployment={name}").items,
             timeout=60, message="the garbage collector deleting its Deployment, ReplicaSet and pods")


def test_a_platform_admin_may_break_glass(cluster, served):
    """Whoever may delete admission policy bindings could lift the policy anyway: not judged (a stuck pod, a
    drain). The ReplicaSet makes the pod again."""
    ns, name = served
    pod = _pod_of(cluster, ns, name)
    client.CoreV1Api(cluster.api).delete_namespaced_pod(pod, ns)
    wait_for(lambda: len([p for p in client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector=f"llmos.dev/model-deployment={name}").items if p.metadata.name != pod]) == 2,
        timeout=60, message="the pod made again")


# --- last: released namespaces, and a namespace deleted --------------------------------------------------------------

def test_a_released_namespace_keeps_llmos_names_and_objects(cluster, tenant_admin, tenant_namespaces):
    """The Tenant is deleted: llmos releases the namespace (zero GPUs, deny-all ingress) and removes the runtime's
    identity. The tenant's users, still admins there, may not delete what llmos left nor take its names."""
    core = client.CoreV1Api(cluster.api)
    ns = tenant_namespaces[2]
    tenant = core.read_namespace(ns).metadata.labels["llmos.dev/tenant"]
    client.CustomObjectsApi(cluster.api).delete_cluster_custom_object(GROUP, VERSION, "tenants", tenant)
    wait_for(lambda: (core.read_namespace(ns).metadata.labels or {}).get("llmos.dev/released") == tenant,
             timeout=30, message="the namespace released")
    out = tenant_admin.kubectl("delete", "-n", ns, "networkpolicy/llmos-released-deny-ingress")
    assert out.returncode != 0
    assert_refused_by(out.stderr, CHILDREN, "only the llmos operator may delete it")
    wait_for(lambda: not client.RbacAuthorizationV1Api(cluster.api).list_namespaced_role_binding(
        ns, field_selector="metadata.name=llmos-runtime-pods").items, timeout=30, message="the runtime's binding gone")
    for obj in ({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "llmos-runtime"}},
                {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "llmos-tenant-egress"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}):
        rc, err = create(tenant_admin, ns, obj)
        assert rc != 0
        assert_refused_by(err, CHILDREN, "its name, which llmos gives its own object")


def test_a_tenant_namespace_deleted_by_the_platform_goes(cluster, tenant_namespaces):
    """The namespace controller deletes llmos's objects with the rest (listed in isolation.controllerUsernames)."""
    core = client.CoreV1Api(cluster.api)
    ns = tenant_namespaces[1]
    uid = core.read_namespace(ns).metadata.uid
    core.delete_namespace(ns)

    def gone() -> bool:  # (the operator makes a namespace its Tenant lists again: a new one)
        try:
            return core.read_namespace(ns).metadata.uid != uid
        except client.ApiException as exc:
            return exc.status == 404

    wait_for(gone, timeout=90, message=f"namespace {ns} deleted with llmos's objects in it")
