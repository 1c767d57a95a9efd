"""A small kubelet that runs the pods of ONE namespace (``llmos-kubelet-*``) as local ``llmos-runtime`` processes.

The local cluster's nodes are KWOK's: its stages act out pod lifecycles but run nothing. For the end-to-end rollout
test the pods must serve real answers from a real vLLM, so the local cluster's stages leave namespaces named
``llmos-kubelet-*`` alone (operator/llmos_operator/dev/kwok-stages.yaml) and this kubelet does their work:

- it watches the namespace's pods (cluster admin credentials of the test cluster, as a node's kubelet has its own);
- a pod bound to a node (``spec.nodeName``) and not deleting gets its ``runtime`` container's command run as a local
  process (tests/support/podspec.py translates the pod spec: the ConfigMap volumes, read from the API, are written
  under a temporary root the way the kubelet writes them, container paths and ports are mapped, downward-API
  ``fieldRef`` values are the pod's own, CPU mode). A ``file://`` model source is this machine's path (the test's
  model folder), as a hostPath would be. ConfigMap volumes are refreshed every few seconds (adapters hot load);
- it writes the pod's status as a kubelet does: phase Running, podIP 127.0.0.1, containerStatuses, and the
  ``Ready``/``ContainersReady`` conditions from the pod's own readiness probe (``/readyz`` on the health port, its
  timeout and failure threshold, polled every ``probe_period`` s instead of the spec's period), ``Ready`` also
  waiting for the pod's ``readinessGates`` (conditions a controller writes);
- a process that exits is restarted with the kubelet's back-off (10 s doubling, at most 5 min; ``CrashLoopBackOff``
  meanwhile), ``restartCount`` + 1 and ``lastState.terminated`` carrying the exit code and the termination message
  (the runtime writes one line to ``--termination-log``; with ``FallbackToLogsOnError`` the log's tail otherwise);
- a pod with a ``deletionTimestamp``: the preStop sleep, SIGTERM to the runtime (it drains in-flight requests and
  stops vLLM), SIGKILL of the process group once the grace period is spent, then the pod is deleted with grace 0.

``endpoints()`` tells a test's load balancer where each pod listens, whether it is ready, deleting, and the digest
its ``/readyz`` names. ``close()`` always kills every process it started.

``pod_ips=True``: each pod gets a loopback address of its own (its ``status.podIP``) and listens there on the
container's ports, where the operator reaches it as in a cluster (the autoscaler reads the load there). ``runner``
starts another process than the runtime (tests/support/load_pod.py's stand-in), given the pod and its address.

Not done (no meaning here): images, resources and cgroups, security contexts, liveness and startup probes (the
runtime's own budgets end a stuck start), init containers, PVC volumes, node status.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from kubernetes import client, watch

from tests.support.podspec import _configmap_files, pod_to_local
from tests.support.runtime_proc import LoopbackAddresses, RuntimeProcess, cpu_env, write_configmap

log = logging.getLogger("process-kubelet")

NAMESPACE_PREFIX = "llmos-kubelet-"
CONTAINER = "runtime"
BACKOFF_START, BACKOFF_MAX = 10.0, 300.0
CONFIGMAP_SYNC_SECONDS = 5.0
MESSAGE_LIMIT = 4096  # what a kubelet keeps of a termination message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Endpoint:
    """Where a pod's runtime listens, as a Service's EndpointSlice would say it (plus the digest it serves)."""

    pod: str
    api: str
    health: str
    ready: bool
    deleting: bool
    digest: str | None


class _PodWorker:
    """Runs one pod (one uid) from its start to its deletion, in a thread of its own."""

    def __init__(self, kubelet: ProcessKubelet, pod: dict):
        self.kubelet = kubelet
        self.pod = pod  # the newest object seen by the watch
        self.name: str = pod["metadata"]["name"]
        self.uid: str = pod["metadata"]["uid"]
        self.gone = threading.Event()  # the pod object was deleted (or replaced by another uid)
        self.proc: RuntimeProcess | None = None
        self.ready = False  # the container's readiness probe
        self.pod_ready_written: bool | None = None  # the pod's Ready condition as last written
        self.digest: str | None = None
        self.restarts = 0
        self.last_terminated: dict | None = None
        self.waiting: dict | None = None  # {"reason": ...} while restarting
        self.started_at: str | None = None
        self.start_time = _now()
        self.transitions: dict[str, tuple[bool, str]] = {}  # condition type -> (status, lastTransitionTime)
        self.probe_failures = 0
        self.termination_log: Path | None = None
        self.deleting = False
        self.ip = kubelet.addresses.next() if kubelet.addresses else "127.0.0.1"  # the pod's address
        self._starts = 0
        self._mounts: dict[str, tuple[str, Path, dict]] = {}  # configmap name -> (mount path, local dir, files)
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{self.name}", daemon=True)

    # ---- the container -------------------------------------------------------------------------------------------
    def _container(self) -> dict:
        (c,) = [c for c in self.pod["spec"]["containers"] if c["name"] == CONTAINER]
        return c

    def _read_configmaps(self) -> dict[str, dict]:
        out = {}
        for v in self.pod["spec"].get("volumes") or []:
            if "configMap" in v:
                name = v["configMap"]["name"]
                cm = self.kubelet.core.read_namespaced_config_map(name, self.kubelet.namespace)
                out[name] = {"data": cm.data or {}, "binaryData": cm.binary_data or {}}
        return out

    def _start_container(self) -> None:
        self._starts += 1
        fsroot = self.kubelet.root / self.name / f"start-{self._starts}"
        fsroot.mkdir(parents=True, exist_ok=True)
        if self.kubelet.runner is not None:
            self._mounts, self.termination_log = {}, None
            self.proc = self.kubelet.runner(self.pod, self.ip, fsroot).start()
            self.started_at, self.waiting, self.ready = _now(), None, False
            self.kubelet._event(f"{self.name}: started (pid {self.proc.proc.pid}, {self.ip}, start {self._starts})")
            return
        configmaps = self._read_configmaps()
        template = {"metadata": self.pod["metadata"], "spec": {"template": {"spec": self.pod["spec"]}}}
        local = pod_to_local(
            template, configmaps, fsroot=fsroot, pvcs={}, base_env=cpu_env(), host_sources=True,
            field_values={"metadata.name": self.name, "metadata.namespace": self.kubelet.namespace,
                          "metadata.uid": self.uid, "spec.nodeName": self.pod["spec"]["nodeName"],
                          "status.podIP": self.ip, "status.hostIP": "127.0.0.1"},
            host=self.ip, keep_ports=self.kubelet.pod_ips,
        )
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        self._mounts = {}
        for m in self._container().get("volumeMounts") or []:
            vol = volumes[m["name"]]
            if "configMap" in vol:
                cm_name = vol["configMap"]["name"]
                self._mounts[cm_name] = (m["mountPath"], local.local(m["mountPath"]), configmaps[cm_name])
        self.termination_log = local.termination_log
        self.proc = RuntimeProcess(argv=local.argv, env=local.env, log_path=fsroot / "runtime.log", port=local.port,
                                   health_port=local.health_port, name=self.name, host=self.ip).start()
        self.started_at = _now()
        self.waiting = None
        self.ready = False
        self.kubelet._event(f"{self.name}: started (pid {self.proc.proc.pid}, api {self.proc.api}, "
                            f"start {self._starts})")

    def _sync_configmaps(self) -> None:
        """What the kubelet does every sync period: a changed ConfigMap reaches the mounted files (atomically)."""
        for cm_name, (_mount, local_dir, files) in list(self._mounts.items()):
            try:
                cm = self.kubelet.core.read_namespaced_config_map(cm_name, self.kubelet.namespace)
            except client.ApiException:
                continue
            new = {"data": cm.data or {}, "binaryData": cm.binary_data or {}}
            if new != files:
                write_configmap(local_dir, _configmap_files(new))
                self._mounts[cm_name] = (_mount, local_dir, new)

    def _termination_message(self) -> str:
        text = ""
        try:
            if self.termination_log is not None:
                text = self.termination_log.read_text(errors="replace").strip()
        except OSError:
            pass
        policy = self._container().get("terminationMessagePolicy", "File")
        if not text and policy == "FallbackToLogsOnError" and self.proc is not None and self.proc.proc.returncode:
            text = self.proc.log_tail(80)
        return text[-MESSAGE_LIMIT:]

    def _record_exit(self) -> None:
        assert self.proc is not None and self.proc.proc is not None
        code = self.proc.proc.returncode
        self.last_terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "message": self._termination_message() or None,
                                "startedAt": self.started_at, "finishedAt": _now(),
                                "containerID": f"process://{self.proc.proc.pid}"}
        self.proc.kill()  # whatever it left in its process group

    # ---- probes and status ---------------------------------------------------------------------------------------
    def _probe(self) -> None:
        """The readiness probe: /readyz on the health port, with the spec's timeout and failure threshold."""
        spec = self._container().get("readinessProbe") or {}
        timeout = float(spec.get("timeoutSeconds", 1))
        threshold = int(spec.get("failureThreshold", 3))
        ok = False
        if self.proc is not None and self.proc.alive():
            try:
                r = httpx.get(self.proc.health + "/readyz", timeout=timeout)
                ok = r.status_code == 200
                self.digest = r.json().get("digest") or self.digest
            except (httpx.HTTPError, ValueError):
                ok = False
        if ok:
            self.probe_failures = 0
            if not self.ready:
                self.ready = True
                self.kubelet._event(f"{self.name}: ready (digest {self.digest})")
                self.write_status()
        elif self.ready:
            self.probe_failures += 1
            if self.probe_failures >= threshold or not (self.proc and self.proc.alive()):
                self.ready = False
                self.kubelet._event(f"{self.name}: not ready")
                self.write_status()

    def gates_ready(self) -> bool:
        """Every readiness gate's condition (written by a controller, not by the kubelet) is True."""
        conditions = {c.get("type"): c.get("status") for c in (self.pod.get("status") or {}).get("conditions") or []}
        return all(conditions.get(g["conditionType"]) == "True" for g in self.pod["spec"].get("readinessGates") or [])

    @property
    def pod_ready(self) -> bool:
        return self.ready and self.gates_ready()

    def _condition(self, type_: str, status: bool, reason: str | None = None) -> dict:
        if self.transitions.get(type_, (None,))[0] is not status:
            self.transitions[type_] = (status, _now())
        c = {"type": type_, "status": "True" if status else "False", "lastTransitionTime": self.transitions[type_][1]}
        if not status and reason:
            c["reason"] = reason
        return c

    def write_status(self, *, terminated: dict | None = None) -> None:
        running = self.proc is not None and self.proc.alive() and terminated is None
        if terminated is not None:
            state = {"terminated": terminated}
        elif running:
            state = {"running": {"startedAt": self.started_at}}
        else:
            state = {"waiting": self.waiting or {"reason": "ContainerCreating"}}
        container = self._container()
        pod_ready = self.pod_ready
        self.pod_ready_written = pod_ready
        cs = {"name": CONTAINER, "image": container.get("image", ""), "imageID": "", "ready": self.ready,
              "started": running, "restartCount": self.restarts, "state": state}
        if self.proc is not None and self.proc.proc is not None:
            cs["containerID"] = f"process://{self.proc.proc.pid}"
        if self.last_terminated is not None:
            cs["lastState"] = {"terminated": self.last_terminated}
        body = {"status": {
            "phase": "Running", "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}], "startTime": self.start_time,
            "conditions": [
                self._condition("PodReadyToStartContainers", True),
                self._condition("Initialized", True),
                self._condition("ContainersReady", self.ready, "ContainersNotReady"),
                self._condition("Ready", pod_ready,
                                "ReadinessGatesNotReady" if self.ready else "ContainersNotReady"),
            ],
            "containerStatuses": [cs],
        }}
        try:
            self.kubelet.core.patch_namespaced_pod_status(self.name, self.kubelet.namespace, body)
        except client.ApiException as exc:
            if exc.status != 404:
                self.kubelet._event(f"{self.name}: status write failed: HTTP {exc.status} {exc.body}")

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def _stopping(self) -> bool:
        return self.gone.is_set() or self.kubelet._stop.is_set()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self._stopping():
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _run(self) -> None:
        try:
            self._start_container()
            self.write_status()
            next_sync = time.monotonic() + CONFIGMAP_SYNC_SECONDS
            restart_at: float | None = None
            while not self._stopping():
                if self.pod["metadata"].get("deletionTimestamp"):
                    self._terminate()
                    return
                if restart_at is not None:
                    if time.monotonic() >= restart_at:
                        restart_at = None
                        self._start_container()
                        self.write_status()
                elif not self.proc.alive():
                    self._record_exit()
                    self.restarts += 1
                    backoff = min(BACKOFF_MAX, BACKOFF_START * 2 ** (self.restarts - 1))
                    self.ready = False
                    self.waiting = {"reason": "CrashLoopBackOff",
                                    "message": f"back-off {backoff:.0f}s restarting failed container={CONTAINER} "
                                               f"pod={self.name}"}
                    self.kubelet._event(f"{self.name}: exited with {self.last_terminated['exitCode']} "
                                        f"({self.last_terminated['message']!r}); restart #{self.restarts} in "
                                        f"{backoff:.0f}s")
                    self.write_status()
                    restart_at = time.monotonic() + backoff
                else:
                    self._probe()
                if self.pod_ready != self.pod_ready_written:  # a readiness gate changed
                    self.write_status()
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + CONFIGMAP_SYNC_SECONDS
                    self._sync_configmaps()
                self._sleep(self.kubelet.probe_period)
        except Exception:  # noqa: BLE001 - a test helper: say what broke, never hang silently
            log.exception("pod %s: worker failed", self.name)
            self.kubelet._event(f"{self.name}: worker failed (see the log)")
        finally:
            if self.proc is not None:
                self.proc.kill(grace=2)

    def _terminate(self) -> None:
        """Graceful deletion: preStop sleep, SIGTERM, the grace period, SIGKILL, then the pod object goes."""
        self.deleting = True
        pod = self.pod
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        started = time.monotonic()
        prestop = ((self._container().get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        pause = min(float(prestop.get("seconds", 0)), float(grace))
        self.kubelet._event(f"{self.name}: deleting (grace {grace}s, preStop sleep {pause:.0f}s)")
        end = started + pause
        while time.monotonic() < end and not self.kubelet._stop.is_set():
            if self.proc is not None and self.proc.alive():
                self._probe()
            time.sleep(0.2)
        if self.proc is not None and self.proc.alive():
            self.proc.terminate()  # SIGTERM to the runtime: it drains, then stops vLLM
            self.kubelet._event(f"{self.name}: SIGTERM after {time.monotonic() - started:.1f}s")
            while self.proc.alive() and time.monotonic() - started < grace and not self.kubelet._stop.is_set():
                self._probe()
                time.sleep(0.2)
            if self.proc.alive():
                self.kubelet._event(f"{self.name}: grace period over: SIGKILL")
        code = None
        if self.proc is not None:
            self.proc.kill(grace=0.5)
            code = self.proc.proc.returncode if self.proc.proc is not None else None
        self.ready = False
        self.kubelet._event(f"{self.name}: stopped with {code} after {time.monotonic() - started:.1f}s")
        self.write_status(terminated={"exitCode": code if code is not None else 137,
                                      "reason": "Completed" if code == 0 else "Error",
                                      "message": self._termination_message() or None,
                                      "startedAt": self.started_at, "finishedAt": _now()})
        try:
            self.kubelet.core.delete_namespaced_pod(
                self.name, self.kubelet.namespace,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)))
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise


