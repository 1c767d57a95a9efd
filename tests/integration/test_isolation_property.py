"""An adversarial property test of issue 18: a Hypothesis state machine plays a hostile tenant — with its own token
only (a ServiceAccount bound to `admin` in its two namespaces, tests/support/hostile.py) — against the real API
server with the operator running. Each step is one action the tenant may try: create, change (class, count,
replicas, adapters) or delete ModelDeployments, within and beyond its quota (16 H100, no L4), deleted with
propagationPolicy Orphan too; delete and re-create their Model; create Deployments, ReplicaSets, bare Pods and
ReplicationControllers with or without GPUs, named like llmos's children, some with llmos's labels or an injected
init container and PYTHONPATH; plant a Service, `<name>-adapters` ConfigMap or PDB under a child's name; finalizers
(`orphan`), labels, template patches, scales and orphaning deletes on llmos's Deployments, ReplicaSets and pods;
NetworkPolicies with `egress: [{}]`; deleting llmos's NetworkPolicies. The API server may refuse any of them
(recorded and printed, expected).

After every step, whatever was accepted, three properties hold (checked with the cluster admin's reads only):
1. GPUs per class of the tenant's live, scheduled pods (from a pod watch) never exceed its quota for that class,
   outside the intruder window (a pod not of an llmos Deployment is counted once it has been scheduled for
   INTRUDER_WINDOW seconds; llmos's pods are counted from the moment they are scheduled);
2. no llmos Deployment (controlled by a ModelDeployment) carries a pod template field llmos does not render: no init
   container, no container but `runtime`, no environment variable or volume of another name, no template field
   owned by another field manager;
3. the operator never writes an object it did not create: what the tenant created never gets a managedFields entry
   of the operator's field manager nor a controller ownerReference to a ModelDeployment or Tenant.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from kubernetes import client

from tests.support.gpu_pod_timeline import (
    GPU_PRODUCTS,
    INTRUDER_WINDOW,
    MD_LABEL,
    GpuPodTimeline,
    peak_held,
    quota_breaches,
)
from tests.support.hostile import (  # noqa: F401 — fixtures
    GPU,
    GROUP,
    VERSION,
    container,
    platform,
    pod_spec,
    tenant_admin,
    tenant_namespaces,
    workload,
)
from tests.support.waiting import wait_for

# CI budget: about 2-3 minutes of wall time for this file on 2 cores (runs × steps × (one API call + SETTLE_SECONDS
# + the checks), plus a clean-up of ~10 s per run). Derandomized, so a failure replays; no shrinking by default
# (each shrink step is a run on the cluster: LLMOS_PROPERTY_SHRINK=1 turns it on to minimise a failure).
RUNS = int(os.environ.get("LLMOS_PROPERTY_RUNS", "5"))  # more for a longer hunt outside CI
STEPS = 15
LEDGER_TIMEOUT = 60.0  # after a run, until the tenant's ledger is empty again (watches, not the 10-min resync)
SETTLE_SECONDS = 1.0  # the operator's reaction to a step before the checks (the watch-based check covers the rest)

FIELD_MANAGER = "llmos"  # operator/llmos_operator/kube/client.py
NAMES = ("chat", "batch")  # a small pool: tenant workloads collide with the ModelDeployments' children
RENDERED_ENV = {"LLMOS_POD_NAME", "LLMOS_POD_NAMESPACE"}  # render/model_deployment.py
RENDERED_VOLUMES = {"cache", "trust", "adapters", "dshm"}  # and pvc-<claim>
LLMOS_NETWORK_POLICIES = ("llmos-tenant-isolation", "llmos-tenant-egress")

namespace_index = st.integers(0, 1)
names = st.sampled_from(NAMES)
# Hypothesis leans towards the first element of a sampled_from: the biggest asks first, so that the tenant's
# ModelDeployments press against its quota (16 H100, no L4) and go past it.
gpu_classes = st.sampled_from(["h100", "l4"])
gpu_counts = st.sampled_from([8, 4, 2, 1])
replica_counts = st.sampled_from([2, 3, 1, 0])


def _model_deployment(name: str, gpu_class: str, count: int, replicas: int, adapter: str | None) -> dict:
    spec = {"model": "m", "replicas": replicas, "gpu": {"class": gpu_class, "count": count}}
    if adapter:
        spec["adapters"] = [adapter]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec}


MODEL = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "m"},
         "spec": {"source": {"uri": "hf://org/m"}, "signature": {"policy": "Disabled"},
                  "adapters": [{"name": "sql", "source": {"uri": "hf://org/sql"}}]}}


def _gpu_pod(gpu_class: str, count: int, inject: bool) -> dict:
    """A pod template asking for `count` GPUs of `gpu_class` (none: a plain pod, which the policies let through),
    with an init container and PYTHONPATH when `inject`."""
    extra = {"env": [{"name": "PYTHONPATH", "value": "/evil"}]} if inject else {}
    if not count:
        spec = pod_spec(container("runtime", "registry.example/app:1", **extra))
    else:
        main = container("runtime", "registry.example/cuda:12",
                         resources={"limits": {GPU: str(count)}, "requests": {GPU: str(count)}}, **extra)
        spec = pod_spec(main, nodeSelector={"nvidia.com/gpu.product": GPU_PRODUCTS[gpu_class]},
                        tolerations=[{"key": GPU, "operator": "Equal", "value": "present", "effect": "NoSchedule"}])
    if inject:
        spec["initContainers"] = [container("plant", "registry.example/evil:1")]
    return spec


def _message(exc: client.ApiException) -> str:
    try:
        return json.loads(exc.body).get("message", "")[:300]
    except (TypeError, ValueError):
        return str(exc.reason)


def _foreign_template_fields(dep: client.V1Deployment) -> list[str]:
    """What the Deployment's pod template has that render_deployment does not write, and template fields another
    field manager owns."""
    spec = dep.spec.template.spec
    name = f"Deployment {dep.metadata.namespace}/{dep.metadata.name}"
    found = [f"{name}: init container {c.name}" for c in spec.init_containers or []]
    found += [f"{name}: container {c.name}" for c in spec.containers if c.name != "runtime"]
    found += [f"{name}: env {e.name} in {c.name}" for c in spec.containers for e in c.env or []
              if e.name not in RENDERED_ENV]
    found += [f"{name}: envFrom in {c.name}" for c in spec.containers if c.env_from]
    found += [f"{name}: volume {v.name}" for v in spec.volumes or []
              if v.name not in RENDERED_VOLUMES and not v.name.startswith("pvc-")]
    for entry in dep.metadata.managed_fields or []:
        if entry.manager != FIELD_MANAGER and "f:template" in ((entry.fields_v1 or {}).get("f:spec") or {}):
            found.append(f"{name}: template fields of field manager {entry.manager} ({entry.operation})")
    return found


class HostileTenant(RuleBasedStateMachine):
    """One run: the tenant's actions (rules) and the properties (the invariant). The test sets `world`."""

    world: dict = {}

    def __init__(self):
        super().__init__()
        w = self.world
        self.namespaces: list[str] = w["namespaces"]
        api = w["tenant"].api
        self.custom, self.apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
        self.core, self.net = client.CoreV1Api(api), client.NetworkingV1Api(api)
        self.policy = client.PolicyV1Api(api)
        self.admin_apps, self.admin_core = client.AppsV1Api(w["admin"]), client.CoreV1Api(w["admin"])
        self.created: list[tuple[str, str, str, str]] = []  # (kind, namespace, name, uid) the tenant created
        self.steps: list[str] = []

    # --- the tenant's actions ----------------------------------------------------------------------------------------

    def _act(self, action: str, call, *, kind: str | None = None) -> None:
        """One API call with the tenant's token; a refusal is recorded, as is what the tenant managed to create.
        The action's words before its namespace/name are its category in the test's summary."""
        words = action.split()
        category = " ".join(words[:next((n for n, word in enumerate(words) if "/" in word), len(words))])
        try:
            made = call()
        except client.ApiException as exc:
            policy = re.search(r"ValidatingAdmissionPolicy '([^']+)'", _message(exc))
            outcome = f"refused {exc.status}" + (f" by {policy.group(1)}" if policy else "")
            self.world["outcomes"][(category, outcome)] += 1
            self.world["refusals"].setdefault((category, outcome), _message(exc))
            self.steps.append(f"{action}: refused ({exc.status}: {_message(exc)})")
            return
        self.world["outcomes"][(category, "accepted")] += 1
        self.steps.append(f"{action}: accepted")
        if kind is not None:
            meta = made.metadata
            self.created.append((kind, meta.namespace, meta.name, meta.uid))

    @initialize(name=names, count=gpu_counts, replicas=st.sampled_from([2, 1]),
                second=st.tuples(names, gpu_classes, gpu_counts, replica_counts))
    def serving(self, name, count, replicas, second):
        """Models in both namespaces and one admitted ModelDeployment serving, so that llmos's objects are there to
        be attacked from the first step; a second one in the other namespace, often beyond what the quota has
        left."""
        for ns in self.namespaces:
            self._act(f"create Model {ns}/m", lambda ns=ns: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, "models", MODEL))
        ns = self.namespaces[0]
        self.create_model_deployment(0, name, "h100", count, replicas, None)
        wait_for(lambda: len(self.admin_core.list_namespaced_pod(ns, label_selector=f"{MD_LABEL}={name}").items)
                 == replicas, timeout=60, message=f"the pods of ModelDeployment {name}")
        self.create_model_deployment(1, *second, None)

    @rule(i=namespace_index, name=names, gpu_class=gpu_classes, count=gpu_counts, replicas=replica_counts,
          adapter=st.sampled_from([None, "sql", "unknown"]))
    def create_model_deployment(self, i, name, gpu_class, count, replicas, adapter):
        """Create it, or change the spec of the one of that name (class, count, replicas, adapters)."""
        ns = self.namespaces[i]
        body = _model_deployment(name, gpu_class, count, replicas, adapter)
        if self._exists(ns, "modeldeployments", name):  # a create would only meet AlreadyExists: change it instead
            self._act(f"replace ModelDeployment {ns}/{name} spec by {replicas}×{gpu_class}×{count} adapter={adapter}",
                      lambda: self.custom.patch_namespaced_custom_object(
                          GROUP, VERSION, ns, "modeldeployments", name, {"spec": body["spec"]}))
            return
        self._act(f"create ModelDeployment {ns}/{name} {replicas}×{gpu_class}×{count} adapter={adapter}",
                  lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", body))

    def _exists(self, ns: str, plural: str, name: str) -> bool:
        try:
            client.CustomObjectsApi(self.world["admin"]).get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
            return True
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def _pick_model_deployment(self, pick: int) -> tuple[str, str] | None:
        """One of the ModelDeployments there are (listing them is reading: the checker's client may)."""
        custom = client.CustomObjectsApi(self.world["admin"])
        there = sorted((ns, md["metadata"]["name"]) for ns in self.namespaces
                       for md in custom.list_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments")["items"])
        return there[pick % len(there)] if there else None

    @rule(pick=st.integers(0, 3), policy=st.sampled_from(["Background", "Orphan"]))
    def delete_model_deployment(self, pick, policy):
        if (target := self._pick_model_deployment(pick)) is None:
            self.world["outcomes"][("delete ModelDeployment", "none there")] += 1
            return
        ns, name = target
        self._act(f"delete ModelDeployment {ns}/{name} propagationPolicy={policy}",
                  lambda: self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", name,
                                                                      propagation_policy=policy))

    @rule(i=namespace_index)
    def model(self, i):
        """The Model under the namespace's deployments: deleted when there, created again when not."""
        ns = self.namespaces[i]
        if self._exists(ns, "models", "m"):
            self._act(f"delete Model {ns}/m", lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, ns, "models", "m"))
        else:
            self._act(f"create Model {ns}/m", lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, "models", MODEL))

    @rule(i=namespace_index, kind=st.sampled_from(["Deployment", "ReplicaSet", "Pod", "ReplicationController"]),
          name=names, llmos_labels=st.booleans(), gpu_class=gpu_classes, count=st.sampled_from([0, 1, 4, 8]),
          replicas=st.integers(0, 2), inject=st.booleans())
    def create_gpu_workload(self, i, kind, name, llmos_labels, gpu_class, count, replicas, inject):
        from llmos_operator.api.names import child_labels

        ns = self.namespaces[i]
        labels = child_labels(name) if llmos_labels else {"app": name}
        body = workload(kind, name, labels=labels, replicas=replicas, pod=_gpu_pod(gpu_class, count, inject))
        create = {"Deployment": self.apps.create_namespaced_deployment,
                  "ReplicaSet": self.apps.create_namespaced_replica_set, "Pod": self.core.create_namespaced_pod,
                  "ReplicationController": self.core.create_namespaced_replication_controller}[kind]
        self._act(f"create {kind} {ns}/{name} {replicas}×{gpu_class}×{count} llmos-labels={llmos_labels} "
                  f"injected={inject}", lambda: create(ns, body), kind=kind)

    @rule(kind=st.sampled_from(["Deployment", "ReplicaSet", "Pod"]), pick=st.integers(0, 7),
          action=st.sampled_from(["finalizer", "label", "unlabel", "inject", "scale", "delete-orphan"]))
    def tamper_with_llmos_object(self, kind, pick, action):
        list_them = {"Deployment": self.admin_apps.list_namespaced_deployment,
                     "ReplicaSet": self.admin_apps.list_namespaced_replica_set,
                     "Pod": self.admin_core.list_namespaced_pod}[kind]
        # Picking the target is reading, not acting: the checker's client may do it.
        targets = sorted((ns, o.metadata.name) for ns in self.namespaces
                         for o in list_them(ns, label_selector=MD_LABEL).items)
        if not targets:
            self.steps.append(f"{action} on an llmos {kind}: none there")
            self.world["outcomes"][(f"{action} on llmos's {kind}", "none there")] += 1
            return
        ns, target = targets[pick % len(targets)]
        patches = {"finalizer": {"metadata": {"finalizers": ["orphan"]}},
                   "label": {"metadata": {"labels": {MD_LABEL: "stolen", "mine": "yes"}}},
                   "unlabel": {"metadata": {"labels": {"app.kubernetes.io/managed-by": None}}},
                   "inject": {"spec": {"template": {"spec": {
                       "initContainers": [container("plant", "registry.example/evil:1")]}}}}}
        resource = {"Deployment": "deployment", "ReplicaSet": "replica_set", "Pod": "pod"}[kind]
        api = self.core if kind == "Pod" else self.apps
        if action == "delete-orphan":
            call = lambda: getattr(api, f"delete_namespaced_{resource}")(  # noqa: E731
                target, ns, propagation_policy="Orphan")
        elif action == "scale" and kind != "Pod":
            call = lambda: getattr(api, f"patch_namespaced_{resource}_scale")(  # noqa: E731
                target, ns, {"spec": {"replicas": 3}})
        elif action in ("inject", "scale") and kind == "Pod":
            call = lambda: api.patch_namespaced_pod(target, ns, {"metadata": {"annotations": {  # noqa: E731
                "llmos.dev/adapters": json.dumps({"loaded": ["forged"]})}}})
        else:
            call = lambda: getattr(api, f"patch_namespaced_{resource}")(target, ns, patches[action])  # noqa: E731
        self._act(f"{action} on llmos's {kind} {ns}/{target}", call)

    @rule(i=namespace_index, name=names, kind=st.sampled_from(["Service", "ConfigMap", "PodDisruptionBudget"]),
          llmos_labels=st.booleans())
    def plant_child(self, i, name, kind, llmos_labels):
        """An object with the name of a ModelDeployment's child (`<name>`, `<name>-adapters`), before or after it."""
        from llmos_operator.api.names import child_labels

        ns = self.namespaces[i]
        labels = child_labels(name) if llmos_labels else {"app": name}
        if kind == "Service":
            body = {"metadata": {"name": name, "labels": labels},
                    "spec": {"selector": child_labels(name), "ports": [{"name": "openai", "port": 8000}]}}
        elif kind == "ConfigMap":
            body = {"metadata": {"name": f"{name}-adapters", "labels": labels},
                    "data": {"adapters.json": json.dumps({"adapters": [
                        {"name": "sql", "source": {"uri": "hf://evil/sql"}, "signature": None}]})}}
        else:
            body = {"metadata": {"name": name, "labels": labels},
                    "spec": {"maxUnavailable": 0, "selector": {"matchLabels": child_labels(name)}}}
        create = {"Service": self.core.create_namespaced_service, "ConfigMap": self.core.create_namespaced_config_map,
                  "PodDisruptionBudget": self.policy.create_namespaced_pod_disruption_budget}[kind]
        self._act(f"create {kind} {ns}/{body['metadata']['name']} llmos-labels={llmos_labels}",
                  lambda: create(ns, body), kind=kind)

    @rule(i=namespace_index, name=st.sampled_from(["open", *LLMOS_NETWORK_POLICIES]), delete=st.booleans())
    def network_policy(self, i, name, delete):
        """`egress: [{}]` would void the platform's egress rules; llmos's NetworkPolicies are the platform's."""
        ns = self.namespaces[i]
        if delete:
            self._act(f"delete NetworkPolicy {ns}/{name}",
                      lambda: self.net.delete_namespaced_network_policy(name, ns))
            return
        body = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}}
        self._act(f"create NetworkPolicy {ns}/{name} egress: [{{}}]",
                  lambda: self.net.create_namespaced_network_policy(ns, body), kind="NetworkPolicy")

    # --- the properties ------------------------------------------------------------------------------------------

    @invariant()
    def isolation_holds(self):
        time.sleep(SETTLE_SECONDS)
        w = self.world
        breaches = quota_breaches(w["timeline"].snapshot(), w["quota"], w["tenant_of"], time.monotonic())
        assert not breaches, self._report("GPUs beyond the quota", breaches)
        ours = [d for ns in self.namespaces for d in self.admin_apps.list_namespaced_deployment(ns).items
                if _controlled_by_llmos(d.metadata)]
        w["checked"].update({"checks": 1, "llmos Deployments": len(ours), "tenant objects": len(self.created)})
        foreign = [f for d in ours for f in _foreign_template_fields(d)]
        assert not foreign, self._report("fields llmos did not render in its Deployments", foreign)
        written = self._operator_writes_to_tenant_objects()
        assert not written, self._report("operator writes to objects it did not create", written)

    def _operator_writes_to_tenant_objects(self) -> list[str]:
        read = {kind: calls[0] for kind, calls in _by_kind(self.world["admin"]).items()}
        found = []
        for kind, ns, name, uid in self.created:
            try:
                meta = read[kind](name, ns).metadata
            except client.ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            if meta.uid != uid:
                continue
            managers = {e.manager for e in meta.managed_fields or []}
            if FIELD_MANAGER in managers:
                found.append(f"{kind} {ns}/{name}: managedFields of {FIELD_MANAGER}")
            if _controlled_by_llmos(meta):
                found.append(f"{kind} {ns}/{name}: an llmos controller ownerReference")
        return found

    def _report(self, what: str, found: list[str]) -> str:
        return f"{what}:\n  " + "\n  ".join(found[:10]) + "\nafter the steps:\n  " + "\n  ".join(self.steps)

    def teardown(self):
        """The next run starts clean: the run's objects deleted (as the platform: finalizers the tenant managed to
        add removed too), then no GPU pod left in the tenant's namespaces, and the properties checked once more
        over the intruder window."""
        deletes = {kind: calls[1] for kind, calls in _by_kind(self.world["admin"]).items()}
        for kind, ns, name, _ in self.created:
            _quietly(deletes[kind], name, ns)
        clean(self.world)
        time.sleep(INTRUDER_WINDOW / 2)  # pods seen late are counted up to the intruder window
        w = self.world
        breaches = quota_breaches(w["timeline"].snapshot(), w["quota"], w["tenant_of"], time.monotonic())
        assert not breaches, self._report("GPUs beyond the quota", breaches)


