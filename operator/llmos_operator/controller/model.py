"""The Model reconciler: the platform's policy, then the signature bundle against the keys the tenant trusts; status
and Events. Re-verified when its bundle ConfigMap, a trusted-key Secret or its Tenant changes (watched, metadata
only). The operator never reads a path or URL a tenant named, nor a Secret outside its own namespace."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from typing import Any

from cachetools import LRUCache

from ..api.types import Model, SignatureSpec, Tenant
from ..core import policy
from ..core.status import model_status, status_changed, transitions, verified_condition
from ..core.verification import Verification
from .state import Context
from .triggers import Triggers

log = logging.getLogger("llmos.controller.model")

# Test knob (docs/testing.md): seconds each Model verification waits first, so a test can act in the window between a
# Model edit and its verification ("a paused verifier").
VERIFY_DELAY_SECONDS = float(os.environ.get("LLMOS_VERIFY_DELAY_SECONDS", "0"))


class ModelReconciler:
    def __init__(self, ctx: Context, triggers: Triggers):
        self.ctx, self.triggers = ctx, triggers
        self._verify_memo: LRUCache = LRUCache(maxsize=4096)  # digest of (bundle, keys) → verify_bundle's answer

    def reconcile(self, namespace: str, name: str) -> None:
        model = self.ctx.cache.stored(Model, name, namespace)
        if model is None:
            self.triggers.deployments_of_model(namespace, name)
            return
        if VERIFY_DELAY_SECONDS:
            time.sleep(VERIFY_DELAY_SECONDS)
        outcome = self.verify(model)
        self.ctx.state.remember_verification(namespace, name, model.metadata.uid, model.metadata.generation, outcome)
        status = self._status(model, outcome)
        old = model.status.to_dict()
        if status_changed(old, status):
            self.ctx.kube.patch_status("Model", name, namespace, status)
            raw = {"apiVersion": model.api_version, "kind": "Model", "metadata": {
                "name": name, "namespace": namespace, "uid": model.metadata.uid}}
            for t in transitions(old.get("conditions", []), status["conditions"]):
                warn = t.status != "True" or outcome.reason == "SignatureDisabled"
                self.ctx.events(raw, "Warning" if warn else "Normal", t.reason, t.message)
            self.ctx.admit_again(namespace=namespace)
            self.triggers.deployments_of_model(namespace, name)

    def _status(self, model: Model, outcome: Verification) -> dict:
        revision = model.spec.source.revision
        old = model.status
        if outcome.servable:
            status = model_status(model, verified=outcome.verified, reason=outcome.reason, message=outcome.message,
                                  digest=outcome.digest, signer=outcome.signer, serving_revision=revision)
            status.update({"keyHint": outcome.key_hint, "fileCount": outcome.file_count})
        elif self._previous_revision_serves(model, outcome):
            # A new revision that does not verify never reaches a pod: the one before keeps serving.
            message = (f"revision {revision or '(unpinned)'} (generation {model.metadata.generation}) rejected: "
                       f"{outcome.reason}: {outcome.message}; {old.digest} (revision "
                       f"{old.serving_revision or '(unpinned)'}, signed by {old.signer}) keeps serving")
            status = model_status(model, verified=False, reason="RevisionRejected", message=message,
                                  digest=old.digest, signer=old.signer, serving_revision=old.serving_revision,
                                  pending_revision=revision)
            status.update({"keyHint": old.key_hint, "fileCount": old.file_count})
        else:
            status = model_status(model, verified=False, reason=outcome.reason, message=outcome.message,
                                  pending_revision=revision)
            status.update({"keyHint": None, "fileCount": None})
        return status

    def verification(self, model: Model) -> Verification:
        """The Model's last verification if it is of this generation (``reconcile`` renews it whenever keys or
        bundle change), else a fresh one: deployments do not re-read bundles and keys on every event."""
        ns = model.metadata.namespace or ""
        outcome = self.ctx.state.verification(ns, model.metadata.name, model.metadata.uid, model.metadata.generation)
        if outcome is None:
            outcome = self.verify(model)
            self.ctx.state.remember_verification(ns, model.metadata.name, model.metadata.uid,
                                                 model.metadata.generation, outcome)
        return outcome

    def verify(self, model: Model) -> Verification:
        from llmos_signing import VerificationError

        tenant = self.ctx.cache.ownership().tenant_of(model.metadata.namespace or "")
        refusal = policy.model_refusal(model, tenant)
        if refusal is not None:
            return Verification(False, *refusal)
        keys = self.trusted_keys(tenant)
        if model.spec.signature.policy == "Disabled":
            return Verification(False, "SignatureDisabled",
                                "spec.signature.policy is Disabled: the weights are served without verification "
                                "(the tenant's policy allows unsigned models)", keys=keys)
        bundle = self.read_bundle(model.metadata.namespace or "", model.spec.signature)
        if isinstance(bundle, str):
            return Verification(False, "BundleUnavailable", bundle, keys=keys)
        if not keys:
            return Verification(False, "NoTrustedKeys", "the tenant trusts no key (spec.trustedKeys of its Tenant) "
                                "and the operator configuration names none", bundle=bundle)
        signed = self.check_bundle(bundle, keys)
        if isinstance(signed, VerificationError):
            return Verification(False, signed.reason, str(signed), bundle=bundle, keys=keys)
        return Verification(
            True, "Verified", f"signed by {signed.signer} ({signed.file_count} files)",
            digest=f"sha256:{signed.root_digest}", signer=signed.signer, key_hint=signed.key_hint,
            file_count=signed.file_count, bundle=bundle, signer_pem=keys[signed.signer], keys=keys,
        )

    def check_bundle(self, bundle: bytes, keys: dict[str, bytes]) -> Any:
        """``verify_bundle``'s answer (its result, or the VerificationError): same bundle, same keys, same answer, so
        a resync that re-checks every Model stays cheap."""
        from llmos_signing import VerificationError, verify_bundle

        memo_key = hashlib.sha256(json.dumps([bundle.hex(), sorted((k, v.hex()) for k, v in keys.items())])
                                  .encode()).hexdigest()
        signed = self._verify_memo.get(memo_key)
        if signed is None:
            try:
                signed = verify_bundle(bundle, keys)
            except VerificationError as exc:
                signed = exc
            self._verify_memo[memo_key] = signed
        return signed

    def check_adapter(self, model: Model, index: int, keys: dict[str, bytes]) -> tuple[bytes | None, dict[str, Any]]:
        """An adapter's bundle (None when it has none to hand the runtime) and its verification for the
        ModelDeployment's status: ``{"signature": reason, "signer"?, "message"?}``. The runtime verifies the files
        against that bundle again before loading them; an adapter without a signature of its own follows the
        Model's policy."""
        from llmos_signing import VerificationError

        adapter = model.spec.adapters[index]
        sig = adapter.signature if adapter.signature is not None else None
        policy_ = sig.policy if sig is not None else model.spec.signature.policy
        if policy_ == "Disabled":
            return None, {"signature": "SignatureDisabled", "message": "served without verification (the tenant's "
                                                                      "policy allows unsigned weights)"}
        if sig is None:
            return None, {"signature": "SignatureRequired",
                          "message": f"spec.adapters[{index}].signature of Model {model.metadata.name} is not set: "
                                     "the runtime refuses the adapter"}
        bundle = self.read_bundle(model.metadata.namespace or "", sig, f"spec.adapters[{index}].signature")
        if isinstance(bundle, str):
            return None, {"signature": "BundleUnavailable", "message": bundle}
        signed = self.check_bundle(bundle, keys)
        if isinstance(signed, VerificationError):
            return bundle, {"signature": signed.reason, "message": str(signed)}
        return bundle, {"signature": "Verified", "signer": signed.signer}

    def trusted_keys(self, tenant: Tenant | None) -> dict[str, bytes]:
        """The cluster's keys and the tenant's. Keys in Secrets are read only from the operator's own namespace: a
        tenant must not make the operator read another namespace's Secret."""
        config = self.ctx.config
        keys = {name: pem.encode() for name, pem in config.trusted_keys.items()}
        if tenant is None:
            return keys
        refused = policy.refused_keys(tenant, config)
        for key in tenant.spec.trusted_keys:
            if key.public_key:
                keys[key.name] = key.public_key.encode()
            elif key.secret_ref and key.name not in refused:
                ref = key.secret_ref
                secret = self.ctx.cache.read_watched("Secret", "KeySecret", ref.name, config.operator_namespace)
                if secret is not None and ref.key in secret[0]:
                    keys[key.name] = base64.b64decode(secret[0][ref.key])
                else:
                    log.warning("trusted key %s of tenant %s: Secret %s/%s has no key %s",
                                key.name, tenant.metadata.name, config.operator_namespace, ref.name, ref.key)
        return keys

    def read_bundle(self, namespace: str, sig: SignatureSpec, field: str = "spec.signature") -> bytes | str:
        """The bundle bytes from a ConfigMap of the object's own namespace, or a sentence saying why there are none.
        The operator never reads a path or URL a tenant named."""
        if sig.bundle_ref is not None:
            ref = sig.bundle_ref
            cm = self.ctx.cache.read_watched("ConfigMap", "BundleConfigMap", ref.name, namespace)
            if cm is None:
                return f"ConfigMap {ref.name} ({field}.bundleRef) does not exist"
            data, binary = cm
            if ref.key in binary:
                return base64.b64decode(binary[ref.key])
            if ref.key in data:
                return data[ref.key].encode()
            return f"ConfigMap {ref.name} has no key {ref.key!r} ({field}.bundleRef.key)"
        if sig.uri:
            return (f"{field}.uri {sig.uri} is not read by the operator: put the bundle in a ConfigMap of this "
                    f"namespace and name it in {field}.bundleRef")
        return f"no signature given: set {field}.bundleRef (or policy: Disabled)"

    def _previous_revision_serves(self, model: Model, outcome: Verification) -> bool:
        """The newest spec failed verification. Its previous revision keeps serving if it was verified (signed), the
        failure is of a newer spec (not the served one losing its signature), and its signer is still trusted."""
        from llmos_signing import key_hint, load_public_key

        old = model.status
        cond = verified_condition(model)
        if not old.digest or not old.key_hint or cond is None:
            return False
        newer_spec = old.observed_generation != model.metadata.generation
        if not (cond.reason == "RevisionRejected" or (cond.status == "True" and newer_spec)):
            return False
        keys = outcome.keys if outcome.keys is not None else self.trusted_keys(
            self.ctx.cache.ownership().tenant_of(model.metadata.namespace or ""))
        for pem in keys.values():
            try:
                if key_hint(load_public_key(pem)) == old.key_hint:
                    return True
            except Exception:  # noqa: BLE001 — an unreadable key trusts nothing
                continue
        return False
