"""The pure core of the operator: admission and the ledger (quota/), placement, platform policy, rollout planning and
status per kind. No I/O, no threads, no kopf or kubernetes import: callers pass what they read."""
