"""Rendering the children of a ModelDeployment."""

import json

import pytest

from llmos_operator.api import parse_object
from llmos_operator.config import config_from_yaml, default_config
from llmos_operator.core.status import endpoint_url
from llmos_operator.render import RenderError, pod_requests, render_children, selector_string

pytestmark = pytest.mark.unit

CFG = default_config()
H100 = CFG.gpu_class("h100")
BUNDLE = b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}'
PEM = b"-----BEGIN PUBLIC KEY-----\nMFk=\n-----END PUBLIC KEY-----\n"
DIGEST = "sha256:" + "ab" * 32


def model(**spec):
    spec.setdefault("source", {"uri": "hf://meta/llama-3-8b", "revision": "main"})
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "Model",
                         "metadata": {"name": "llama", "namespace": "team-a", "generation": 1},
                         "spec": spec, "status": {"digest": DIGEST}})


def mdep(**spec):
    spec.setdefault("model", "llama")
    spec.setdefault("gpu", {"class": "h100", "count": 2})
    return parse_object({"apiVersion": "llmos.dev/v1alpha1", "kind": "ModelDeployment",
                         "metadata": {"name": "chat", "namespace": "team-a", "generation": 1, "uid": "u"},
                         "spec": spec})


def children(m=None, d=None, **kw):
    kw.setdefault("bundle", BUNDLE)
    kw.setdefault("signer_pem", PEM)
    objs = render_children(d or mdep(), m or model(), H100, CFG, **kw)
    return {(o["kind"], _unhashed(o["metadata"]["name"])): o for o in objs}


def _unhashed(name):
    """``llama-trust-<content hash>`` (the Model's) → ``llama-trust``."""
    return "llama-trust" if name.startswith("llama-trust-") else name


def deployment(**kw):
    return children(**kw)[("Deployment", "chat")]


def container(**kw):
    (c,) = deployment(**kw)["spec"]["template"]["spec"]["containers"]
    return c


def test_children_kinds_names_and_labels():
    objs = render_children(mdep(replicas=2), model(), H100, CFG, bundle=BUNDLE, signer_pem=PEM)
    assert [(o["apiVersion"], o["kind"], _unhashed(o["metadata"]["name"])) for o in objs] == [
        ("v1", "ConfigMap", "llama-trust"), ("apps/v1", "Deployment", "chat"),
        ("v1", "Service", "chat"), ("policy/v1", "PodDisruptionBudget", "chat")]
    trust, *own = objs
    # The trust ConfigMap is the Model's (shared by its deployments); the rest the deployment's.
    assert trust["metadata"]["labels"] == {"app.kubernetes.io/name": "llmos-runtime",
                                           "app.kubernetes.io/managed-by": "llmos", "llmos.dev/model": "llama"}
    for o in objs:
        assert o["metadata"]["namespace"] == "team-a"
        assert "ownerReferences" not in o["metadata"]
    for o in own:
        assert o["metadata"]["labels"] == {
            "app.kubernetes.io/name": "llmos-runtime", "app.kubernetes.io/instance": "chat",
            "app.kubernetes.io/managed-by": "llmos", "llmos.dev/model-deployment": "chat"}
    # An adapters ConfigMap only where the Model declares adapters (loaded live: there whether any is served or not).
    m = model(adapters=[{"name": "sql", "source": {"uri": "hf://a/sql"}}])
    assert ("ConfigMap", "chat-adapters") in children(m=m)
    # Nothing to carry for an unsigned Model without adapters: no trust ConfigMap, no volume.
    unsigned = children(m=model(signature={"policy": "Disabled"}), bundle=None, signer_pem=None)
    assert [k for k in unsigned if k[0] == "ConfigMap"] == []


def test_command_is_exactly_the_runtime_cli():
    d = mdep(engine={"maxModelLen": 8192, "gpuMemoryUtilization": 0.9, "extraArgs": ["--enforce-eager"]},
             gpu={"class": "h100", "count": 2})
    assert container(d=d, m=model(quantization="awq"))["command"] == [
        "llmos-runtime", "serve", "--source", "hf://meta/llama-3-8b", "--revision", "main", "--served-name", "llama",
        "--signature", "/etc/llmos/trust/model.sig", "--trusted-key", "/etc/llmos/trust/signer.pem",
        "--expect-digest", DIGEST, "--cache-dir", "/var/cache/llmos",
        "--port", "8000", "--health-port", "8081", "--",
        "--tensor-parallel-size", "2", "--max-model-len", "8192", "--gpu-memory-utilization", "0.9",
        "--quantization", "awq", "--enforce-eager"]


