"""`make demo`: the local cluster, what the Helm chart installs for the platform (CRDs, RBAC, tenant roles, admission
policies), the operator running with its ServiceAccount's token, the example tenants, models and deployments (one of
them queued for quota), then a status table."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from . import cluster, operator_process, platform

EXAMPLES = cluster.REPO_ROOT / "examples"
SYSTEM_NAMESPACE = platform.SYSTEM_NAMESPACE


def _sign_example_model(state: Path) -> tuple[bytes, bytes]:
    """A tiny stand-in for the example model's weights, signed with a demo key (made once, kept with the cluster).
    Returns (bundle, public key PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from llmos_signing import sign_model

    key_file = state / "demo-release-key.pem"
    if not key_file.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    model_dir = state / "demo-model" / "llama-3-8b"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model_dir / "model.safetensors").write_bytes(b"\0" * 4096)
    bundle = sign_model(model_dir, key_file.read_bytes())
    return bundle, public_pem


def _apply(name: str, docs: list[dict]) -> None:
    cluster.kubectl(name, "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": docs}))


def run(name: str = cluster.DEFAULT_CLUSTER) -> int:
    start = time.monotonic()
    kubeconfig = cluster.up(name)
    platform.install(name)
    operator_process.start(name)  # as the chart's operator ServiceAccount, not the admin

    bundle, public_pem = _sign_example_model(cluster.cluster_dir(name))
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                  for ns in (SYSTEM_NAMESPACE, "team-a", "team-b")]
    _apply(name, namespaces + [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-a-release-key", "namespace": SYSTEM_NAMESPACE},
         "data": {"publicKey": base64.b64encode(public_pem).decode()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "llama-3-8b-signature", "namespace": "team-a"},
         "binaryData": {"model.sig": base64.b64encode(bundle).decode()}},
    ])
    for example in ("tenants.yaml", "team-a.yaml", "team-b.yaml"):
        cluster.kubectl(name, "apply", "-f", str(EXAMPLES / example))

    # Settle: every ModelDeployment has an admission decision and the admitted ones have their pods.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = cluster.kubectl(name, "get", "modeldeployments", "-A", "-o", "json").stdout
        items = json.loads(out)["items"]
        decided = [d for d in items if any(c["type"] == "QuotaAdmitted" and c["status"] != "Unknown"
                                           for c in d.get("status", {}).get("conditions", []))]
        ready = [d for d in items if any(c["type"] == "Ready" and c["status"] == "True"
                                         for c in d.get("status", {}).get("conditions", []))]
        admitted = [d for d in items if any(c["type"] == "QuotaAdmitted" and c["status"] == "True"
                                            for c in d.get("status", {}).get("conditions", []))]
        if items and len(decided) == len(items) and len(ready) == len(admitted):
            break
        time.sleep(1)

    print(cluster.kubectl(name, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count").stdout)
    print(cluster.kubectl(name, "get", "llmos", "-A").stdout)
    print(gpu_table(name))
    print(f"(set up in {time.monotonic() - start:.0f} s)\n")
    print(f"The cluster and the operator keep running. Use them with:\n  export KUBECONFIG={kubeconfig}\n"
          f"  {cluster.binaries(build=False).kubectl} get llmos -A\n"
          f"Operator log: {operator_process.log_file(name)}\nStop everything: .venv/bin/llmos dev down")
    return 0


def gpu_table(name: str) -> str:
    tenants = json.loads(cluster.kubectl(name, "get", "tenants", "-o", "json").stdout)["items"]
    rows = [("TENANT", "GPU CLASS", "USED", "ALLOWED", "ADMITTED", "QUEUED")]
    for t in tenants:
        quota = t["spec"].get("quota", {}).get("gpus", {})
        used = t.get("status", {}).get("usage", {}).get("gpus", {})
        for gpu_class in sorted({*quota, *used}):
            rows.append((t["metadata"]["name"], gpu_class, str(used.get(gpu_class, 0)), str(quota.get(gpu_class, 0)),
                         str(t.get("status", {}).get("admitted", 0)), str(t.get("status", {}).get("queued", 0))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
