"""The outcome of checking a Model's signature bundle against the keys its tenant trusts. Pure data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a Model's signature, plus what the pods need to check it again themselves."""

    verified: bool
    reason: str
    message: str
    digest: str | None = None
    signer: str | None = None
    key_hint: str | None = None
    file_count: int | None = None
    bundle: bytes | None = None
    signer_pem: bytes | None = None
    keys: dict[str, bytes] | None = None  # every key trusted for the Model's namespace (adapters may use any)

    @property
    def servable(self) -> bool:
        return self.verified or self.reason == "SignatureDisabled"
