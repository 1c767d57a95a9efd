"""Exit codes of ``llmos-runtime serve`` and its one-line termination message (docs/runtime.md has the table)."""

from __future__ import annotations

import logging
from pathlib import Path

EXIT_FAILURE = 1  # unexpected error
EXIT_USAGE = 2  # bad command line or refused engine argument
EXIT_SOURCE = 3  # model source failed (cache directory not writable included)
EXIT_VERIFY = 4  # verification failed (or the files changed after verification)
EXIT_ENGINE = 5  # engine failed: could not spawn, exited (also while draining), hung, or its guard is not in force
EXIT_BUDGET = 6  # a startup phase ran past its budget
TERMINATION_LOG_LIMIT = 4096  # what the kubelet reads of /dev/termination-log

log = logging.getLogger("llmos_runtime")


def write_termination_log(path: Path | None, line: str) -> None:
    if path is None:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(line.encode("utf-8")[: TERMINATION_LOG_LIMIT - 1].decode("utf-8", "ignore") + "\n")
    except OSError as e:
        log.debug("termination log %s not writable: %s", path, e)
