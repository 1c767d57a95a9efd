"""The tenancy baseline of every tenant namespace (issue 18, items 4, 5, 6, 7 and 9), acted out with the tenant's own
token: the platform owns network and priority (policies tenant-network-policies and tenant-pods), the rest of the
Multi-Tenancy Benchmarks' profile levels 1 and 2 (NodePort and LoadBalancer Services, image pull policy, quotas on
CPU, memory and object counts, Pod Security), no side doors into a model pod (no-exec; device variables), and what
the tenant may still do for itself (restricting NetworkPolicies, exec where the platform allows it)."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client

from tests.support.hostile import (  # noqa: F401 — fixtures
    GROUP,
    VERSION,
    assert_refused_by,
    container,
    create,
    exists,
    gpu_pod_spec,
    operator_identity,
    platform,
    pod_spec,
    tenant_admin,
    tenant_namespaces,
    workload,
)
from tests.support.waiting import wait_for

PODS = "llmos-operator-tenant-pods"
SERVICES = "llmos-operator-tenant-services"
NETWORK = "llmos-operator-tenant-network-policies"
NO_EXEC = "llmos-operator-no-exec"


def _tenant_of(cluster, namespace: str) -> str:
    return client.CoreV1Api(cluster.api).read_namespace(namespace).metadata.labels["llmos.dev/tenant"]


def _policy(name: str, *, egress: list | None = None, ingress: list | None = None) -> dict:
    types = (["Egress"] if egress is not None else []) + (["Ingress"] if ingress is not None else [])
    spec: dict = {"podSelector": {}, "policyTypes": types}
    if egress:
        spec["egress"] = egress
    if ingress:
        spec["ingress"] = ingress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec}


# --- the platform owns the network ----------------------------------------------------------------------------------

def _wide_policies() -> list[tuple[dict, str]]:
    other = {"namespaceSelector": {"matchLabels": {"llmos.dev/tenant": "someone-else"}}}
    return [
        (_policy("allow-all-egress", egress=[{}]), "spec.egress[0] allows more than the platform does (every "),
        (_policy("to-metadata", egress=[{"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}]}]), "spec.egress[0]"),
        (_policy("to-any-namespace", egress=[{"to": [{"namespaceSelector": {}}]}]), "a peer outside the tenant"),
        (_policy("to-another-tenant", egress=[
            {"to": [{"podSelector": {}}]}, {"to": [other], "ports": [{"port": 8000}]}]), "spec.egress[1]"),
        (_policy("ports-only", egress=[{"ports": [{"port": 443}]}]), "every destination"),
        (_policy("dns-any-port", egress=[{"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}]),
         "spec.egress[0]"),
        (_policy("allow-all-ingress", ingress=[{}]), "spec.ingress[0] allows more than the platform does (every "),
        (_policy("from-the-world", ingress=[{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]), "spec.ingress[0]"),
    ]


def test_tenant_network_policies_cannot_widen_what_the_platform_allows(cluster, tenant_admin, tenant_namespaces):
    """Issue 18, item 4: the tenant's `egress: [{}]` was accepted, and NetworkPolicies add up, so llmos's egress rules
    (cloud metadata, the API server, other namespaces) no longer held."""
    ns = tenant_namespaces[0]
    tenant = _tenant_of(cluster, ns)
    for policy, needle in _wide_policies():
        rc, err = create(tenant_admin, ns, policy)
        assert rc != 0, policy
        assert_refused_by(err, NETWORK, needle, f"llmos.dev/tenant: {tenant}")


def test_tenant_network_policies_that_restrict_pass_and_stay_judged(cluster, tenant_admin, tenant_namespaces):
    """Multi-Tenancy Benchmark MTB-PL2-BC-OPS-4: self-service NetworkPolicies within the tenant."""
    ns = tenant_namespaces[0]
    own = {"namespaceSelector": {"matchLabels": {"llmos.dev/tenant": _tenant_of(cluster, ns)}}}
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    allowed = [
        _policy("deny-all", egress=[], ingress=[]),
        _policy("web-to-db", egress=[{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}],
                                      "ports": [{"port": 5432}]}]),
        _policy("to-own-namespaces", egress=[{"to": [{**own, "podSelector": {"matchLabels": {"app": "api"}}}]}]),
        _policy("dns", egress=[{"to": [dns], "ports": [{"protocol": "UDP", "port": 53}, {"port": 53}]}]),
        _policy("from-gateways", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"llmos.dev/gateway":
                                                                                           "true"}}}]}]),
        _policy("from-own", ingress=[{"from": [own, {"podSelector": {}}]}]),
    ]
    for policy in allowed:
        rc, err = create(tenant_admin, ns, policy)
        assert rc == 0, err
    out = tenant_admin.kubectl("patch", "-n", ns, "networkpolicy/web-to-db", "--type=merge",
                               "-p", json.dumps({"spec": {"egress": [{}]}}))
    assert out.returncode != 0
    assert_refused_by(out.stderr, NETWORK, "spec.egress[0]")
    out = tenant_admin.kubectl("delete", "-n", ns, "networkpolicy/deny-all")
    assert out.returncode == 0, out.stderr


# --- the platform owns priority --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tenant_priority_class(cluster):
    name = f"tenant-high-{uuid.uuid4().hex[:5]}"
    client.SchedulingV1Api(cluster.api).create_priority_class({"metadata": {"name": name}, "value": 1000000})
    yield name
    client.SchedulingV1Api(cluster.api).delete_priority_class(name)


def test_priority_classes_not_on_the_platforms_list_are_refused(tenant_admin, tenant_namespaces,
                                                                 tenant_priority_class):
    """Issue 18, item 5: a pod with system-node-critical and the GPU toleration was accepted; the scheduler preempted
    other tenants' model pods for it."""
    ns = tenant_namespaces[0]
    preempting = pod_spec(priorityClassName="system-node-critical", tolerations=gpu_pod_spec()["tolerations"])
    for obj, needle in ((workload("Pod", "vip", pod=preempting), "priorityClassName system-node-critical"),
                        (workload("Deployment", "vip", pod=pod_spec(priorityClassName=tenant_priority_class)),
                         f"priorityClassName {tenant_priority_class}")):
        rc, err = create(tenant_admin, ns, obj)
        assert rc != 0
        assert_refused_by(err, PODS, needle, "none is allowed: leave priorityClassName unset")
    rc, err = create(tenant_admin, ns, workload("Pod", "plain", pod=pod_spec()))
    assert rc == 0, err


