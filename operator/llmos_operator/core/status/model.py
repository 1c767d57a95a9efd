"""A Model's status, and what a deployment may read from it: is it servable, does an older revision serve. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...api.names import RECONCILING, STALLED, VERIFIED
from ...api.types import Condition, Model
from .conditions import condition, merge_conditions, now_rfc3339


def verified_condition(model: Model) -> Condition | None:
    """The Model's ``Verified`` condition, as its reconciler last wrote it."""
    return next((c for c in model.status.conditions if c.type == VERIFIED), None)


def model_servable(model: Model) -> bool:
    """Verified for its current generation, or verification deliberately disabled."""
    if model.status.observed_generation != model.metadata.generation:
        return False
    cond = verified_condition(model)
    if cond is None:
        return False
    return cond.status == "True" or (
        cond.reason == "SignatureDisabled" and model.spec.signature.policy == "Disabled")


def model_serving(model: Model) -> bool:
    """Does a verified revision of the Model serve (perhaps an older one than its spec names)? True while its
    newest revision is being verified or was rejected (RevisionRejected), if the one before was verified and its
    signer is still trusted; False once the served revision itself lost its signature (a key revoked)."""
    cond = verified_condition(model)
    if cond is None:
        return False
    if cond.reason == "RevisionRejected":
        return bool(model.status.digest)
    return cond.status == "True" or cond.reason == "SignatureDisabled"


def model_status(
    model: Model,
    *,
    verified: bool,
    reason: str,
    message: str,
    digest: str | None = None,
    signer: str | None = None,
    serving_revision: str | None = None,
    pending_revision: str | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """Status of a Model after a verification attempt (``reason`` e.g. Verified, SignatureDisabled,
    SignatureInvalid, RevisionRejected). ``digest``/``signer``/``serving_revision``: of the weights served (a rejected
    new revision leaves the previous ones); ``pending_revision``: the newest spec's while it is not the one served."""
    now = now or now_rfc3339()
    gen = model.metadata.generation
    short = None
    if digest:
        short = digest.split(":", 1)[-1][:12]
    stalled = not verified and reason != "SignatureDisabled"
    return {
        "observedGeneration": gen,
        "digest": digest,
        "shortDigest": short,
        "signer": signer,
        "servingRevision": serving_revision,
        "pendingRevision": pending_revision,
        "conditions": merge_conditions(model.status.conditions, [
            condition(VERIFIED, verified, reason, message, gen),
            # kstatus: a Model that does not verify stays so until someone changes it, its key or its bundle.
            condition(STALLED, True, reason, message, gen) if stalled else condition(STALLED, False, reason, "", gen),
            condition(RECONCILING, False, reason, "", gen),
        ], now),
    }


@dataclass(frozen=True)
class ModelCheck:
    verified: bool | None  # None: not known yet
    reason: str
    message: str
    digest: str | None = None


def check_model(model: Model | None, name: str) -> ModelCheck:
    """Whether the Model a deployment names may be served, from the Model's own status."""
    if model is None:
        return ModelCheck(False, "ModelNotFound", f"Model {name} does not exist in this namespace")
    verified = verified_condition(model)
    stale = model.status.observed_generation != model.metadata.generation
    if verified is None or (stale and model.metadata.generation is not None):
        return ModelCheck(None, "VerificationPending", f"Model {name} has not been verified yet")
    if verified.reason == "SignatureDisabled" and model.spec.signature.policy == "Disabled":
        # Served, deliberately unverified: admission and rollout proceed, ModelVerified stays False as a warning.
        return ModelCheck(True, verified.reason, f"Model {name}: {verified.message}")
    if verified.status == "True":
        signer = f" signed by {model.status.signer}" if model.status.signer else ""
        what = f"{model.status.digest}{signer}" if model.status.digest else verified.message
        return ModelCheck(True, verified.reason, f"Model {name}: {what}".rstrip(": "), model.status.digest)
    return ModelCheck(False, verified.reason, f"Model {name}: {verified.message}")