def _by_kind(api: client.ApiClient) -> dict[str, tuple]:
    """(read, delete) of each kind the tenant may create, with the cluster admin's client (the checker's)."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    net, policy = client.NetworkingV1Api(api), client.PolicyV1Api(api)
    return {
        "Deployment": (apps.read_namespaced_deployment, apps.delete_namespaced_deployment),
        "ReplicaSet": (apps.read_namespaced_replica_set, apps.delete_namespaced_replica_set),
        "Pod": (core.read_namespaced_pod, core.delete_namespaced_pod),
        "ReplicationController": (core.read_namespaced_replication_controller,
                                  core.delete_namespaced_replication_controller),
        "NetworkPolicy": (net.read_namespaced_network_policy, net.delete_namespaced_network_policy),
        "Service": (core.read_namespaced_service, core.delete_namespaced_service),
        "ConfigMap": (core.read_namespaced_config_map, core.delete_namespaced_config_map),
        "PodDisruptionBudget": (policy.read_namespaced_pod_disruption_budget,
                                policy.delete_namespaced_pod_disruption_budget),
    }


def _controlled_by_llmos(meta: client.V1ObjectMeta) -> bool:
    return any(r.controller and r.api_version.startswith(f"{GROUP}/") and r.kind in ("ModelDeployment", "Tenant")
               for r in meta.owner_references or [])


def clean(world: dict) -> None:
    admin = world["admin"]
    custom, apps, core = client.CustomObjectsApi(admin), client.AppsV1Api(admin), client.CoreV1Api(admin)
    net = client.NetworkingV1Api(admin)
    for ns in world["namespaces"]:
        for plural in ("modeldeployments", "models"):
            for obj in custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]:
                _quietly(custom.delete_namespaced_custom_object, GROUP, VERSION, ns, plural, obj["metadata"]["name"])
        for _kind, lister, patcher, deleter in (
                ("Deployment", apps.list_namespaced_deployment, apps.patch_namespaced_deployment,
                 apps.delete_namespaced_deployment),
                ("ReplicaSet", apps.list_namespaced_replica_set, apps.patch_namespaced_replica_set,
                 apps.delete_namespaced_replica_set),
                ("ReplicationController", core.list_namespaced_replication_controller,
                 core.patch_namespaced_replication_controller, core.delete_namespaced_replication_controller),
                ("Pod", core.list_namespaced_pod, core.patch_namespaced_pod, core.delete_namespaced_pod)):
            for obj in lister(ns).items:
                if obj.metadata.finalizers:
                    _quietly(patcher, obj.metadata.name, ns, {"metadata": {"finalizers": None}})
                _quietly(deleter, obj.metadata.name, ns, propagation_policy="Background")
        for policy in net.list_namespaced_network_policy(ns).items:
            if not policy.metadata.name.startswith("llmos-"):
                _quietly(net.delete_namespaced_network_policy, policy.metadata.name, ns)
    wait_for(lambda: not world["timeline"].live_gpu_pods() or None, timeout=90,
             message="no GPU pod left in the tenant's namespaces")
    wait_for(lambda: not any(custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
                             for ns in world["namespaces"] for plural in ("modeldeployments", "models")),
             timeout=60, message="the ModelDeployments and Models gone")
    started, left = time.monotonic(), None
    while time.monotonic() < started + LEDGER_TIMEOUT and (left := _reservations(custom, world["tenants"])):
        time.sleep(0.5)
    world["ledger_seconds"].append(time.monotonic() - started)
    assert not left, (f"the tenant's ledger still holds {left} {LEDGER_TIMEOUT:.0f} s after its ModelDeployments "
                      f"and pods were gone; Tenant conditions: {_conditions(custom, world['tenants'])}")


def _reservations(custom: client.CustomObjectsApi, tenants: set[str]) -> dict:
    out = {}
    for tenant in tenants:
        status = custom.get_cluster_custom_object(GROUP, VERSION, "tenants", tenant).get("status") or {}
        out.update(status.get("reservations") or {})
    return out


def _conditions(custom: client.CustomObjectsApi, tenants: set[str]) -> list:
    return [(c["type"], c["status"], c.get("reason"), c.get("message", "")[:200]) for tenant in tenants
            for c in (custom.get_cluster_custom_object(GROUP, VERSION, "tenants", tenant).get("status") or {})
            .get("conditions", [])]


def _quietly(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


def test_a_hostile_tenant_never_exceeds_its_quota_nor_gets_its_fields_into_llmos_objects(
        cluster, operator, tenant_admin, tenant_namespaces):
    namespaces = tenant_namespaces[:2]  # one Tenant's two namespaces: its quota counts both
    core, custom = client.CoreV1Api(cluster.api), client.CustomObjectsApi(cluster.api)
    tenant_of = {ns: core.read_namespace(ns).metadata.labels["llmos.dev/tenant"] for ns in namespaces}
    quota = {t: custom.get_cluster_custom_object(GROUP, VERSION, "tenants", t)["spec"]["quota"]["gpus"]
             for t in set(tenant_of.values())}
    timeline = GpuPodTimeline(cluster.api, namespaces)
    timeline.start()
    outcomes: Counter = Counter()
    HostileTenant.world = {"namespaces": namespaces, "tenant": tenant_admin, "admin": cluster.api,
                           "timeline": timeline, "quota": quota, "tenant_of": tenant_of,
                           "tenants": set(tenant_of.values()), "outcomes": outcomes,
                           "checked": Counter(), "refusals": {}, "ledger_seconds": []}
    phases = list(Phase) if os.environ.get("LLMOS_PROPERTY_SHRINK") else [Phase.explicit, Phase.generate]
    started = time.monotonic()
    try:
        run_state_machine_as_test(HostileTenant, settings=settings(
            max_examples=RUNS, stateful_step_count=STEPS, deadline=None, derandomize=True, database=None,
            phases=phases, suppress_health_check=list(HealthCheck)))
    finally:
        timeline.stop()
    print(f"\npeak GPUs held per (tenant, class): {peak_held(timeline.snapshot(), tenant_of, time.monotonic())} "
          f"of quotas {quota}")
    print(f"{RUNS} runs × up to {STEPS} steps in {time.monotonic() - started:.0f} s; "
          f"GPU pods seen: {len(timeline.pods)}; checked: {dict(HostileTenant.world['checked'])}; the ledger empty "
          f"after each run's clean-up in {max(HostileTenant.world['ledger_seconds'], default=0):.1f} s at most")
    for (action, outcome), n in sorted(outcomes.items(), key=lambda kv: kv[0]):
        print(f"  {n:3d} {action}: {outcome}")
        if outcome.startswith("refused") and not outcome.startswith("refused 403"):
            print(f"        e.g. {HostileTenant.world['refusals'].get((action, outcome), '')[:200]}")
    accepted = sum(n for (_, outcome), n in outcomes.items() if outcome == "accepted")
    refused = sum(n for (_, outcome), n in outcomes.items() if outcome != "accepted")
    assert accepted and refused, outcomes  # the machine both did things and was stopped from doing others
    assert any(p.llmos and p.scheduled for p in timeline.pods.values()), "no llmos GPU pod ever ran: nothing tested"