Runner = Callable[[dict, str, Path], RuntimeProcess]  # (pod, its address, its filesystem root) → a process to start


class ProcessKubelet:
    def __init__(self, api: client.ApiClient, namespace: str, root: Path, *, probe_period: float = 1.0,
                 pod_ips: bool = False, runner: Runner | None = None):
        if not namespace.startswith(NAMESPACE_PREFIX):
            raise ValueError(f"the process kubelet runs pods of {NAMESPACE_PREFIX}* namespaces only, not {namespace}")
        self.pod_ips = pod_ips or runner is not None
        self.runner = runner
        self.addresses = LoopbackAddresses() if self.pod_ips else None
        self.api = api
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.root = root
        self.probe_period = probe_period
        self.events: list[str] = []  # what happened, with times (for failure messages)
        self._workers: dict[str, _PodWorker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._watch_loop, name="process-kubelet", daemon=True)

    def start(self) -> ProcessKubelet:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop watching and kill every process started (always safe to call)."""
        self._stop.set()
        self._thread.join(timeout=15)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w._thread.join(timeout=20)
            if w.proc is not None:
                w.proc.kill(grace=1)

    def endpoints(self) -> dict[str, Endpoint]:
        with self._lock:
            workers = list(self._workers.values())
        out = {}
        for w in workers:
            if w.proc is None or w.gone.is_set():
                continue
            out[w.name] = Endpoint(w.name, w.proc.api, w.proc.health, w.pod_ready, w.deleting, w.digest)
        return out

    def restart_counts(self) -> dict[str, int]:
        with self._lock:
            return {w.name: w.restarts for w in self._workers.values()}

    def logs(self, pod: str, lines: int = 60) -> str:
        with self._lock:
            w = self._workers.get(pod)
        return w.proc.log_tail(lines) if w is not None and w.proc is not None else ""

    def _event(self, text: str) -> None:
        line = f"[{time.monotonic() - self._t0:7.1f}s] {text}"
        log.info(line)
        self.events.append(line)

    # ---- the watch -----------------------------------------------------------------------------------------------
    def _seen(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        name, uid = meta["name"], meta["uid"]
        with self._lock:
            w = self._workers.get(name)
            if kind == "DELETED":
                if w is not None and w.uid == uid:
                    w.gone.set()
                    del self._workers[name]
                return
            if w is not None and w.uid != uid:  # the same name for another pod: the old one is gone
                w.gone.set()
                del self._workers[name]
                w = None
            if w is not None:
                w.pod = pod
                return
            if not pod["spec"].get("nodeName"):
                return  # not scheduled yet
            if meta.get("deletionTimestamp"):
                started = False
            else:
                w = _PodWorker(self, pod)
                self._workers[name] = w
                started = True
        if started:
            w._thread.start()
        else:  # deleted before it ever ran: nothing to stop
            try:
                self.core.delete_namespaced_pod(name, self.namespace, body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)))
            except client.ApiException:
                pass

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.core.list_namespaced_pod(self.namespace)
                present = set()
                for p in listed.items:
                    pod = self.api.sanitize_for_serialization(p)
                    present.add(pod["metadata"]["uid"])
                    self._seen("MODIFIED", pod)
                with self._lock:
                    stale = [w for w in self._workers.values() if w.uid not in present]
                for w in stale:
                    self._seen("DELETED", {"metadata": {"name": w.name, "uid": w.uid}})
                w8 = watch.Watch()
                for ev in w8.stream(self.core.list_namespaced_pod, self.namespace,
                                    resource_version=listed.metadata.resource_version, timeout_seconds=5):
                    if self._stop.is_set():
                        w8.stop()
                        break
                    if ev["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    self._seen(ev["type"], self.api.sanitize_for_serialization(ev["object"]))
            except Exception as exc:  # noqa: BLE001 - a broken watch lists again, like an informer
                if not self._stop.is_set():
                    self._event(f"watch: {type(exc).__name__}: {exc}; listing again")
                    time.sleep(1)


def force_delete_pods(api: client.ApiClient, namespace: str, *, timeout: float = 60) -> None:
    """Teardown, once the kubelet is closed: remove the namespace's pods at once (nothing else would finish them),
    also those a controller makes meanwhile, until the namespace has neither Deployments nor pods; then delete it."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace).items
        for p in pods:
            try:
                core.delete_namespaced_pod(p.metadata.name, namespace, grace_period_seconds=0)
            except client.ApiException:
                pass
        if not pods and not apps.list_namespaced_deployment(namespace).items:
            break
        time.sleep(0.5)
    try:
        core.delete_namespace(namespace, propagation_policy="Background")
    except client.ApiException:
        pass