def test_command_variants():
    m = model(source={"uri": "pvc://weights/llama"}, servedName="chat-model", signature={"policy": "Disabled"},
              adapters=[{"name": "sql", "source": {"uri": "hf://a/sql"}}, {"name": "fr", "source": {"uri": "hf://a/fr"}}])
    d = mdep(gpu={"class": "h100", "count": 4}, engine={"tensorParallelSize": 2}, adapters=["sql"])
    cmd = container(m=m, d=d, bundle=None, signer_pem=None)["command"]
    assert "--revision" not in cmd and "--signature" not in cmd and "--trusted-key" not in cmd
    assert cmd[cmd.index("--served-name") + 1] == "chat-model"
    engine = cmd[cmd.index("--") + 1:]
    assert engine == ["--tensor-parallel-size", "2", "--enable-lora", "--max-loras", "2"]


def test_runtime_settings_are_rendered_only_when_set():
    assert not {"--watchdog-unready-after", "--watchdog-restart-after", "--drain-grace", "--keep-alive"} & set(
        container()["command"])
    d = mdep(runtime={"watchdogUnreadySeconds": 10, "watchdogRestartSeconds": 60, "drainGraceSeconds": 20,
                      "keepAliveSeconds": 350})
    cmd = container(d=d)["command"]
    runtime_args = cmd[:cmd.index("--")]
    for flag, value in (("--watchdog-unready-after", "10"), ("--watchdog-restart-after", "60"),
                        ("--drain-grace", "20"), ("--keep-alive", "350")):
        assert runtime_args[runtime_args.index(flag) + 1] == value
    # what the runtime parses from the rendered command is what the spec says
    from llmos_runtime.cli import parse_args

    cfg = parse_args(cmd[1:])
    assert (cfg.watchdog_unready_after, cfg.watchdog_restart_after, cfg.drain_grace, cfg.keep_alive) == \
        (10.0, 60.0, 20.0, 350)


@pytest.mark.parametrize("runtime", [{}, {"drainGraceSeconds": 0}, {"drainGraceSeconds": 600},
                                     {"drainGraceSeconds": 45, "keepAliveSeconds": 30}])
def test_the_termination_budget_fits_the_rendered_grace_period(runtime):
    """preStop + drain grace + drain + flush + engine stop (+ kill wait, close) of the runtime that the rendered
    command starts — its defaults or the flags rendered — fits terminationGracePeriodSeconds."""
    from llmos_runtime.cli import parse_args
    from llmos_runtime.termination import FLUSH_SECONDS, KILL_WAIT_SECONDS, TerminationBudget

    d = mdep(runtime=runtime)
    pod = deployment(d=d)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    cfg = parse_args(c["command"][1:])  # what the runtime in this pod will do
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    budget = TerminationBudget(pre_stop=pre_stop, drain_grace=cfg.drain_grace, drain_timeout=cfg.drain_timeout,
                               flush=FLUSH_SECONDS, engine_stop=cfg.engine_stop_timeout,
                               kill_wait=KILL_WAIT_SECONDS)
    spent = pre_stop + cfg.drain_grace + cfg.drain_timeout + FLUSH_SECONDS + cfg.engine_stop_timeout + \
        KILL_WAIT_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= budget.total() > spent  # the servers' close on top
    assert cfg.drain_grace == runtime.get("drainGraceSeconds", 10)


def test_the_api_defaults_of_the_runtime_settings_are_the_runtimes():
    """spec.runtime's CEL rule and descriptions spell the runtime's defaults; they must be the same numbers."""
    from llmos_operator.api.types import RuntimeSpec
    from llmos_runtime import config as rc
    from llmos_runtime.termination import DEFAULT_DRAIN_GRACE

    assert (rc.DEFAULT_WATCHDOG_UNREADY_AFTER, rc.DEFAULT_WATCHDOG_RESTART_AFTER) == (30, 120)
    assert (DEFAULT_DRAIN_GRACE, rc.DEFAULT_KEEP_ALIVE) == (10, 75)
    for field, default in (("watchdog_unready_seconds", 30), ("watchdog_restart_seconds", 120),
                           ("drain_grace_seconds", 10), ("keep_alive_seconds", 75)):
        assert f"(default {default})" in RuntimeSpec.model_fields[field].description
    with pytest.raises(ValueError, match="watchdogRestartSeconds must be greater"):
        RuntimeSpec.model_validate({"watchdogUnreadySeconds": 200})
    with pytest.raises(ValueError, match="watchdogRestartSeconds must be greater"):
        RuntimeSpec.model_validate({"watchdogUnreadySeconds": 40, "watchdogRestartSeconds": 40})
    assert RuntimeSpec.model_validate({"watchdogRestartSeconds": 31}).watchdog_restart_seconds == 31


