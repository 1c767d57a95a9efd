"""`llmos dev up`'s node wait on the real API server: one list and one watch of the node list as a whole."""

from __future__ import annotations

import time

from llmos_operator.dev import cluster as dev_cluster
from llmos_operator.dev.nodes import DEFAULT_POOLS, node_manifests


def test_the_wait_returns_at_once_when_every_node_is_ready(cluster):
    names = {m["metadata"]["name"] for m in node_manifests(DEFAULT_POOLS)}
    start = time.monotonic()
    assert dev_cluster.wait_nodes_ready(cluster.kubeconfig, names, timeout=30) == set()
    assert time.monotonic() - start < 5


def test_the_wait_names_the_nodes_that_never_turn_ready(cluster):
    start = time.monotonic()
    missing = dev_cluster.wait_nodes_ready(cluster.kubeconfig, {"kwok-h100-0", "kwok-no-such-node"}, timeout=3)
    assert missing == {"kwok-no-such-node"}
    assert 2.5 < time.monotonic() - start < 10


def test_the_api_server_hands_out_service_addresses_from_a_large_range(cluster):
    cidrs = cluster.kubectl("get", "servicecidr", "kubernetes", "-o", "jsonpath={.spec.cidrs[0]}").stdout
    assert cidrs == dev_cluster.SERVICE_CLUSTER_IP_RANGE
