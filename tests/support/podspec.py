"""Turn the pod spec that the operator renders into a local ``llmos-runtime`` process.

Same command, arguments and environment as the container, with these explicit translations and nothing else:

- Paths: the container's filesystem is a temporary folder ``fsroot``. Every volume mount is materialised at
  ``fsroot/<mountPath>`` — a ConfigMap volume is written the way the kubelet writes one (``..data`` symlink swap), a
  PVC volume is a copy of a local folder standing in for the claim, an emptyDir is an empty folder — and every
  argument that names a path inside a mount (or ``file://`` inside one) is rewritten to its local place. Runtime
  flags whose container defaults point into the pod's filesystem (``--pvc-root``, ``--cache-dir``,
  ``--termination-log``) are passed explicitly with their mapped values.
- Ports: the container ports ``openai`` and ``health`` become free loopback ports (``--port``/``--health-port``
  rewritten, ``--host 127.0.0.1`` added), or, for a pod with a loopback address of its own (``host``,
  ``keep_ports``), stay as they are with ``--host <that address>``.
- Entry point: ``llmos-runtime`` is this environment's console script.
- Environment: literal values as they are; downward-API ``fieldRef`` values get local stand-ins (pod name
  ``<deployment>-local-0``, the namespace, 127.0.0.1 as pod IP); ``KUBECONFIG`` points nowhere (no API server, so
  the runtime's pod annotation report is off — /adapters on the health port carries the same report).
- CPU mode (the engine arguments after ``--``; see ``cpu_engine_args``): tensor parallelism 1, no GPU memory
  fraction, ``--dtype float32``, ``--enforce-eager`` (no torch.compile: 10-45 s less per engine start). The environment gets ``CPU_ENV`` (KV cache size, no thread pinning).
- Not translated (no meaning for a local process): image, resources, securityContext (runAsUser 1000), probes
  (the tests poll /healthz and /readyz themselves), preStop (the tests send SIGTERM directly).
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.runtime_proc import CPU_ENV, free_port, runtime_command, write_configmap

# Flags of `llmos-runtime serve` whose values are container paths (mapped when they lie inside a mount).
PATH_FLAGS = {"--signature", "--trusted-key", "--adapters-file", "--cache-dir", "--termination-log", "--pvc-root"}
# Flags of `llmos-runtime serve` that take no value.
RUNTIME_SWITCHES = {"--allow-remote-code"}
# Runtime defaults that point into the pod's filesystem: passed explicitly, mapped, when the pod spec leaves them out.
RUNTIME_PATH_DEFAULTS = {"--pvc-root": "/mnt/pvc", "--cache-dir": "/var/cache/llmos",
                         "--termination-log": "/dev/termination-log"}


def cpu_engine_args(args: list[str]) -> list[str]:
    """The vLLM arguments the operator renders for a GPU node, adjusted only as CPU mode needs."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        flag, eq, val = a.partition("=")
        takes_value = not eq and i + 1 < len(args) and not args[i + 1].startswith("--")
        value = val if eq else (args[i + 1] if takes_value else None)
        step = 1 if eq or not takes_value else 2
        if flag == "--tensor-parallel-size":
            out += ["--tensor-parallel-size", "1"]  # one CPU "device"
        elif flag == "--gpu-memory-utilization":
            pass  # GPU-only; on CPU the KV cache is sized by VLLM_CPU_KVCACHE_SPACE
        elif flag == "--dtype":
            pass  # replaced below
        else:
            out += [a] if eq or value is None else [a, value]
        i += step
    # eager: torch.compile of even a tiny model costs 10-45 s of each engine start on 2 shared cores (and vLLM 0.32's
    # compile cache fails to load here, so every start compiles again); the tests are about the runtime, not it
    return out + ["--dtype", "float32"] + ([] if "--enforce-eager" in out else ["--enforce-eager"])


@dataclass
class LocalPod:
    argv: list[str]
    env: dict[str, str]
    fsroot: Path
    port: int
    health_port: int
    mounts: dict[str, Path]  # container mountPath -> local folder
    termination_log: Path
    container: dict

    def local(self, container_path: str) -> Path:
        """Where a container path lives locally."""
        return self.fsroot / container_path.lstrip("/")


def _configmap_files(cm: Mapping) -> dict[str, bytes]:
    files = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return files


