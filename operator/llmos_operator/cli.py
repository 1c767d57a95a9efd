"""`llmos` — the command line: `dev` (local control plane), `operator` (run the operator), `model` (sign/verify).

Sub-commands import their dependencies lazily so `llmos model verify` does not pay for kopf or the Kubernetes client.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse


def _dev(args: argparse.Namespace) -> int:
    from .dev import cluster

    if args.dev_command == "up":
        from pathlib import Path

        from .dev.nodes import load_pools, per_class_resources

        pools = load_pools(Path(args.nodes) if args.nodes else None)
        if args.per_class_gpu_resources:
            pools = per_class_resources(pools)
        kubeconfig = cluster.up(args.name, pools=pools, node_timeout=args.node_timeout)
        print(kubeconfig)
        return 0
    if args.dev_command == "down":
        stopped = cluster.down(args.name)
        print(f"cluster {args.name!r} {'stopped and removed' if stopped else 'was not running'}")
        return 0
    if args.dev_command == "status":
        print(cluster.status(args.name))
        return 0
    if args.dev_command == "demo":
        from .dev import demo

        return demo.run(args.name)
    raise AssertionError(args.dev_command)


def _few_malloc_arenas() -> None:
    """glibc gives threads that allocate at once their own malloc arenas (up to 8 per core), each fragmented on
    its own; the operator runs ~30 threads (informers, workers, writers). Two arenas, set before any thread starts,
    as ``MALLOC_ARENA_MAX=2`` would (where that is set, it wins). Peak RSS at 1,000 deployments (bench/scale.py):
    245 MB with it, 257–303 MB in the runs before without it."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc (musl, macOS): nothing to tune


def _operator(args: argparse.Namespace) -> int:
    _few_malloc_arenas()
    from .controller import manager
    from .kube.leader import LeaseNamespaceMissing

    liveness_port = urllib.parse.urlsplit(args.liveness).port
    if args.metrics_port and liveness_port == args.metrics_port:  # one server would answer both, the other not start
        print(f"llmos operator: --metrics-port {args.metrics_port} is also the port of --liveness {args.liveness}: "
              "give them different ports", file=sys.stderr)
        return 2
    try:
        return manager.run(
            config_path=args.config,
            liveness=args.liveness,
            metrics_port=args.metrics_port,
            standalone=args.standalone,
            lease_name=args.leader_election_id,
            lease_namespace=args.leader_election_namespace,
        )
    except LeaseNamespaceMissing as exc:
        print(f"llmos operator: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmos", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="local control plane built from source, with fake GPU nodes")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    for name, help_text in (
        ("up", "start the local cluster (or reuse it) and print its kubeconfig path"),
        ("down", "stop the local cluster and remove its state"),
        ("status", "say what runs"),
        ("demo", "cluster, operator, example tenants, models and deployments, then a status table"),
    ):
        p = dev_sub.add_parser(name, help=help_text)
        p.add_argument("--name", default="llmos", help="cluster name (default: llmos)")
        if name == "up":
            p.add_argument("--nodes", help="YAML file of node pools (default: 4×8 H100, 4×4 L4, 2 CPU nodes)")
            p.add_argument("--per-class-gpu-resources", action="store_true",
                           help="GPU nodes advertise nvidia.com/<pool> (nvidia.com/h100, nvidia.com/l4) instead of "
                                "nvidia.com/gpu, as the device plugin's resource renaming does: give the operator's "
                                "GPU classes the same resourceName")
            p.add_argument("--node-timeout", type=float, default=None, metavar="SECONDS",
                           help="how long to wait for the nodes to turn Ready (default: 60 s + 0.5 s per node "
                                "beyond 100)")
    dev.set_defaults(func=_dev)

    op = sub.add_parser("operator", help="the llmos operator")
    op_sub = op.add_subparsers(dest="operator_command", required=True)
    run = op_sub.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument("--config", help="operator configuration YAML (GPU classes, trusted keys, images)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint URL")
    run.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0 disables)")
    run.add_argument("--standalone", action="store_true",
                     help="no leader election: reconcile at once (a single operator process, tests, development)")
    run.add_argument("--leader-election-id", default=None,
                     help="name of the coordination.k8s.io Lease that elects the one active replica "
                          "(default: llmos-operator)")
    run.add_argument("--leader-election-namespace", default=None,
                     help="namespace of that Lease (default: $LLMOS_OPERATOR_NAMESPACE, else llmos-system)")
    op.set_defaults(func=_operator)

    from llmos_signing.cli import add_model_commands  # the same distribution: present in every install

    add_model_commands(sub)
    from .cli_keys import add_key_commands
    from .cli_usage import add_usage_command

    add_key_commands(sub)
    add_usage_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line a person can act on, not a traceback
        from .dev.cluster import ClusterError

        if isinstance(exc, ClusterError):
            print(f"llmos: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
