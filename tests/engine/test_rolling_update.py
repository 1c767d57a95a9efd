"""End to end on real vLLM (issue 11): a Model revision bump is rolled by the real Deployment controller and the
operator while requests keep flowing, and none fails.

The parts: the local control plane and the operator under test (tests/support/cluster_fixtures.py, the same ones
the integration tests use); a Tenant that requires signatures, owning the namespace `llmos-kubelet-<suffix>`, whose
pods tests/support/process_kubelet.py runs as local `llmos-runtime` processes (KWOK leaves that namespace alone);
a load balancer (tests/support/lb.py) routing only to pods the kubelet reports Ready and not deleting, like a
Service's endpoints behind a gateway that retries a refused request; a load generator (tests/support/load.py) sending
completions, chats and streams through it. Nothing is mocked: the weights are tiny models signed by the test key
(tests/support/tiny_model.py), verified by the operator (Model status) and by each runtime before vLLM starts.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from kubernetes import client

from tests.engine.conftest import record
from tests.support.cluster_fixtures import Objects
from tests.support.lb import RoundRobinLB
from tests.support.load import LoadGenerator
from tests.support.process_kubelet import ProcessKubelet, force_delete_pods
from tests.support.tiny_model import TestModels
from tests.support.waiting import wait_for

pytestmark = pytest.mark.engine

# The rollout is what is tested here; API keys have their tests on real vLLM in test_runtime_serve.py.
NO_KEYS = {"apiKeys": "Disabled"}
# CPU mode through the ModelDeployment's own fields (allow-listed engine flags): the rendered pod command already
# carries them. tensorParallelSize is gpu.count (1).
CPU_ENGINE = {"maxModelLen": 512, "extraArgs": ["--dtype", "float32"]}
ENGINE_START_TIMEOUT = 300  # one engine start: 1-3 min on 2 shared cores
# The new revision's engine starts while the old one serves the load: up to 5 min seen with other work beside it.
ROLL_TIMEOUT = 2 * ENGINE_START_TIMEOUT


def _root_digest(bundle: bytes, public_pem: bytes) -> str:
    from llmos_signing import verify_bundle

    return "sha256:" + verify_bundle(bundle, {"signer.pem": public_pem}).root_digest


def _bundle_configmap(core: client.CoreV1Api, namespace: str, name: str, bundle: bytes) -> None:
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name), binary_data={"model.sig": base64.b64encode(bundle).decode()}))


class EndpointSync:
    """Keeps the load balancer's backends equal to the pods the kubelet reports Ready and not deleting (what the
    EndpointSlice controller does for a Service)."""

    def __init__(self, kubelet: ProcessKubelet, lb: RoundRobinLB, period: float = 0.2):
        self.kubelet, self.lb, self.period = kubelet, lb, period
        self.routed: dict[str, str] = {}  # pod -> api URL
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpoint-sync", daemon=True)

    def start(self) -> EndpointSync:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            want = {n: e for n, e in self.kubelet.endpoints().items() if e.ready and not e.deleting}
            for name, api in list(self.routed.items()):
                if name not in want or want[name].api != api:
                    self.lb.remove(name)
                    del self.routed[name]
            for name, e in want.items():
                if name not in self.routed:
                    self.lb.add(name, e.api, e.health)
                    self.routed[name] = e.api
            time.sleep(self.period)


def _served_digests(kubelet: ProcessKubelet) -> dict[str, str | None]:
    """The digest each ready, not deleting pod's /readyz names (asked now, not cached)."""
    out = {}
    for name, e in kubelet.endpoints().items():
        if e.ready and not e.deleting:
            try:
                out[name] = httpx.get(e.health + "/readyz", timeout=3).json().get("digest")
            except (httpx.HTTPError, ValueError):
                pass
    return out


@dataclass
class KubeletTenant:
    """A tenant that serves signed models only (trusting the test key), owning one namespace whose pods the process
    kubelet runs."""

    namespace: str
    objects: Objects
    kubelet: ProcessKubelet
    core: client.CoreV1Api
    bundles: dict[str, bytes]
    digests: dict[str, str]

    def explain(self) -> str:
        """What the pods and the kubelet did, for a failure message."""
        pods = {p.metadata.name: (p.status.phase, [(c.type, c.status) for c in p.status.conditions or []])
                for p in self.core.list_namespaced_pod(self.namespace).items}
        tail = {n: self.kubelet.logs(n, 25) for n in self.kubelet.endpoints()}
        return (f"\npods: {pods}\nkubelet:\n" + "\n".join(self.kubelet.events[-40:]) + "\n"
                + "\n".join(f"--- {n}\n{t}" for n, t in tail.items()))

    def wait(self, predicate, timeout: float, message: str):
        try:
            return wait_for(predicate, timeout=timeout, interval=1, message=message)
        except pytest.fail.Exception as exc:
            if "\nkubelet:\n" in str(exc):  # explained already
                raise
            pytest.fail(f"{exc}{self.explain()}")


