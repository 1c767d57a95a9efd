"""The HTTPRoute llmos renders for a ModelDeployment when a parent Gateway is configured, checked by the real API
server against the Gateway API's standard CRDs (sigs.k8s.io/gateway-api v1.6.x, fetched as a Go module by
hack/build-binaries.sh): accepted as rendered, with the defaults the CRDs add; a route that breaks their rules is
refused (the check is real). That the operator writes it as a child is tests/unit/test_reconcilers.py."""

from __future__ import annotations

import json
import subprocess

import pytest

from llmos_operator.api.types import ModelDeployment
from llmos_operator.config import config_from_yaml
from llmos_operator.dev.cluster import REPO_ROOT
from llmos_operator.render.gateway import render_http_route
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway_crds(cluster):
    script = REPO_ROOT / "hack" / "build-binaries.sh"
    subprocess.run(["bash", str(script), "gateway_api"], check=True, capture_output=True)
    paths = dict(line.split("=", 1) for line in subprocess.run(["bash", str(script), "paths"], check=True,
                                                                  capture_output=True, text=True).stdout.split())
    cluster.kubectl("apply", "--server-side", "-f", paths["GATEWAY_API_CRDS"])
    cluster.kubectl("wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io",
                    "--timeout=60s")
    return paths["GATEWAY_API_CRDS"]


def test_the_rendered_http_route_is_valid_for_the_gateway_api(cluster, namespace, gateway_crds):
    config = config_from_yaml("gateway: {parentRefs: [{name: public, namespace: gateways, sectionName: https}], "
                              "hostnames: [models.example.com]}")
    mdep = ModelDeployment.model_validate({"metadata": {"name": "chat", "namespace": namespace},
                                           "spec": {"model": "m", "gpu": {"class": "h100", "count": 1}}})
    route = render_http_route(mdep, config)
    assert route is not None
    wait_for(lambda: cluster.kubectl("apply", "-f", "-", input=json.dumps(route), check=False).returncode == 0,
             timeout=30, message="the HTTPRoute accepted (the CRD's schema served)")
    stored = json.loads(cluster.kubectl("get", "httproute", "chat", "-n", namespace, "-o", "json").stdout)
    rule = stored["spec"]["rules"][0]
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": f"/{namespace}/chat/v1"}
    assert rule["filters"][0]["urlRewrite"]["path"]["replacePrefixMatch"] == "/v1"
    assert rule["backendRefs"][0]["name"] == "chat" and rule["backendRefs"][0]["port"] == 8000
    assert stored["spec"]["parentRefs"][0]["name"] == "public"

    bad = json.loads(json.dumps(route))
    bad["metadata"]["name"] = "bad"
    bad["spec"]["rules"][0]["matches"][0]["path"]["value"] = "no-leading-slash"
    out = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "spec.rules[0].matches[0].path" in out.stderr, out.stderr
