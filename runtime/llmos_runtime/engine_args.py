"""Which vLLM flags a tenant may pass in ``spec.engine.extraArgs``: one allow-list, used by the operator (admission
and rendering), the Helm chart's ValidatingAdmissionPolicy (as its parameter) and the runtime (which refuses the
same flags itself: the pod spec is not the only way in).

Allowed flags tune the engine without loading anything from a path, a URL or a hub: no tokenizer, chat template,
config file, LoRA module path, speculative model or remote code. ``--trust-remote-code`` is separate: it is allowed
only where the platform sets ``Tenant.spec.policy.allowRemoteCode``.

Pure Python, no imports beyond the standard library: the operator image imports it without vLLM.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Flags that only tune scheduling, memory, numerics or logging. Spelled with '-'; '_' spellings are normalised.
DEFAULT_ALLOWED_FLAGS: frozenset[str] = frozenset({
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--max-num-partial-prefills",
    "--max-long-partial-prefills",
    "--long-prefill-token-threshold",
    "--enable-prefix-caching",
    "--no-enable-prefix-caching",
    "--prefix-caching-hash-algo",
    "--enable-chunked-prefill",
    "--no-enable-chunked-prefill",
    "--kv-cache-dtype",
    "--kv-cache-memory-bytes",
    "--calculate-kv-scales",
    "--enforce-eager",
    "--no-enforce-eager",
    "--block-size",
    "--dtype",
    "--seed",
    "--max-loras",
    "--max-lora-rank",
    "--max-cpu-loras",
    "--enable-lora",
    "--fully-sharded-loras",
    "--swap-space",
    "--cpu-offload-gb",
    "--max-seq-len-to-capture",
    "--max-logprobs",
    "--disable-log-stats",
    "--disable-log-requests",
    "--enable-log-requests",
    "--disable-sliding-window",
    "--scheduling-policy",
    "--num-scheduler-steps",
    "--async-scheduling",
    "--disable-custom-all-reduce",
    "--pipeline-parallel-size",
    "--data-parallel-size",
    "--enable-expert-parallel",
    "--quantization",
    "--override-generation-config",
    "--guided-decoding-backend",
    "--structured-outputs-config",
    "--reasoning-parser",
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "--uvicorn-log-level",
    "--disable-uvicorn-access-log",
    "--disable-fastapi-docs",
    "--max-parallel-loading-workers",
})

REMOTE_CODE_FLAG = "--trust-remote-code"
# A value that happens to start with '-' (a negative number) is not a flag.
_NEGATIVE_NUMBER = re.compile(r"^-\d")


def normalise_flag(arg: str) -> str:
    """``--max_num_seqs=8`` → ``--max-num-seqs``: the flag part, '_' spelled '-' (vLLM accepts both)."""
    flag = arg.split("=", 1)[0]
    if flag.startswith("--"):
        return "--" + flag[2:].replace("_", "-")
    return flag


def is_flag(arg: str) -> bool:
    return arg.startswith("-") and not _NEGATIVE_NUMBER.match(arg)


@dataclass(frozen=True)
class RefusedArg:
    index: int  # position in extraArgs
    flag: str  # as normalised
    reason: str

    @property
    def field_path(self) -> str:
        return f"spec.engine.extraArgs[{self.index}]"

    def __str__(self) -> str:
        return f"{self.field_path}: {self.reason}"


def refused_args(
    args: Sequence[str], *, allowed: Iterable[str] = DEFAULT_ALLOWED_FLAGS, allow_remote_code: bool = False
) -> list[RefusedArg]:
    """Every flag in ``args`` that is not allowed, with its index. Values (arguments not starting with '-') are
    not judged: only the flag that precedes them decides."""
    allowed_set = {normalise_flag(f) for f in allowed}
    out = []
    for i, arg in enumerate(args):
        if not is_flag(arg):
            continue
        flag = normalise_flag(arg)
        if flag == REMOTE_CODE_FLAG:
            if not allow_remote_code:
                out.append(RefusedArg(i, flag, f"{flag} is allowed only where the platform sets the tenant's "
                                                "spec.policy.allowRemoteCode"))
        elif flag not in allowed_set:
            out.append(RefusedArg(i, flag, f"engine flag {flag} is not allowed (it may load files, code or "
                                           "settings that were not verified); allowed flags are listed in "
                                           "docs/security.md"))
    return out


def has_flag(args: Sequence[str], flag: str) -> bool:
    """Is ``flag`` (any spelling, with or without ``=value``) among ``args``?"""
    want = normalise_flag(flag)
    return any(is_flag(a) and normalise_flag(a) == want for a in args)
