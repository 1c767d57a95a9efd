"""Reports the adapters this runtime serves on its own pod, as the annotation ``llmos.dev/adapters``
(``{"loaded": [names], "failed": {name: reason}}``); the operator sums the pods' reports into the ModelDeployment's
``status.adapters``. On only where the pod knows itself (``LLMOS_POD_NAME``, ``LLMOS_POD_NAMESPACE``, set by the
operator's pod spec through the downward API) and can reach the API server (in-cluster, or ``KUBECONFIG``)."""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("llmos.runtime.report")
ANNOTATION = "llmos.dev/adapters"


class PodReporter:
    def __init__(self, namespace: str, name: str, core_api):
        self.namespace, self.name, self._core = namespace, name, core_api
        self._last: str | None = None

    @classmethod
    def from_env(cls) -> PodReporter | None:
        name, namespace = os.environ.get("LLMOS_POD_NAME"), os.environ.get("LLMOS_POD_NAMESPACE")
        if not (name and namespace):
            return None
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as exc:
                log.warning("adapter reports off: no API server credentials (%s)", exc)
                return None
        return cls(namespace, name, client.CoreV1Api())

    def report(self, loaded: list[str], failed: dict[str, str]) -> bool:
        """Annotate the pod if the report changed. Best effort: a failure is logged and retried on the next change
        (or call), never fatal to serving. Returns True when the annotation was written."""
        value = json.dumps({"loaded": sorted(loaded), "failed": dict(sorted(failed.items()))}, sort_keys=True)
        if value == self._last:
            return False
        try:
            self._core.patch_namespaced_pod(self.name, self.namespace,
                                            {"metadata": {"annotations": {ANNOTATION: value}}})
        except Exception as exc:  # noqa: BLE001 — reporting must never stop serving
            log.warning("could not annotate pod %s/%s with its adapters: %s", self.namespace, self.name, exc)
            return False
        self._last = value
        return True
