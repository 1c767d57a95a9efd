"""An in-memory world for the controller: the real Manager (reconcilers, admission, triggers, store) on the
in-memory API of tests/support/memory_api.py, filled through the builders of tests/support/builders.py. No cluster:
for unit tests of what the controller decides and writes (tests/unit/test_admission_scope.py,
tests/unit/test_reconcilers.py) and bench/admission.py. Keys are handled only when a test says so
(``handle``/``run_admission``/``drain``): no worker threads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from llmos_operator.config import OperatorConfig, default_config
from llmos_operator.controller.manager import Manager
from llmos_operator.controller.state import ADMISSION
from llmos_operator.core.quota import Decision

from . import builders
from .memory_api import MemoryAPI

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # deployments are created a second apart from here


class World:
    """Tenants, namespaces, Models (unsigned, served) and ModelDeployments in the in-memory API, and the manager
    reading them."""

    def __init__(self, config: OperatorConfig | None = None) -> None:
        self.api = MemoryAPI()
        self.config = config or default_config()
        self.manager = Manager(self.api, self.config)  # type: ignore[arg-type]
        self.api.attach(self.manager.store)
        self.created = 0

    # Compatibility names used by the tests and the admission benchmark
    @property
    def store(self):  # noqa: ANN201
        return self.manager.store

    @property
    def kube(self) -> MemoryAPI:
        return self.api

    @property
    def decisions(self) -> dict[str, Decision]:
        return {k: d for k, (_, d) in self.manager.ctx.state.decisions().items()}

    # Builders ------------------------------------------------------------------------------------------------------

    def tenant(self, name: str, namespaces: list[str], quota: dict[str, int], priority: int = 0, **kw) -> None:
        old = self.api.get("Tenant", name)
        kw.setdefault("policy", {"allowUnsignedModels": True})  # its Models are unsigned (no keys in this world)
        obj = builders.tenant(name, namespaces, quota, priority=priority, **kw)
        if old is not None:
            obj["status"] = old.get("status") or {}
        self.api.put(obj)
        for ns in namespaces:
            if self.api.get("Namespace", ns) is None:
                self.api.put(builders.namespace(ns, name))
                self.api.put(builders.unsigned_model(ns))

    def deploy(self, ns: str, name: str, replicas: int, count: int, gpu_class: str, **spec) -> None:
        old = self.api.get("ModelDeployment", name, ns)
        self.created += 1
        created = (old["metadata"]["creationTimestamp"] if old
                   else (EPOCH + timedelta(seconds=self.created)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        obj = builders.model_deployment(ns, name, replicas=replicas, gpus=count, gpu_class=gpu_class,
                                        created=created, **spec)
        if old is not None:
            obj["status"] = old.get("status") or {}
        self.api.put(obj)

    def delete(self, ns: str, name: str, kind: str = "ModelDeployment") -> None:
        self.api.delete(kind, name, ns)

    def node(self, name: str, gpu_class: str = "h100") -> None:
        labels = self.config.gpu_classes[gpu_class].node_labels
        product = next(iter(labels.values()))
        self.api.put(builders.gpu_node(name, product=product))

    def pod(self, ns: str, mdep: str, name: str, gpus: int, event: str = "ADDED", *,
            gpu_class: str = "h100") -> None:
        """A running pod of ``mdep`` holding ``gpus`` on a node of ``gpu_class``, through llmos's own chain (the
        Deployment the operator would have made, controlled by the ModelDeployment, and a ReplicaSet of it); it has
        a finalizer, so deleting its ModelDeployment leaves it terminating, as a draining pod is. ``event`` DELETED
        removes it for good."""
        if event == "DELETED":
            self.api.merge_patch("Pod", name, ns, {"metadata": {"finalizers": None}})
            self.api.delete("Pod", name, ns)
            return
        node = f"node-{gpu_class}"
        if self.api.get("Node", node) is None:
            self.node(node, gpu_class)
        owner = self.api.get("ModelDeployment", mdep, ns)
        labels = {"llmos.dev/model-deployment": mdep, "app.kubernetes.io/managed-by": "llmos"}
        deployment = self.api.get("Deployment", mdep, ns) or self.api.put(builders.workload(
            "Deployment", ns, mdep, labels=labels, owner=builders.owner_ref(owner, "llmos.dev/v1alpha1")))
        rs = self.api.get("ReplicaSet", f"{mdep}-rs", ns) or self.api.put(builders.workload(
            "ReplicaSet", ns, f"{mdep}-rs", labels=labels, owner=builders.owner_ref(deployment, "apps/v1")))
        obj = builders.pod(ns, name, gpus=gpus, labels=labels, node=node, owner=builders.owner_ref(rs, "apps/v1"))
        obj["metadata"]["finalizers"] = ["llmos.dev/test-hold"]
        self.api.put(obj)

    # Running the controller ----------------------------------------------------------------------------------------

    def handle(self, *key) -> list[tuple]:
        """Run one key; the writes (but Events) it made."""
        before = len(self.api.writes)
        self.manager.handle(tuple(key))
        return self.api.writes[before:]

    def run_admission(self) -> list[tuple]:
        return self.handle(*ADMISSION)

    def drain(self, rounds: int = 10_000) -> None:
        """Handle every key queued, as the workers would, until nothing is left (delayed keys are not waited for)."""
        queue = self.manager.queue
        for _ in range(rounds):
            key = queue.get(timeout=0)
            if key is None:
                return
            try:
                self.manager.handle(key)
            finally:
                queue.done(key)
        raise AssertionError("the queue did not drain")