# --- Services ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,needle", [
    ({"type": "NodePort"}, "type NodePort opens a port on every node"),           # MTB-PL1-BC-HI-1
    ({"type": "LoadBalancer"}, "type LoadBalancer is not allowed"),
    ({"externalIPs": ["203.0.113.10"]}, "CVE-2020-8554"),
])
def test_services_that_reach_past_the_namespace_are_refused(tenant_admin, tenant_namespaces, spec, needle):
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{uuid.uuid4().hex[:5]}"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], **spec}}
    rc, err = create(tenant_admin, tenant_namespaces[0], service)
    assert rc != 0
    assert_refused_by(err, SERVICES, needle)


def test_a_cluster_ip_service_passes_and_cannot_become_a_node_port(tenant_admin, tenant_namespaces):
    ns = tenant_namespaces[0]
    rc, err = create(tenant_admin, ns, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})
    assert rc == 0, err
    out = tenant_admin.kubectl("patch", "-n", ns, "service/web", "-p", '{"spec": {"type": "NodePort"}}')
    assert out.returncode != 0
    assert_refused_by(out.stderr, SERVICES, "NodePort")


# --- tenant pods: image pull policy, device variables ------------------------------------------------------------------

def test_tenant_pods_pull_always(tenant_admin, tenant_namespaces):
    """MTB-PL1-CC-DI-1 (require image pull policy Always), in pods and in every workload's pod template. Without an
    imagePullPolicy, the API server writes IfNotPresent for a tagged image: refused too."""
    ns = tenant_namespaces[0]
    unset = container("app")
    del unset["imagePullPolicy"]
    cases = [
        workload("Pod", "cached", pod=pod_spec(container("app", imagePullPolicy="IfNotPresent"))),
        workload("Pod", "defaulted", pod=pod_spec(unset)),
        workload("Deployment", "cached", pod=pod_spec(container("app"), initContainers=[
            container("init", imagePullPolicy="Never")])),
        workload("CronJob", "cached", pod=pod_spec(container("app", imagePullPolicy="IfNotPresent"))),
    ]
    for obj in cases:
        rc, err = create(tenant_admin, ns, obj)
        assert rc != 0, obj
        assert_refused_by(err, PODS, "must set imagePullPolicy: Always")


