"""The Helm chart, with the helm built from source, against the real API server: it lints strictly, every object it
renders (default and full values) passes a server-side dry run, and values.schema.json refuses wrong values naming
the field. The operator running with what the chart installs is tested in test_chart_operator.py."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.chart import CHART, helm

# Every optional part switched on, every knob moved from its default.
FULL_VALUES = {
    "image": {"repository": "registry.example/llmos/operator", "tag": "9.9.9", "pullPolicy": "Always"},
    "runtimeImage": {"repository": "registry.example/llmos/runtime", "tag": "9.9.9-cpu"},
    "replicas": 3,
    "leaderElection": {"enabled": True, "leaseName": "llmos-leader"},
    "config": {
        "gpuClasses": {"a100": {"nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                                "resourceName": "nvidia.com/gpu", "memoryGiB": 80}},
        "trustedKeys": {"platform": "-----BEGIN PUBLIC KEY-----\nMFk=\n-----END PUBLIC KEY-----\n"},
        "runtime": {"openaiPort": 8000, "startupTimeoutSeconds": 3600, "imagePullPolicy": "IfNotPresent"},
        "tenancy": {"quota": {"cpu": 8, "memory": "32Gi", "pods": 20, "loadBalancers": 2},
                    "defaultRequests": {"cpu": "50m", "ephemeralStorage": "512Mi"}},
    },
    "metrics": {"port": 9191, "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
                "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
                "grafanaDashboard": {"enabled": True}},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/team": "platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}],
    "isolation": {
        "extraOperatorUsernames": ["system:serviceaccount:llmos-old:llmos-operator"],
        "controllerUsernames": {k: ["system:kube-controller-manager"] for k in (
            "deploymentController", "replicaSetController", "garbageCollector", "namespaceController",
            "podGarbageCollector", "nodeLifecycleController")},
        # The examples values.yaml ships commented out (the API server compiles them in the dry run below).
        "extraGpuWorkloads": [
            {"group": "leaderworkerset.x-k8s.io", "version": "v1", "resource": "leaderworkersets",
             "podSpecs": "[object.spec.leaderWorkerTemplate.workerTemplate.spec] + "
                         "(has(object.spec.leaderWorkerTemplate.leaderTemplate) "
                         "? [object.spec.leaderWorkerTemplate.leaderTemplate.spec] : [])"},
            {"group": "ray.io", "version": "v1", "resource": "rayclusters",
             "podSpecs": "[object.spec.headGroupSpec.template.spec] + "
                         "object.spec.?workerGroupSpecs.orValue([]).map(g, g.template.spec)"},
        ],
        "pods": {"requireImagePullAlways": False, "allowedPriorityClasses": ["tenant-high"],
                 "deniedEnv": ["NVIDIA_VISIBLE_DEVICES"]},
        "services": {"allowLoadBalancers": True},
        "tenantNetworkPolicies": "adminNetworkPolicy",
    },
}

# The prometheus-operator CRDs are not part of this cluster. For the dry run, permissive stand-ins of the three kinds
# the chart renders (this checks kind, apiVersion and the object's metadata, not prometheus-operator's schemas).
MONITORING_STANDINS = [
    {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
     "metadata": {"name": f"{plural}.monitoring.coreos.com"},
     "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
              "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
              "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                  "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    for plural, kind in (("servicemonitors", "ServiceMonitor"), ("podmonitors", "PodMonitor"),
                         ("prometheusrules", "PrometheusRule"))
]


def _values_file(tmp_path, values: dict):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_chart_lints_renders_and_passes_a_server_side_dry_run(cluster, tmp_path, values):
    args = ["-f", str(_values_file(tmp_path, values))] if values else []
    lint = helm(cluster, "lint", "--strict", str(CHART), *args)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # A release name of its own: the cluster-scoped objects of the platform's release `llmos` (ClusterRoles, admission
    # policies) are already there, owned by another field manager.
    namespace = "llmos-dry-run"
    rendered = helm(cluster, "template", "llmos-dry-run", str(CHART), "--namespace", namespace, *args)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap", "Role", "RoleBinding",
            "PodDisruptionBudget", "Service"} <= kinds
    optional = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert (optional <= kinds) if values else not (optional & kinds), kinds

    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert "--peering" not in command and "--standalone" not in command and "--leader-election-id" in command
    # The restricted Pod Security Standard.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container_sc = pod["containers"][0]["securityContext"]
    assert container_sc["allowPrivilegeEscalation"] is False and container_sc["capabilities"]["drop"] == ["ALL"]
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
                            ["data"]["config.yaml"])
    if values:
        assert pod["priorityClassName"] == "system-cluster-critical"
        assert pod["containers"][0]["image"] == "registry.example/llmos/operator:9.9.9"
        assert config["runtime"]["image"] == "registry.example/llmos/runtime:9.9.9-cpu"
        assert config["runtime"]["startupTimeoutSeconds"] == 3600
    else:
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        assert pod["containers"][0]["image"] == f"ghcr.io/llmos/operator:{app_version}"
        assert config["runtime"]["image"] == f"ghcr.io/llmos/runtime:{app_version}"
        assert deployment["spec"]["replicas"] == 2
    dashboard = next(d for d in docs if d["kind"] == "ConfigMap" and "llmos.json" in d["data"])
    assert json.loads(dashboard["data"]["llmos.json"])["panels"]

    if values:
        cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": MONITORING_STANDINS}))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        *(f"crd/{c['metadata']['name']}" for c in MONITORING_STANDINS))
    cluster.kubectl("create", "namespace", namespace, check=False)
    # The CRDs the chart ships under crds/ (helm template leaves them out) are installed by the session's fixture.
    dry = cluster.kubectl("apply", "--dry-run=server", "--server-side", "-f", "-", check=False,
                          input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert dry.stdout.count("(server dry run)") == len(docs), dry.stdout


@pytest.mark.parametrize("setting, field", [
    ("replicas=two", "'/replicas'"),
    ("metrics.port=http", "'/metrics/port'"),
    ("image.pullPolicy=Sometimes", "'/image/pullPolicy'"),
    ("metrics.serviceMonitor.enabled=yes", "'/metrics/serviceMonitor/enabled'"),
    ("replica=2", "'replica' not allowed"),
    ("config.gpuClasses.h100.memoryGiB=lots", "'/config/gpuClasses/h100/memoryGiB'"),
    ("config.tenancy.quota.cpu=-1", "'/config/tenancy/quota/cpu'"),
    ("isolation.tenantNetworkPolicies=calico", "'/isolation/tenantNetworkPolicies'"),
    ("isolation.pods.allowedPriorityClasses[0]=system-node-critical", "'/isolation/pods/allowedPriorityClasses/0'"),
    ("isolation.extraGpuWorkloads[0].group=ray.io", "'/isolation/extraGpuWorkloads/0'"),
    ("isolation.services.allowLoadBalancer=true", "'allowLoadBalancer' not allowed"),
])
def test_schema_refuses_a_wrong_value_naming_the_field(cluster, setting, field):
    out = helm(cluster, "template", "llmos", str(CHART), "--set", setting)
    assert out.returncode != 0, f"--set {setting} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert field in out.stderr, out.stderr


def test_several_replicas_without_leader_election_are_refused(cluster):
    out = helm(cluster, "template", "llmos", str(CHART), "--set", "leaderElection.enabled=false")
    assert out.returncode != 0 and "leaderElection.enabled" in out.stderr, out.stderr
    single = helm(cluster, "template", "llmos", str(CHART), "--set", "leaderElection.enabled=false",
                  "--set", "replicas=1")
    assert single.returncode == 0, single.stderr
    deployment = next(d for d in yaml.safe_load_all(single.stdout) if d and d["kind"] == "Deployment")
    assert "--standalone" in deployment["spec"]["template"]["spec"]["containers"][0]["command"]


def test_notes_say_what_to_apply_next_and_what_uninstall_keeps(cluster):
    out = helm(cluster, "install", "llmos-notes", str(CHART), "--dry-run", "--namespace", "llmos-notes")
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -k examples/platform" in notes and "kubectl apply -k examples/team-a" in notes
    assert "CRDs" in notes and "stay" in notes



def test_the_tenant_pod_rules_and_llmos_own_pods_agree(cluster):
    """With imagePullPolicy Always required in tenant namespaces, llmos's own pods must pull Always too: the chart
    refuses a configuration that would have the API server refuse the operator's pods."""
    out = helm(cluster, "template", "llmos", str(CHART), "--set", "config.runtime.imagePullPolicy=IfNotPresent")
    assert out.returncode != 0 and "config.runtime.imagePullPolicy is IfNotPresent" in out.stderr, out.stderr
    out = helm(cluster, "template", "llmos", str(CHART), "--set", "config.runtime.imagePullPolicy=IfNotPresent",
               "--set", "isolation.pods.requireImagePullAlways=false")
    assert out.returncode == 0, out.stderr
    tenancy = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "ValidatingAdmissionPolicy"
               and d["metadata"]["name"] == "llmos-operator-tenant-pods"]
    (pods,) = tenancy
    assert next(v for v in pods["spec"]["variables"] if v["name"] == "notPulledAlways")["expression"] == "[]"