def test_deployment_spec():
    d = deployment(replicas=3)
    spec = d["spec"]
    assert spec["replicas"] == 3  # what quota admitted, not the spec's 1
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/name": "llmos-runtime",
                                                "llmos.dev/model-deployment": "chat"}}
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert spec["progressDeadlineSeconds"] == 2400
    pod = spec["template"]["spec"]
    # preStop 5 + drain grace 10 + drain 100 + flush 1 + engine stop 15 + kill wait 5 + close 2
    assert pod["terminationGracePeriodSeconds"] == 138
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["NVIDIA-H100-80GB-HBM3"]
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert mdep().spec.replicas == 1 and deployment()["spec"]["replicas"] == 1


def test_container():
    c = container()
    assert c["name"] == "runtime" and c["image"] == "ghcr.io/llmos/runtime:0.1.0"
    # No HF_HUB_OFFLINE here: the runtime downloads hf:// sources itself, then starts vLLM offline.
    # nor VLLM_ALLOW_RUNTIME_LORA_UPDATING: the runtime sets it for the engine only where adapters are served
    downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert downward == {"LLMOS_POD_NAME": "metadata.name", "LLMOS_POD_NAMESPACE": "metadata.namespace"}
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("openai", 8000), ("health", 8081)]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert c["resources"]["requests"]["cpu"] == "4" and c["resources"]["requests"]["memory"] == "32Gi"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health", "scheme": "HTTP"}
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the runtime debounces its own health answers: the kubelet follows them within seconds
    assert c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] <= 10
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] <= 30
    assert c["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container(d=mdep(engine={"image": "registry.local/rt:dev"}))["image"] == "registry.local/rt:dev"


def test_volumes_and_mounts():
    m = model(adapters=[{"name": "sql", "source": {"uri": "hf://a/sql"}}])
    c = container(m=m)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["trust"] == {"name": "trust", "mountPath": "/etc/llmos/trust", "readOnly": True}
    assert mounts["adapters"]["mountPath"] == "/etc/llmos/adapters"
    assert mounts["cache"]["mountPath"] == "/var/cache/llmos"
    assert "dshm" in mounts  # tensor parallel 2 needs shared memory
    assert c["command"][c["command"].index("--adapters-file") + 1] == "/etc/llmos/adapters/adapters.json"
    volumes = {v["name"]: v for v in deployment(m=m)["spec"]["template"]["spec"]["volumes"]}
    trust = children(m=m)[("ConfigMap", "llama-trust")]["metadata"]["name"]
    assert volumes["trust"]["configMap"]["name"] == trust and trust.startswith("llama-trust-")
    assert volumes["adapters"]["configMap"]["name"] == "chat-adapters"
    assert "adapters" not in {m["name"] for m in container()["volumeMounts"]}
    assert "--adapters-file" not in container()["command"]
    assert volumes["cache"] == {"name": "cache", "emptyDir": {}}
    single = container(d=mdep(gpu={"class": "h100", "count": 1}))
    assert "dshm" not in {m["name"] for m in single["volumeMounts"]}


def test_pvc_source_is_mounted_read_only_where_the_runtime_looks():
    m = model(source={"uri": "pvc://weights/llama/8b"}, adapters=[{"name": "sql", "source": {"uri": "pvc://loras/sql"}}])
    dep = deployment(m=m, d=mdep(adapters=["sql"]))
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pvc-weights"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert volumes["pvc-loras"]["persistentVolumeClaim"]["claimName"] == "loras"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["pvc-weights"] == {"name": "pvc-weights", "mountPath": "/mnt/pvc/weights", "readOnly": True}
    assert "pvc-weights" not in {v["name"] for v in deployment()["spec"]["template"]["spec"]["volumes"]}


def test_the_rendered_strategy_surges_nothing_unreserved():
    """Surge is reserved in the quota first (render/rollout.py sets it while a rollout runs); what is rendered
    when no rollout runs surges nothing and keeps the user's maxUnavailable (0/0 is not valid in apps/v1)."""
    def strategy(**rollout):
        return deployment(d=mdep(rollout=rollout))["spec"]["strategy"]["rollingUpdate"]
    assert strategy(maxSurge=3, maxUnavailable=2) == {"maxSurge": 0, "maxUnavailable": 2}
    assert strategy() == {"maxSurge": 0, "maxUnavailable": 1}


def test_template_hash_rolls_on_a_new_model_revision_only():
    def annotations(**kw):
        return deployment(**kw)["spec"]["template"]["metadata"]["annotations"]
    base = annotations()
    assert base["llmos.dev/model-digest"] == DIGEST
    assert annotations() == base  # stable
    newer = model()
    newer.status.digest = "sha256:" + "cd" * 32
    assert annotations(m=newer)["llmos.dev/config-hash"] != base["llmos.dev/config-hash"]
    assert annotations(bundle=BUNDLE + b" ")["llmos.dev/config-hash"] != base["llmos.dev/config-hash"]
    # Adapter selection is loaded live from adapters.json: it must not roll pods.
    m = model(adapters=[{"name": "a", "source": {"uri": "hf://x/a"}}, {"name": "b", "source": {"uri": "hf://x/b"}}])
    assert annotations(m=m, d=mdep(adapters=["a"])) == annotations(m=m, d=mdep(adapters=["b"]))


def test_trust_configmap():
    cm = children()[("ConfigMap", "llama-trust")]
    assert cm["data"] == {"model.sig": BUNDLE.decode(), "signer.pem": PEM.decode()}
    assert cm["immutable"] is True and cm["metadata"]["annotations"] == {"llmos.dev/model-digest": DIGEST}
    # Named by content: another bundle is another ConfigMap, and the pods name the one made with them.
    other = children(bundle=BUNDLE + b" ")
    assert other[("ConfigMap", "llama-trust")]["metadata"]["name"] != cm["metadata"]["name"]
    binary = children(bundle=b"\xff\x00")[("ConfigMap", "llama-trust")]
    assert binary["binaryData"] == {"model.sig": "/wA="}
    # Another deployment of the same Model revision mounts the same one.
    again = render_children(mdep(), model(), H100, CFG, bundle=BUNDLE, signer_pem=PEM)
    assert cm["metadata"]["name"] in {o["metadata"]["name"] for o in again}
    with pytest.raises(RenderError) as info:
        children(bundle=None)
    assert info.value.reason == "SignatureUnavailable"


def test_adapters_configmap():
    m = model(adapters=[{"name": "sql", "source": {"uri": "hf://a/sql", "revision": "v2"},
                         "signature": {"uri": "s3://b/sql.sig"}},
                        {"name": "fr", "source": {"uri": "hf://a/fr"}},
                        {"name": "open", "source": {"uri": "hf://a/open"}, "signature": {"policy": "Disabled"}}])
    cm = children(m=m, d=mdep(adapters=["sql", "fr", "open"]),
                  adapter_bundles={"sql": b'{"sig": 1}'})[("ConfigMap", "chat-adapters")]
    # The runtime's format: signature is the path of a bundle beside adapters.json, or null.
    assert json.loads(cm["data"]["adapters.json"]) == {"adapters": [
        {"name": "sql", "source": {"uri": "hf://a/sql", "revision": "v2"}, "signature": "sql.sig"},
        {"name": "fr", "source": {"uri": "hf://a/fr"}, "signature": {"policy": "Required"}},  # no bundle: refused
        {"name": "open", "source": {"uri": "hf://a/open"}, "signature": None}]}
    assert cm["data"]["sql.sig"] == '{"sig": 1}'
    unsigned = model(signature={"policy": "Disabled"}, adapters=[{"name": "fr", "source": {"uri": "hf://a/fr"}}])
    cm = children(m=unsigned, d=mdep(adapters=["fr"]), bundle=None, signer_pem=None)[("ConfigMap", "chat-adapters")]
    assert json.loads(cm["data"]["adapters.json"])["adapters"][0]["signature"] is None
    empty = children(m=m)[("ConfigMap", "chat-adapters")]
    assert json.loads(empty["data"]["adapters.json"]) == {"adapters": []}
    with pytest.raises(RenderError) as info:
        children(m=m, d=mdep(adapters=["de"]))
    assert info.value.reason == "UnknownAdapter" and "de" in str(info.value)


def test_service_and_pdb():
    objs = children(d=mdep(replicas=2))
    svc = objs[("Service", "chat")]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "openai", "port": 8000, "targetPort": "openai", "protocol": "TCP",
                                     "appProtocol": "http"}]
    assert svc["spec"]["selector"] == objs[("Deployment", "chat")]["spec"]["selector"]["matchLabels"]
    pdb = objs[("PodDisruptionBudget", "chat")]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == objs[("Deployment", "chat")]["spec"]["selector"]