def pod_to_local(
    deployment: dict,
    configmaps: Mapping[str, dict],
    *,
    fsroot: Path,
    pvcs: Mapping[str, Path],
    base_env: Mapping[str, str],
    container_name: str = "runtime",
    field_values: Mapping[str, str] | None = None,
    host_sources: bool = False,
    host: str = "127.0.0.1",
    keep_ports: bool = False,
) -> LocalPod:
    """Materialise the Deployment's pod template under ``fsroot`` and build the local process's argv/env.

    ``configmaps``: rendered ConfigMaps by name. ``pvcs``: claim name -> a local folder with the claim's content.
    ``field_values``: downward-API values that override the local stand-ins (a real pod's name, namespace, node).
    ``host_sources``: a ``file://`` source outside every mount is this machine's path, kept as it is (the process
    kubelet runs pods on this machine; otherwise such a source is an error). ``host``: the address to listen on;
    ``keep_ports``: keep the container's ports (a pod IP of its own, 127.x.y.z: every pod may use the same ports,
    and the operator reaches them where it would in a cluster) instead of free loopback ports."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == container_name]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    mounts: dict[str, Path] = {}
    for m in container.get("volumeMounts", []):
        local = fsroot / m["mountPath"].lstrip("/")
        vol = volumes[m["name"]]
        if "configMap" in vol:
            write_configmap(local, _configmap_files(configmaps[vol["configMap"]["name"]]))
        elif "persistentVolumeClaim" in vol:
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(pvcs[vol["persistentVolumeClaim"]["claimName"]], local)
        elif "emptyDir" in vol:
            local.mkdir(parents=True, exist_ok=True)
        else:
            raise NotImplementedError(f"volume type of {vol}")
        mounts[m["mountPath"].rstrip("/")] = local

    def map_path(p: str) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if p == mount_path or p.startswith(mount_path + "/"):
                return str(fsroot) + p
        if p in RUNTIME_PATH_DEFAULTS.values():  # e.g. --pvc-root /mnt/pvc: the parent of the PVC mounts
            return str(fsroot) + p
        raise AssertionError(f"container path {p} is not inside any volume mount")

    cmd = list(container.get("command", [])) + list(container.get("args", []))
    assert cmd[:2] == ["llmos-runtime", "serve"], cmd
    split = cmd.index("--")
    runtime_args, engine_args = cmd[2:split], cmd[split + 1 :]

    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    port, health_port = (ports["openai"], ports["health"]) if keep_ports else (free_port(), free_port())
    port_map = {str(ports["openai"]): str(port), str(ports["health"]): str(health_port)}

    out: list[str] = []
    seen: set[str] = set()
    i = 0
    while i < len(runtime_args):
        flag = runtime_args[i]
        value = runtime_args[i + 1] if i + 1 < len(runtime_args) else None
        seen.add(flag)
        if flag in RUNTIME_SWITCHES or "=" in flag:  # no separate value
            out.append(flag)
            i += 1
            continue
        if flag in PATH_FLAGS:
            out += [flag, map_path(value)]
        elif flag == "--source" and value.startswith("file://") and host_sources and not any(
                value[len("file://"):] == m or value[len("file://"):].startswith(m + "/") for m in mounts):
            out += [flag, value]
        elif flag == "--source" and value.startswith("file://"):
            out += [flag, "file://" + map_path(value[len("file://"):])]
        elif flag == "--port":
            assert value == str(ports["openai"]), "--port must be the container's openai port"
            out += [flag, port_map[value]]
        elif flag == "--health-port":
            assert value == str(ports["health"]), "--health-port must be the container's health port"
            out += [flag, port_map[value]]
        else:
            out += [flag, value]
        i += 2
    termination_path = container.get("terminationMessagePath", "/dev/termination-log")
    for flag, default in RUNTIME_PATH_DEFAULTS.items():
        if flag not in seen:
            p = termination_path if flag == "--termination-log" else default
            out += [flag, str(fsroot) + p]
    (fsroot / "dev").mkdir(parents=True, exist_ok=True)
    out += ["--host", host]

    meta = deployment.get("metadata", {})
    downward = {  # the downward API, for a local "pod"
        "metadata.name": f"{meta.get('name', 'pod')}-local-0",
        "metadata.namespace": meta.get("namespace", "default"),
        "status.podIP": host,
        "spec.nodeName": "localhost",
        **(field_values or {}),
    }
    env = dict(base_env)
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            raise NotImplementedError(f"env var from a reference: {e}")
    env.update(CPU_ENV)
    # No API server for a local pod: the runtime's adapter report on its own pod (annotation) stays off, even if
    # this machine has a kubeconfig. The same report is on the health port's /adapters.
    env["KUBECONFIG"] = str(fsroot / "no-kubeconfig")
    env.pop("KUBERNETES_SERVICE_HOST", None)

    argv = [*runtime_command(), "serve", *out, "--", *cpu_engine_args(engine_args)]
    return LocalPod(argv=argv, env=env, fsroot=fsroot, port=port, health_port=health_port, mounts=mounts,
                    termination_log=fsroot / termination_path.lstrip("/"), container=container)