def test_the_llmos_runtime_pods_comply(cluster, tenant_admin, tenant_namespaces):
    """llmos's own pods are judged like the tenant's: the operator's default runtime.imagePullPolicy is Always."""
    from tests.support.hostile import serve

    ns = tenant_namespaces[1]
    serve(cluster, tenant_admin, ns, "complies", replicas=1, count=1)
    pod = client.CoreV1Api(cluster.api).list_namespaced_pod(
        ns, label_selector="llmos.dev/model-deployment=complies").items[0]
    assert {c.image_pull_policy for c in pod.spec.containers} == {"Always"}


@pytest.mark.parametrize("variable", ["NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"])
def test_variables_that_widen_device_access_are_refused(tenant_admin, tenant_namespaces, variable):
    """Issue 18, item 7: NVIDIA_VISIBLE_DEVICES=all in a pod without GPU requests exposes every GPU of the node where
    the container toolkit accepts the variable from unprivileged containers. As env, in an init container, by an
    envFrom prefix, or as a ConfigMap or Secret key (which envFrom turns into a variable)."""
    ns = tenant_namespaces[0]
    env = [{"name": variable, "value": "all"}]
    for obj in (workload("Pod", "gpu-peek", pod=pod_spec(container("app", env=env))),
                workload("Job", "gpu-peek", pod=pod_spec(container("app"), initContainers=[container("i", env=env)])),
                workload("Deployment", "gpu-peek", pod=pod_spec(container("app", envFrom=[
                    {"prefix": "NVIDIA_", "configMapRef": {"name": "devices"}}])))):
        rc, err = create(tenant_admin, ns, obj)
        assert rc != 0
        assert_refused_by(err, PODS, "widen GPU device access")
    for kind, field in (("ConfigMap", "data"), ("Secret", "stringData")):
        rc, err = create(tenant_admin, ns, {"apiVersion": "v1", "kind": kind,
                                            "metadata": {"name": f"devices-{kind.lower()}"}, field: {variable: "all"}})
        assert rc != 0
        assert_refused_by(err, PODS, f"holds key(s) {variable}")
    rc, err = create(tenant_admin, ns, workload("Pod", f"cuda-{variable.lower().replace('_', '-')}", pod=pod_spec(
        container("app", env=[{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]))))
    assert rc == 0, err  # control: a variable that widens nothing


# --- Pod Security (restricted, set by llmos on every tenant namespace) ---------------------------------------------

@pytest.mark.parametrize("check,pod", [
    ("block-privileged-containers", pod_spec(container("app", securityContext={"privileged": True}))),
    ("block-privilege-escalation", pod_spec(container("app", securityContext={"allowPrivilegeEscalation": True}))),
    ("block-add-capabilities", pod_spec(container("app", securityContext={
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}))),
    ("require-run-as-non-root-user", {**pod_spec(), "securityContext": {"runAsNonRoot": False, "runAsUser": 0,
                                                                        "seccompProfile": {"type": "RuntimeDefault"}}}),
    ("block-use-of-host-path", pod_spec(volumes=[{"name": "h", "hostPath": {"path": "/etc"}}])),
    ("block-use-of-host-networking-and-ports", pod_spec(hostNetwork=True)),
    ("block-use-of-host-pid", pod_spec(hostPID=True)),
    ("block-use-of-host-ipc", pod_spec(hostIPC=True)),
])
def test_multi_tenancy_benchmark_pod_checks_hold(tenant_admin, tenant_namespaces, check, pod):
    rc, err = create(tenant_admin, tenant_namespaces[0], workload("Pod", f"mtb-{uuid.uuid4().hex[:5]}", pod=pod))
    assert rc != 0, check
    assert "violates PodSecurity" in err and "restricted" in err, err


def test_tenant_cannot_reach_cluster_resources(tenant_admin):
    """MTB-PL1-CC-CPI-1: no access to cluster-scoped resources."""
    for resource in ("nodes", "namespaces", "persistentvolumes", "clusterroles", "tenants.llmos.dev"):
        out = tenant_admin.kubectl("get", resource)
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), (resource, out.stderr)


