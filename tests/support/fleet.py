"""Many tenants, their ModelDeployments, and what the chaos tests check about them on a real cluster: GPUs of running
pods sampled against each tenant's quota, children without a live owner, the admitted set against a replay of
`quota.admit`."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from kubernetes import client

from tests.support.waiting import wait_for

GROUP, VERSION = "llmos.dev", "v1alpha1"
LABEL_MODEL_DEPLOYMENT = "llmos.dev/model-deployment"
GPU_RESOURCE = "nvidia.com/gpu"
CHILD_KINDS = ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget")


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


@dataclass
class Fleet:
    """Tenants named ``<prefix>-t<i>``, each owning one namespace of the same name that llmos creates, with a Model
    ``m`` whose signature policy is Disabled (the tenants allow unsigned models: the weights are fake)."""

    api: client.ApiClient
    prefix: str
    quotas: list[dict[str, int]]
    tenants: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.policy = client.PolicyV1Api(self.api)
        self.tenants = [f"{self.prefix}-t{i}" for i in range(len(self.quotas))]
        self.quota_of = dict(zip(self.tenants, self.quotas, strict=True))

    # Setup and teardown ------------------------------------------------------------------------------------------

    def create(self, timeout: float = 60) -> None:
        for name, quota in self.quota_of.items():
            self.custom.create_cluster_custom_object(GROUP, VERSION, "tenants", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant", "metadata": {"name": name},
                "spec": {"namespaces": [name], "quota": {"gpus": quota}, "policy": {"allowUnsignedModels": True}}})
        for name in self.tenants:
            wait_for(lambda n=name: conditions(self.tenant(n)).get("NamespacesReady", {}).get("status") == "True",
                     timeout=timeout, message=f"Tenant {name} NamespacesReady")
            wait_for(lambda n=name: self._has_default_sa(n), timeout=timeout, message=f"namespace {name} ready")
            self.custom.create_namespaced_custom_object(GROUP, VERSION, name, "models", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "m"},
                "spec": {"source": {"uri": "hf://org/tiny"}, "signature": {"policy": "Disabled"}}})
        for name in self.tenants:
            wait_for(lambda n=name: conditions(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, n, "models", "m")).get("Verified", {}).get("reason") == "SignatureDisabled",
                timeout=timeout, message=f"Model {name}/m looked at")

    def _has_default_sa(self, namespace: str) -> bool:
        try:
            self.core.read_namespaced_service_account("default", namespace)
            return True
        except client.ApiException:
            return False

    def delete(self) -> None:
        """Tenants, then their namespaces (and so every pod in them)."""
        for name in self.tenants:
            try:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, "tenants", name)
            except client.ApiException:
                pass
        for name in self.tenants:
            try:
                self.core.delete_namespace(name, propagation_policy="Background")
            except client.ApiException:
                pass

    # Objects -----------------------------------------------------------------------------------------------------

    def tenant(self, name: str) -> dict:
        return self.custom.get_cluster_custom_object(GROUP, VERSION, "tenants", name)

    def deploy(self, namespace: str, name: str, count: int, gpu_class: str = "h100", replicas: int = 1) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": "m", "replicas": replicas, "gpu": {"class": gpu_class, "count": count}}})

    def mdeps(self) -> list[dict]:
        out = []
        for ns in self.tenants:
            out += self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments")["items"]
        return out

    def delete_mdeps(self) -> None:
        for ns in self.tenants:
            self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments")

    def reservations(self) -> dict[str, dict]:
        return {t: (self.tenant(t).get("status") or {}).get("reservations") or {} for t in self.tenants}

    # Checks ------------------------------------------------------------------------------------------------------

    def settled(self, mdeps: list[dict]) -> bool:
        """Every deployment has been decided at its generation: admitted and Ready, or waiting for quota."""
        for m in mdeps:
            c = conditions(m)
            admitted, ready = c.get("QuotaAdmitted"), c.get("Ready")
            if admitted is None or ready is None:
                return False
            if admitted.get("observedGeneration") != m["metadata"]["generation"]:
                return False
            if admitted["status"] not in ("True", "False"):  # Unknown: admission has not decided yet
                return False
            if admitted["status"] == "True" and ready["status"] != "True":
                return False
        return True

    def admitted(self, mdeps: list[dict]) -> set[str]:
        return {f"{m['metadata']['namespace']}/{m['metadata']['name']}" for m in mdeps
                if conditions(m).get("QuotaAdmitted", {}).get("status") == "True"}

    def explain(self, mdeps: list[dict], keys: set[str]) -> list[str]:
        """Each deployment named in ``keys`` with its admission condition and creation time, for a failure message."""
        out = []
        for m in mdeps:
            key = f"{m['metadata']['namespace']}/{m['metadata']['name']}"
            if key in keys:
                c = conditions(m).get("QuotaAdmitted", {})
                out.append(f"{key} created {m['metadata']['creationTimestamp']} {m['spec']['gpu']}: "
                           f"QuotaAdmitted={c.get('status')} {c.get('reason')} {c.get('message')!r}")
        return sorted(out)

    def replay(self, mdeps: list[dict], gpu_classes) -> set[str]:
        """What a single-threaded operator admits when the deployments arrive one at a time in creation order
        (creationTimestamp has 1 s resolution: ties go by namespace/name, as admission orders them)."""
        from llmos_operator.core.quota import Request, TenantInfo, admit

        requests = sorted(
            (Request(namespace=m["metadata"]["namespace"], name=m["metadata"]["name"], uid=m["metadata"]["uid"],
                     tenant=m["metadata"]["namespace"], gpu_class=m["spec"]["gpu"]["class"],
                     replicas=m["spec"].get("replicas", 1), gpus_per_replica=m["spec"]["gpu"]["count"],
                     created=_parse_time(m["metadata"]["creationTimestamp"])) for m in mdeps),
            key=lambda r: (r.created, r.key))
        tenants = {t: TenantInfo(name=t, gpus=dict(q)) for t, q in self.quota_of.items()}
        ledger: dict = {}
        arrived: list = []
        result = None
        for request in requests:
            arrived.append(request)
            result = admit(arrived, ledger, tenants, gpu_classes)
            ledger = result.ledger
        return {key for key, d in (result.decisions.items() if result else ()) if d.admitted}

    def orphans_and_duplicates(self, mdeps: list[dict], replica_sets: int = 1) -> list[str]:
        """Children (selected by llmos's label) whose ModelDeployment is gone or another object of the same name,
        more than one Deployment per ModelDeployment, Deployments of deployments that are not admitted, and
        Deployments with more than ``replica_sets`` ReplicaSets (one per revision rolled out: more is a spurious
        rollout)."""
        live = {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in mdeps}
        admitted = self.admitted(mdeps)
        problems = []
        deployments: Counter = Counter()
        for ns in self.tenants:
            selector = LABEL_MODEL_DEPLOYMENT
            children = {
                "Deployment": self.apps.list_namespaced_deployment(ns, label_selector=selector).items,
                "Service": self.core.list_namespaced_service(ns, label_selector=selector).items,
                "ConfigMap": self.core.list_namespaced_config_map(ns, label_selector=selector).items,
                "PodDisruptionBudget": self.policy.list_namespaced_pod_disruption_budget(
                    ns, label_selector=selector).items,
            }
            for kind, items in children.items():
                for child in items:
                    owner_name = child.metadata.labels[LABEL_MODEL_DEPLOYMENT]
                    owner = live.get((ns, owner_name))
                    refs = [r.uid for r in child.metadata.owner_references or [] if r.kind == "ModelDeployment"]
                    if owner is None or refs != [owner["metadata"]["uid"]]:
                        problems.append(f"orphaned {kind} {ns}/{child.metadata.name} (owner refs {refs})")
                    if kind == "Deployment":
                        deployments[(ns, owner_name)] += 1
                        if f"{ns}/{owner_name}" not in admitted:
                            problems.append(f"Deployment {ns}/{child.metadata.name} of a deployment not admitted")
            for rs_owner, n in Counter(
                    ref.name for rs in self.apps.list_namespaced_replica_set(ns, label_selector=selector).items
                    for ref in rs.metadata.owner_references or [] if ref.kind == "Deployment").items():
                if n > replica_sets:
                    problems.append(f"Deployment {ns}/{rs_owner} has {n} ReplicaSets (a spurious rollout)")
        problems += [f"{n} Deployments for {ns}/{name}" for (ns, name), n in deployments.items() if n > 1]
        return problems


def _parse_time(value: str):
    from llmos_operator.core.quota import parse_time

    return parse_time(value)


class GpuSampler:
    """Every ``interval`` seconds, the GPUs requested by every pod of llmos (selected by its label) that is not
    Succeeded or Failed, summed per tenant and GPU class; remembers each peak and every sample above quota."""

    def __init__(self, api: client.ApiClient, fleet: Fleet, class_of: dict[tuple[str, str], str],
                 interval: float = 0.2):
        self.core = client.CoreV1Api(api)
        self.fleet, self.class_of, self.interval = fleet, class_of, interval
        self.peaks: dict[tuple[str, str], int] = defaultdict(int)
        self.violations: list[str] = []
        self.samples = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def sample(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(label_selector=LABEL_MODEL_DEPLOYMENT, _request_timeout=5).items
        used: dict[tuple[str, str], int] = defaultdict(int)
        for pod in pods:
            ns = pod.metadata.namespace
            if ns not in self.fleet.quota_of or pod.status.phase in ("Succeeded", "Failed"):
                continue
            gpus = sum(int((c.resources.requests or {}).get(GPU_RESOURCE, 0)) for c in pod.spec.containers)
            gpu_class = self.class_of.get((ns, pod.metadata.labels[LABEL_MODEL_DEPLOYMENT]), "?")
            used[(ns, gpu_class)] += gpus
        self.samples += 1
        for key, gpus in used.items():
            self.peaks[key] = max(self.peaks[key], gpus)
            limit = self.fleet.quota_of[key[0]].get(key[1], 0)
            if gpus > limit:
                self.violations.append(f"{time.strftime('%H:%M:%S')} tenant {key[0]} runs {gpus} {key[1]} GPUs "
                                       f"(quota {limit})")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 — the API server may be restarting; the next sample counts
                self.errors += 1


def seeded(seed: int) -> random.Random:
    return random.Random(seed)