def test_no_pdb_for_one_replica():
    # "At most one pod evicted" allows evicting the only one: a PDB would cost writes and protect nothing.
    assert ("PodDisruptionBudget", "chat") not in children()
    assert ("PodDisruptionBudget", "chat") not in children(d=mdep(replicas=3), replicas=1)  # admission granted one
    assert ("PodDisruptionBudget", "chat") in children(d=mdep(replicas=1), replicas=2)


def test_config_changes_flow_through():
    cfg = config_from_yaml("runtime: {image: 'r/rt:2', openaiPort: 9000, healthPort: 9001, cpuPerGPU: 0}\n")
    objs = {o["kind"]: o for o in render_children(mdep(), model(), cfg.gpu_class("h100"), cfg, bundle=BUNDLE,
                                                     signer_pem=PEM)}
    c = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "r/rt:2" and c["command"][c["command"].index("--port") + 1] == "9000"
    assert [p["containerPort"] for p in c["ports"]] == [9000, 9001]
    assert "cpu" not in c["resources"]["requests"]
    assert objs["Service"]["spec"]["ports"][0]["port"] == 9000


def test_helpers():
    assert pod_requests(mdep(), H100, CFG) == {"nvidia.com/gpu": "2", "cpu": "4", "memory": "32Gi"}
    assert endpoint_url(mdep(), CFG) == "http://chat.team-a.svc:8000/v1"
    assert selector_string("chat") == "app.kubernetes.io/name=llmos-runtime,llmos.dev/model-deployment=chat"
    with pytest.raises(ValueError):
        render_children(mdep(), model(), CFG.gpu_class("l4"), CFG, bundle=BUNDLE, signer_pem=PEM)