# --- no side doors: exec, attach, port-forward -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_pods(cluster, tenant_admin, tenant_namespaces):
    """A running pod of the tenant's own in a namespace without allowExec and in one with it (kubectl port-forward
    asks only once the pod runs)."""
    core = client.CoreV1Api(cluster.api)
    for ns in (tenant_namespaces[0], tenant_namespaces[2]):
        rc, err = create(tenant_admin, ns, workload("Pod", "shell", pod=pod_spec()))
        assert rc == 0 or "AlreadyExists" in err, err
        wait_for(lambda n=ns: core.read_namespaced_pod("shell", n).status.phase == "Running", timeout=60,
                 message=f"pod shell running in {ns}")
    return "shell"


@pytest.mark.parametrize("verb", [["exec", "shell", "--", "cat", "/proc/1/environ"], ["attach", "shell"],
                                  ["port-forward", "pod/shell", "18000:8000"]])
def test_exec_attach_and_port_forward_refused_unless_the_platform_allows(tenant_admin, tenant_namespaces, own_pods,
                                                                        verb):
    """Issue 18, item 6: `kubectl exec` into a runtime pod read the guard token from /proc/<vllm>/environ. The API
    server refuses the CONNECT itself (before any kubelet is asked); where the Tenant has policy.allowExec the
    request passes admission (and here fails only because KWOK's nodes have no kubelet to connect to)."""
    refused = tenant_admin.kubectl(verb[0], "-n", tenant_namespaces[0], *verb[1:])
    assert refused.returncode != 0
    assert_refused_by(refused.stderr, NO_EXEC, "Tenant.spec.policy.allowExec", "is refused in tenant namespace")
    allowed = tenant_admin.kubectl(verb[0], "-n", tenant_namespaces[2], *verb[1:])
    assert "denied request" not in allowed.stderr, allowed.stderr


def test_allow_exec_follows_the_tenant(cluster, tenant_admin, tenant_namespaces, own_pods):
    """The operator labels the namespaces from Tenant.spec.policy.allowExec, and takes the label off again."""
    core, custom = client.CoreV1Api(cluster.api), client.CustomObjectsApi(cluster.api)
    ns = tenant_namespaces[2]
    tenant = _tenant_of(cluster, ns)

    def label() -> str | None:
        return (core.read_namespace(ns).metadata.labels or {}).get("llmos.dev/allow-exec")

    assert label() == "true"
    custom.patch_cluster_custom_object(GROUP, VERSION, "tenants", tenant, {"spec": {"policy": {"allowExec": False}}})
    wait_for(lambda: label() is None, timeout=30, message="llmos.dev/allow-exec taken off")
    out = tenant_admin.kubectl("exec", "-n", ns, "shell", "--", "true")
    assert_refused_by(out.stderr, NO_EXEC)
    out = tenant_admin.kubectl("label", "namespace", ns, "llmos.dev/allow-exec=true")
    assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr


# --- quotas: CPU, memory, object counts ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quota_tenant(cluster, operator):
    """A Tenant with a small quota of its own: 2 pods, 1 CPU, 3 ConfigMaps in its namespace."""
    custom, core = client.CustomObjectsApi(cluster.api), client.CoreV1Api(cluster.api)
    name = f"quota-{uuid.uuid4().hex[:5]}"
    custom.create_cluster_custom_object(GROUP, VERSION, "tenants", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"namespaces": [name], "quota": {"cpu": 1, "memory": "1Gi", "pods": 2, "configMaps": 3}}})
    wait_for(lambda: exists(core.read_namespaced_service_account, "default", name), timeout=60,
             message=f"namespace {name}")
    yield name
    custom.delete_cluster_custom_object(GROUP, VERSION, "tenants", name)
    core.delete_namespace(name)


