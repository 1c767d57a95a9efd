"""llmos's control loop on the generic runtime of ``kube/``: the manager (start-up order, workers, resync, kopf's
probes), the cache (what is watched and how it is summarised), the triggers (which event wakes which key), the
shared state, and one reconciler per kind plus the admission pass."""
