"""The integration tests' fixtures (`crds`, `operator_kubeconfig`, `operator`, `objects`) are those of
tests/support/cluster_fixtures.py, a plugin of tests/conftest.py shared with the engine tests (one operator per run).
The helpers stay importable from here."""

from tests.support.cluster_fixtures import GROUP, REPO, VERSION, Objects, OperatorProcess, deployment_exists

__all__ = ["GROUP", "REPO", "VERSION", "Objects", "OperatorProcess", "deployment_exists"]
