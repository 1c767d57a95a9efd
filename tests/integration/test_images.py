"""The images run: `make images` builds the operator image and the CPU runtime image with podman (or docker); the
operator image runs against the local control plane exactly as a kubelet would start it (the chart ServiceAccount's
token and CA at /var/run/secrets/kubernetes.io/serviceaccount, KUBERNETES_SERVICE_HOST/PORT, the chart's command and
ConfigMap, a read-only root filesystem, uid 1000) and reconciles the operator-core scenario; the CPU runtime image
serves the tiny signed model and refuses a tampered one (one engine start).

Builds are cached by content (hack/build-images.sh): when nothing changed, the fixture takes seconds. Without podman
or docker the tests are skipped with the reason (`make images` installs podman on Debian machines)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.chart import (
    CHART,
    Release,
    free_port,
    helm,
    lease_holder,
    session_operator_paused,
    wait,
)
from tests.integration.conftest import Objects

REPO = Path(__file__).resolve().parents[2]
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _engine() -> list[str]:
    engine = os.environ.get("CONTAINER_ENGINE") or shutil.which("podman") or shutil.which("docker")
    if not engine:
        pytest.skip("neither podman nor docker is installed: run `make images` (it installs podman)")
    return [engine]


def _env() -> dict:
    env = dict(os.environ)
    conf = Path(os.environ.get("LLMOS_CACHE", Path.home() / ".cache" / "llmos")) / "containers.conf"
    if "CONTAINERS_CONF" not in env and conf.exists():
        env["CONTAINERS_CONF"] = str(conf)
    return env


def _run(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([*_engine(), *args], capture_output=True, text=True, env=_env(), timeout=timeout)
    if check:
        assert out.returncode == 0, f"{' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    _engine()
    started = time.monotonic()
    build = subprocess.run(["bash", str(REPO / "hack" / "build-images.sh"), "all"], cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    print(f"make images: {time.monotonic() - started:.0f} s\n{build.stderr}")
    names = subprocess.run(["bash", str(REPO / "hack" / "build-images.sh"), "names"], capture_output=True,
                           text=True, check=True).stdout
    return dict(line.split("=", 1) for line in names.split())


def test_operator_image_reconciles_with_the_chart_serviceaccount(images, cluster, crds, operator, namespace,
                                                                  tmp_path):
    release = Release(cluster, "llmos-image", "llmos-image")
    objects = Objects(cluster.api, namespace)
    container = f"llmos-operator-test-{uuid.uuid4().hex[:6]}"
    with session_operator_paused(operator):
        try:
            helm(cluster, "install", release.name, str(CHART), "--namespace", release.namespace,
                 "--create-namespace", check=True)
            chart_container = release.container()
            assert chart_container.image == images["operator"]

            # What the kubelet mounts and sets for the pod's ServiceAccount.
            sa = tmp_path / "serviceaccount"
            sa.mkdir()
            server, ca = release.api_server()
            (sa / "token").write_text(release.token())
            (sa / "ca.crt").write_bytes(ca)
            (sa / "namespace").write_text(release.namespace)
            config = tmp_path / "config"
            config.mkdir()
            (config / "config.yaml").write_text(release.config_yaml())
            for path in (sa, config, *sa.iterdir(), *config.iterdir()):
                path.chmod(0o755 if path.is_dir() else 0o644)
            url = urlsplit(server)

            command = list(chart_container.command)
            metrics_port, health_port = free_port(), free_port()  # host network: ports of this machine
            command[command.index("--metrics-port") + 1] = str(metrics_port)
            command[command.index("--liveness") + 1] = f"http://127.0.0.1:{health_port}/healthz"
            _run("run", "-d", "--name", container, "--network", "host", "--hostname", container,
                 "--read-only", "--tmpfs", "/tmp", "--user", "1000:1000",
                 "-v", f"{sa}:{SA_DIR}:ro", "-v", f"{config}:/etc/llmos:ro",
                 "-e", f"KUBERNETES_SERVICE_HOST={url.hostname}", "-e", f"KUBERNETES_SERVICE_PORT={url.port}",
                 "-e", f"LLMOS_OPERATOR_NAMESPACE={release.namespace}", "-e", "LLMOS_RESYNC_SECONDS=5",
                 "--entrypoint", command[0], images["operator"], *command[1:])

            def leads():
                state = _run("inspect", "--format", "{{.State.Running}}", container, check=False).stdout.strip()
                assert state != "false", _run("logs", container, check=False).stderr[-4000:]
                return (lease_holder(cluster, release) or "").startswith(container + "_")

            wait(leads, 60, "the operator container holding the leader Lease")

            def healthy():  # kopf's liveness endpoint (the standby's own one closes as kopf starts)
                try:
                    return httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait(healthy, 30, "the operator container's liveness endpoint")

            objects.tenant(gpus={"h100": 4})
            objects.model()
            objects.deployment("chat", count=4)
            objects.deployment("queued", count=4)
            objects.wait_condition("modeldeployments", "chat", "Ready", "True", timeout=90)
            objects.wait_condition("modeldeployments", "queued", "QuotaAdmitted", "False", "QuotaExceeded",
                                   timeout=30)
            objects.wait_condition("tenants", namespace, "Ready", "True", timeout=30)
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            assert f'llmos_tenant_gpus_used{{gpu_class="h100",tenant="{namespace}"}} 4.0' in metrics
            logs = _run("logs", container, check=False)
            forbidden = [line for line in (logs.stdout + logs.stderr).splitlines() if "403" in line]
            assert not forbidden, "\n".join(forbidden[:20])
        finally:
            _run("rm", "-f", "-t", "5", container, check=False)
            helm(cluster, "uninstall", release.name, "--namespace", release.namespace)
    objects.cleanup()


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data, past the safetensors header
    path.write_bytes(bytes(data))


CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.engine
def test_cpu_runtime_image_serves_the_signed_model_and_refuses_a_tampered_one(images, tmp_path):
    from tests.support.tiny_model import make_signing_key, make_tiny_model, sign

    image = images["runtime-cpu"]
    private, public = make_signing_key(tmp_path / "keys")
    model = make_tiny_model(tmp_path / "tiny")
    sign(model, private)
    tampered = tmp_path / "tampered"
    shutil.copytree(model, tampered)
    _flip_one_byte(tampered / "model.safetensors")
    for path in tmp_path.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tmp_path.chmod(0o755)

    # vLLM's compile cache outlives the container, as it would on a pod's volume: a second run starts faster.
    compile_cache = Path(os.environ.get("LLMOS_CACHE", Path.home() / ".cache" / "llmos")) / "runtime-image-cache"
    compile_cache.mkdir(parents=True, exist_ok=True)
    os.chown(compile_cache, 1000, 1000)

    def serve(name: str, model_dir: Path, port: int, health_port: int, *flags: str) -> list[str]:
        env = [arg for k, v in CPU_ENV.items() for arg in ("-e", f"{k}={v}")]
        return ["run", *flags, "--name", name, "--network", "host", "--shm-size", "1g", *env,
                "-v", f"{compile_cache}:/home/llmos/.cache",
                "-v", f"{model_dir}:/models/tiny:ro", "-v", f"{public}:/keys/signer.pem:ro",
                image, "serve", "--source", "file:///models/tiny", "--signature", "/models/tiny/model.sig",
                "--trusted-key", "/keys/signer.pem", "--served-name", "tiny", "--host", "127.0.0.1",
                "--port", str(port), "--health-port", str(health_port), "--termination-log", "/tmp/termination-log",
                "--", "--dtype", "float32", "--max-model-len", "256", "--enforce-eager"]

    # Tampered weights: refused before vLLM starts, exit code 4, the file named.
    refused = _run(*serve(f"llmos-runtime-tampered-{uuid.uuid4().hex[:6]}", tampered, free_port(), free_port(),
                          "--rm"), check=False, timeout=300)
    assert refused.returncode == 4, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "model verification failed" in refused.stderr and "model.safetensors" in refused.stderr, refused.stderr

    # The signed model: verified, served.
    name = f"llmos-runtime-test-{uuid.uuid4().hex[:6]}"
    port, health_port = free_port(), free_port()
    _run(*serve(name, model, port, health_port, "-d"))
    try:
        started = time.monotonic()

        def ready():
            state = _run("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
            assert state != "false", _run("logs", name, check=False).stderr[-6000:]
            try:
                return httpx.get(f"http://127.0.0.1:{health_port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait(ready, 900, "the runtime container's /readyz", interval=2)
        print(f"runtime image: ready {time.monotonic() - started:.0f} s after start")
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                           json={"model": "tiny", "prompt": "the model serves", "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] is not None
        metrics = httpx.get(f"http://127.0.0.1:{health_port}/metrics", timeout=5).text
        assert "llmos_runtime_model_verified 1.0" in metrics
        assert "vllm:time_to_first_token_seconds" in metrics  # what the chart's dashboard reads
    finally:
        _run("rm", "-f", "-t", "10", name, check=False)
