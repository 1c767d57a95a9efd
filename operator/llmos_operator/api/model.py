"""The Model kind: where its weights come from, its pinned revision, its signature, its LoRA adapters."""

from __future__ import annotations

import re

from pydantic import Field

from .base import (
    _AGE,
    ADAPTER_NAME,
    HF_URI,
    PVC_URI,
    SOURCE_URI,
    ApiModel,
    Condition,
    ConfigMapKeyRef,
    PrinterColumn,
    Quantization,
    Resource,
    Rule,
    SignaturePolicy,
    SourceVerify,
    _condition_column,
    _conditions_field,
)

# ---------------------------------------------------------------------------------------------------------------------
# Model


_OCI_NOT_YET = Rule(
    rule="!self.uri.startsWith('oci://')",
    message="oci:// sources are not supported by the runtime yet: use file://, pvc://, s3://, gs:// or hf://",
    field_path=".uri",
    check=lambda s: not s.uri.startswith("oci://"),
)


class ModelSource(ApiModel):
    """Where the weights come from."""

    __rules__ = (
        _OCI_NOT_YET,
        Rule(
            rule=f"!self.uri.startsWith('pvc://') || self.uri.matches('{PVC_URI}')",
            message="a pvc uri is pvc://<claim>/<path>, with claim a PersistentVolumeClaim name",
            field_path=".uri",
            check=lambda s: not s.uri.startswith("pvc://") or re.match(PVC_URI, s.uri) is not None,
        ),
        Rule(
            rule=f"!self.uri.startsWith('hf://') || self.uri.matches('{HF_URI}')",
            message="an hf uri is hf://<org>/<name>",
            field_path=".uri",
            check=lambda s: not s.uri.startswith("hf://") or re.match(HF_URI, s.uri) is not None,
        ),
    )

    uri: str = Field(
        max_length=2048,
        pattern=SOURCE_URI,
        description="file://, pvc://claim/path, s3://, gs://, hf://org/name or oci:// URI.",
    )
    revision: str | None = Field(None, max_length=256, description="Revision (git commit, tag, object version).")
    verify: SourceVerify = Field(
        "inPlace",
        description="inPlace: hash the files where they are (file://, pvc://) and serve them after checking nothing "
        "changed; copy: hash while copying into pod-private storage and serve the copy (for volumes other writers "
        "can change). Remote sources always land in pod-private storage.",
    )


class SignatureSpec(ApiModel):
    """Where the OpenSSF Model Signing bundle is, and whether one is required."""

    __rules__ = (
        Rule(
            rule="!(has(self.bundleRef) && has(self.uri))",
            message="set at most one of bundleRef and uri",
            check=lambda s: not (s.bundle_ref is not None and s.uri is not None),
        ),
        # The operator must never read a path of its own machine because a tenant named it.
        Rule(
            rule="!has(self.uri) || !self.uri.startsWith('file://')",
            message="file:// is not allowed for a signature: put the bundle in a ConfigMap of this namespace and "
            "name it in bundleRef",
            field_path=".uri",
            check=lambda s: s.uri is None or not s.uri.startswith("file://"),
        ),
    )

    bundle_ref: ConfigMapKeyRef | None = Field(None, description="A ConfigMap key holding the bundle (model.sig).")
    uri: str | None = Field(None, max_length=2048, pattern=SOURCE_URI, description="URI of the bundle.")
    policy: SignaturePolicy = Field(
        "Required", description="Required: serve only verified weights. Disabled: skip verification."
    )


class AdapterSource(ApiModel):
    """Where the adapter weights come from."""

    __rules__ = (_OCI_NOT_YET,)

    uri: str = Field(max_length=2048, pattern=SOURCE_URI, description="URI of the adapter weights.")
    revision: str | None = Field(None, max_length=256, description="Revision.")


class ModelAdapter(ApiModel):
    """A LoRA adapter of the model."""

    name: str = Field(max_length=63, pattern=ADAPTER_NAME, description="Name under which the adapter is served.")
    source: AdapterSource
    signature: SignatureSpec | None = Field(None, description="Signature of the adapter weights.")


class ModelSpec(ApiModel):
    """A model: its weights, their signature, and its LoRA adapters."""

    source: ModelSource
    served_name: str | None = Field(
        None, max_length=256, description="Name clients use in the OpenAI API (default: the Model's name)."
    )
    signature: SignatureSpec = Field(
        default_factory=SignatureSpec, description="Signature of the weights.", json_schema_extra={"default": {}}
    )
    quantization: Quantization = Field("none", description="none, awq, gptq or fp8.")
    adapters: list[ModelAdapter] = Field(
        default_factory=list,
        max_length=64,
        description="LoRA adapters deployments may serve.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ModelStatus(ApiModel):
    observed_generation: int | None = Field(None, ge=0, description="The generation this status describes.")
    digest: str | None = Field(
        None, max_length=256, description="Digest of the verified weights being served (sha256:…); a newer revision "
        "replaces it only once verified."
    )
    serving_revision: str | None = Field(
        None, max_length=256, description="source.revision of the weights being served (digest, signer and the rest "
        "of this status describe them)."
    )
    pending_revision: str | None = Field(
        None, max_length=256, description="source.revision of the newest spec while it is not the one served (being "
        "checked, or rejected: see the Verified condition)."
    )
    short_digest: str | None = Field(None, max_length=32, description="The digest's first 12 hex characters.")
    signer: str | None = Field(None, max_length=256, description="Name of the key that signed the weights.")
    key_hint: str | None = Field(
        None, max_length=128, description="sha256 of the signer's public key PEM (the OMS key hint)."
    )
    file_count: int | None = Field(None, ge=0, description="Files the signed manifest covers.")
    conditions: list[Condition] = _conditions_field("Current state; Verified says whether the weights may be served.")


class Model(Resource):
    """A model: where its weights come from, who must have signed them, and its LoRA adapters."""

    KIND = "Model"
    PLURAL = "models"
    SCOPE = "Namespaced"
    SHORT_NAMES = ("mdl",)
    PRINTER_COLUMNS = (
        PrinterColumn("Source", "string", ".spec.source.uri", "Where the weights come from"),
        _condition_column("Verified", "Verified"),
        PrinterColumn("Signer", "string", ".status.signer", "Key that signed the weights"),
        PrinterColumn("Digest", "string", ".status.shortDigest", "Digest of the verified weights (short)"),
        PrinterColumn("Full-Digest", "string", ".status.digest", "Digest of the verified weights", priority=1),
        _condition_column("Reason", "Verified", "reason", priority=1),
        _AGE,
    )

    kind: str = "Model"
    spec: ModelSpec
    status: ModelStatus = Field(default_factory=ModelStatus)

    @property
    def served_name(self) -> str:
        return self.spec.served_name or self.metadata.name