def test_adapters_json_is_what_the_runtime_reads(tmp_path):
    adapters = pytest.importorskip("llmos_runtime.adapters")
    m = model(adapters=[{"name": "sql", "source": {"uri": "hf://a/sql", "revision": "v2"}},
                        {"name": "fr", "source": {"uri": "hf://a/fr"}},
                        {"name": "open", "source": {"uri": "hf://a/open"}, "signature": {"policy": "Disabled"}}])
    cm = children(m=m, d=mdep(adapters=["sql", "fr", "open"]),
                  adapter_bundles={"sql": b"{}"})[("ConfigMap", "chat-adapters")]
    specs, invalid = adapters.parse_adapters(cm["data"]["adapters.json"].encode(), tmp_path)
    by_name = {s.name: s for s in specs}
    assert by_name["sql"].source == "hf://a/sql" and by_name["sql"].revision == "v2"
    assert by_name["sql"].signature == tmp_path / "sql.sig"
    assert by_name["open"].signature is None
    assert list(invalid) == ["fr"]  # required, but no bundle was supplied: that adapter alone fails closed


def test_pods_without_adapters_get_no_token_and_adapters_trust_every_tenant_key():
    plain = deployment()["spec"]["template"]["spec"]
    assert plain["automountServiceAccountToken"] is False
    m = model(adapters=[{"name": "sql", "source": {"uri": "hf://a/sql"}}])
    d = mdep(adapters=["sql"])
    objs = children(m=m, d=d, tenant_keys={"release": PEM, "team": b"TEAM-PEM"})
    pod = objs[("Deployment", "chat")]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True  # only to report its adapters on its own pod
    cmd = pod["containers"][0]["command"]
    keys = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--trusted-key"]
    assert keys == ["/etc/llmos/trust/signer.pem", "/etc/llmos/trust/key-release.pem", "/etc/llmos/trust/key-team.pem"]
    assert objs[("ConfigMap", "llama-trust")]["data"]["key-team.pem"] == "TEAM-PEM"


def test_runtime_is_told_the_platforms_engine_policy_and_verify_mode():
    cfg = config_from_yaml("engine: {extraAllowedFlags: [--my-flag]}")
    d = mdep(engine={"extraArgs": ["--trust-remote-code", "--my-flag", "1"]})
    m = model(source={"uri": "pvc://weights/llama", "verify": "copy"})
    objs = render_children(d, m, H100, cfg, bundle=BUNDLE, signer_pem=PEM)
    cmd = next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
    runtime = cmd[:cmd.index("--")]
    assert runtime[runtime.index("--verify-mode") + 1] == "copy"
    assert runtime[runtime.index("--allow-engine-flag") + 1] == "--my-flag"
    assert "--allow-remote-code" in runtime
    assert "--verify-mode" not in container() and "--allow-remote-code" not in container()["command"]