@pytest.fixture
def kubelet_tenant(cluster, operator, test_models: TestModels, tmp_path) -> Iterator[KubeletTenant]:
    suffix = uuid.uuid4().hex[:6]
    namespace = f"llmos-kubelet-{suffix}"
    core = client.CoreV1Api(cluster.api)
    objects = Objects(cluster.api, namespace)
    pem = test_models.public_key.read_bytes()
    bundles = {rev: (d / "model.sig").read_bytes() for rev, d in (("v1", test_models.model_v1),
                                                                   ("v2", test_models.model_v2))}
    digests = {rev: _root_digest(b, pem) for rev, b in bundles.items()}
    assert digests["v1"] != digests["v2"]
    kubelet = ProcessKubelet(cluster.api, namespace, tmp_path / "kubelet").start()
    try:
        objects.tenant(f"kubelet-{suffix}", gpus={"h100": 2}, namespaces=[namespace],
                       policy={"allowUnsignedModels": False},
                       trustedKeys=[{"name": "signer", "publicKey": pem.decode()}])
        wait_for(lambda: _service_account_exists(core, namespace), timeout=60,
                 message=f"namespace {namespace} made by the operator, with the runtime's ServiceAccount")
        yield KubeletTenant(namespace, objects, kubelet, core, bundles, digests)
    finally:
        kubelet.close()
        objects.cleanup()
        force_delete_pods(cluster.api, namespace)


@pytest.mark.timeout(ENGINE_START_TIMEOUT + ROLL_TIMEOUT + 300)
def test_a_revision_bump_rolls_without_a_failed_request(kubelet_tenant: KubeletTenant, cluster,
                                                        test_models: TestModels):
    kt = kubelet_tenant
    namespace, objects, kubelet, core, digests = kt.namespace, kt.objects, kt.kubelet, kt.core, kt.digests
    apps = client.AppsV1Api(cluster.api)
    lb = RoundRobinLB(check_interval=0.2).start()
    sync = EndpointSync(kubelet, lb).start()
    load: LoadGenerator | None = None
    try:
        # Revision 1, signed; a deployment of one replica that may surge one more during a rollout.
        _bundle_configmap(core, namespace, "m-v1-sig", kt.bundles["v1"])
        objects.model("m", policy="Required", source={"uri": f"file://{test_models.model_v1}", "revision": "v1"},
                      signature={"bundleRef": {"name": "m-v1-sig", "key": "model.sig"}})
        objects.wait_condition("models", "m", "Verified", "True", timeout=60)
        assert objects.get("models", "m")["status"]["digest"] == digests["v1"]
        objects.deployment("d", model="m", replicas=1, engine=CPU_ENGINE, access=NO_KEYS,
                           rollout={"maxSurge": 1, "maxUnavailable": 0})

        started = time.monotonic()
        kt.wait(lambda: list(_served_digests(kubelet).values()) == [digests["v1"]], ENGINE_START_TIMEOUT,
                "revision 1 served by one ready pod")
        record("rolling update: first pod ready after (s)", round(time.monotonic() - started, 1))
        objects.wait_condition("modeldeployments", "d", "Ready", "True", timeout=60)
        (old_pod,) = kubelet.endpoints()
        deployment_uid = apps.read_namespaced_deployment("d", namespace).metadata.uid

        load = LoadGenerator(lb.url, "m", workers=2, pause=0.1, max_seconds=600, timeout=120).start()
        wait_for(lambda: load.stats.ok >= 6, timeout=60, message="requests served before the bump")

        # Revision 2: new weights, new bundle. The operator verifies it and renders the new pod template; the
        # Deployment controller surges a new pod and scales the old one down once the new one is Ready; the old
        # one drains (preStop, SIGTERM, in-flight requests finish) while the load balancer sends it nothing new.
        bumped = time.monotonic()
        _bundle_configmap(core, namespace, "m-v2-sig", kt.bundles["v2"])
        objects.patch("models", "m", {"spec": {
            "source": {"uri": f"file://{test_models.model_v2}", "revision": "v2"},
            "signature": {"bundleRef": {"name": "m-v2-sig", "key": "model.sig"}}}})
        wait_for(lambda: objects.get("models", "m").get("status", {}).get("digest") == digests["v2"], timeout=60,
                 message="Model status.digest of revision 2")
        seen_digests: set[str | None] = set()

        def rolled() -> bool:
            _same_deployment(apps, namespace, deployment_uid, kt)
            served = _served_digests(kubelet)
            seen_digests.update(served.values())
            return (list(served.values()) == [digests["v2"]] and old_pod not in kubelet.endpoints()
                    and old_pod not in {p.metadata.name for p in core.list_namespaced_pod(namespace).items})

        kt.wait(rolled, ROLL_TIMEOUT, "revision 2 served by one ready pod, the old pod drained and gone")
        roll_seconds = time.monotonic() - bumped
        # The status follows the pod's deletion by a reconcile: wait for it rather than read it at once.
        kt.wait(lambda: (lambda st: st.get("modelDigest") == digests["v2"] and any(
            c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or []))(
            objects.get("modeldeployments", "d").get("status") or {}), 60, "Ready on revision 2's digest")
        endpoints = kubelet.endpoints()
        assert list(endpoints) != [old_pod] and len(endpoints) == 1, f"pods after the roll: {endpoints}{kt.explain()}"
        (new_pod,) = endpoints

        # A few more requests on the new pod alone, then the verdict.
        served_before = load.stats.ok
        kt.wait(lambda: load.stats.ok >= served_before + 6, 60, "requests after the roll")
        stats = load.stop()
        load = None
        kt.wait(lambda: (lambda st: st.updated_replicas == 1 and st.ready_replicas == 1)(
            apps.read_namespaced_deployment("d", namespace).status), 30, "the Deployment's status: 1 updated, 1 ready")
        record("rolling update: requests", stats.sent)
        record("rolling update: streams", stats.streams)
        record("rolling update: failed", stats.failed)
        record("rolling update: by pod", stats.backends)
        record("rolling update: LB retries (503/refused before any work)", lb.stats.retried)
        record("rolling update: roll time, Model patch to old pod gone (s)", round(roll_seconds, 1))
        _same_deployment(apps, namespace, deployment_uid, kt)
        problems = []
        if stats.failed:
            problems.append(f"{stats.failed} requests failed: {stats.failures}")
        if not (stats.backends.get(old_pod, 0) > 0 and stats.backends.get(new_pod, 0) > 0):
            problems.append(f"requests by pod (both should have served): {stats.backends}")
        if not seen_digests <= {digests["v1"], digests["v2"]}:
            problems.append(f"digests served besides v1 and v2: {seen_digests}")  # nothing else was ever served
        if kubelet.restart_counts().get(new_pod) != 0:
            problems.append(f"restarts: {kubelet.restart_counts()}")
        assert not problems, "\n".join(problems) + kt.explain()
    finally:
        if load is not None:
            load.stop()
        sync.stop()
        lb.stop()