def test_the_operator_writes_default_requests(cluster, quota_tenant):
    limits = wait_for(lambda: exists(client.CoreV1Api(cluster.api).read_namespaced_limit_range, "llmos-tenant-limits",
                                     quota_tenant), timeout=30, message="the LimitRange llmos-tenant-limits")
    assert limits


def test_the_operator_writes_the_tenant_quota(cluster, quota_tenant):
    wait_for(lambda: exists(client.CoreV1Api(cluster.api).read_namespaced_resource_quota, "llmos-tenant-quota",
                            quota_tenant), timeout=20, message="the ResourceQuota llmos-tenant-quota")


def test_the_tenant_quota_counts_cpu_memory_and_objects(cluster, quota_tenant, operator_identity, tmp_path):
    """MTB-PL1-CC-FNS-1/2: the quota render_tenant_children gives the namespace, written with the operator's identity
    (as the operator writes it): a pod that names no requests gets the LimitRange's and is counted; past 2 pods, or
    a pod asking for more CPU than is left, the API server refuses with the quota's name."""
    from llmos_operator.api import Tenant, parse_as
    from llmos_operator.config import load_config
    from llmos_operator.dev import platform as dev_platform
    from llmos_operator.render.tenant import render_tenant_quota
    from tests.support.tenant import make_user

    core = client.CoreV1Api(cluster.api)
    ns = quota_tenant
    raw = client.CustomObjectsApi(cluster.api).get_cluster_custom_object(GROUP, VERSION, "tenants", ns)
    config = load_config(dev_platform.operator_environment(cluster.name)["LLMOS_OPERATOR_CONFIG"])
    quota = render_tenant_quota(parse_as(Tenant, raw), ns, config)
    assert quota["spec"]["hard"]["pods"] == "2" and quota["spec"]["hard"]["requests.cpu"] == "1"
    applied = operator_identity.kubectl("apply", "--server-side", "--field-manager=llmos", "--force-conflicts",
                                        "-f", "-", input=json.dumps(quota))
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: (core.read_namespaced_resource_quota("llmos-tenant-quota", ns).status.hard or {}),
             timeout=30, message="the quota controller counting the namespace")
    wait_for(lambda: exists(core.read_namespaced_limit_range, "llmos-tenant-limits", ns), timeout=30,
             message="the LimitRange")
    user = make_user(cluster.api, cluster.name, f"{ns}-home", "quota-admin", admin_of=[ns], workdir=tmp_path)
    try:
        rc, err = create(user, ns, workload("Pod", "one", pod=pod_spec()))
        assert rc == 0, err
        requests = core.read_namespaced_pod("one", ns).spec.containers[0].resources.requests
        assert requests == {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "1Gi"}
        rc, err = create(user, ns, workload("Pod", "greedy", pod=pod_spec(container(
            "app", resources={"requests": {"cpu": "2"}}))))
        assert rc != 0 and "exceeded quota: llmos-tenant-quota" in err and "requests.cpu" in err, err
        rc, err = create(user, ns, workload("Pod", "two", pod=pod_spec()))
        assert rc == 0, err
        rc, err = create(user, ns, workload("Pod", "three", pod=pod_spec()))
        assert rc != 0 and "exceeded quota: llmos-tenant-quota" in err and "pods" in err, err
        out = user.kubectl("delete", "-n", ns, "resourcequota/llmos-tenant-quota")
        assert out.returncode != 0 and "forbidden" in out.stderr.lower()  # MTB-PL1-CC-TI-1
    finally:
        user.close()
        core.delete_namespace(f"{ns}-home")


@pytest.mark.parametrize("value", ["1.5x", "-1", -2])
def test_the_api_server_refuses_a_bad_quantity_naming_the_field(cluster, value):
    """The CRD's CEL rule, twin of the Python check in api/types.py (tests/unit/test_api_types.py)."""
    tenant = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": "bad-quantity"},
              "spec": {"namespaces": ["bad-quantity"], "quota": {"memory": value}}}
    with pytest.raises(client.ApiException) as exc:
        client.CustomObjectsApi(cluster.api).create_cluster_custom_object(GROUP, VERSION, "tenants", tenant,
                                                                          dry_run="All")
    assert exc.value.status == 422 and "spec.quota.memory" in exc.value.body, exc.value.body