def test_a_runtime_that_fails_is_restarted_and_its_message_reaches_the_status(kubelet_tenant: KubeletTenant,
                                                                              test_models: TestModels):
    """The revision-2 weights behind revision 1's bundle: the bundle verifies (the operator's check), the files do
    not (the runtime's, before vLLM starts). The kubelet restarts the runtime with back-off and records its
    termination message, which the operator reports on the ModelDeployment. No engine starts: quick."""
    kt = kubelet_tenant
    _bundle_configmap(kt.core, kt.namespace, "m-v1-sig", kt.bundles["v1"])
    kt.objects.model("m", policy="Required", source={"uri": f"file://{test_models.model_v2}"},
                     signature={"bundleRef": {"name": "m-v1-sig", "key": "model.sig"}})
    kt.objects.wait_condition("models", "m", "Verified", "True", timeout=60)
    kt.objects.deployment("d", model="m", replicas=1, engine=CPU_ENGINE, access=NO_KEYS)

    def failed_and_restarted():
        for pod in kt.core.list_namespaced_pod(kt.namespace).items:
            for cs in pod.status.container_statuses or []:
                term = cs.last_state.terminated if cs.last_state else None
                if cs.restart_count >= 1 and term is not None:
                    return pod, cs, term
        return None

    pod, cs, term = kt.wait(failed_and_restarted, 120, "a restarted runtime with its last termination")
    assert term.exit_code == 4, term
    assert term.message.startswith("model verification failed: hash mismatch: "), term.message
    assert cs.state.waiting is not None or cs.state.running is not None  # back-off, or started again
    assert not cs.ready and kt.kubelet.endpoints()[pod.metadata.name].ready is False
    cond = kt.objects.wait_condition("modeldeployments", "d", "Degraded", "True", reason="RuntimeFailed", timeout=60)
    assert "hash mismatch" in cond["message"] and pod.metadata.name in cond["message"], cond
    assert kt.objects.condition("modeldeployments", "d", "Ready")["status"] == "False"


def _same_deployment(apps: client.AppsV1Api, namespace: str, uid: str, kt: KubeletTenant) -> None:
    """The last verified revision serves until the new one is ready: the operator must never take the Deployment
    away during a roll (deleting it stops every old pod at once). Fails at once, not after the roll."""
    try:
        now = apps.read_namespaced_deployment("d", namespace).metadata.uid
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        now = None
    if now != uid:
        pytest.fail("the operator deleted the Deployment during the roll (issue 11, cause 1): the old revision "
                    f"stopped serving before the new one was ready{kt.explain()}")


def _service_account_exists(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_service_account("llmos-runtime", namespace)
        return True
    except client.ApiException:
        return False
