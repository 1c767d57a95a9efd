"""Every name llmos puts on objects or reads from them, once: labels, annotations, container, child and condition
names. The chart's admission policies (helm/llmos/templates/) repeat some of them as literals; tests/unit/test_names.py
checks that they agree."""

from __future__ import annotations

# Who made an object ---------------------------------------------------------------------------------------------
MANAGED_BY = "llmos"
RUNTIME_APP = "llmos-runtime"
OPERATOR_APP = "llmos-operator"  # app.kubernetes.io/name of the operator's pods (the chart's selector label)
FIELD_MANAGER = "llmos"  # server-side apply field manager of the operator

# Labels -----------------------------------------------------------------------------------------------------------
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL_DEPLOYMENT = "llmos.dev/model-deployment"  # on every child of a ModelDeployment and on its pods
LABEL_MODEL = "llmos.dev/model"  # on a Model's trust ConfigMaps (shared by its deployments)
LABEL_TENANT = "llmos.dev/tenant"  # on a namespace: the tenant llmos gave it to
LABEL_RELEASED = "llmos.dev/released"  # on a namespace a Tenant gave up (or whose Tenant was deleted)
LABEL_GATEWAY = "llmos.dev/gateway"  # on a namespace whose pods may call every tenant's models
LABEL_ALLOW_REMOTE_CODE = "llmos.dev/allow-remote-code"  # read by the chart's engine-flag admission policy
LABEL_ALLOW_EXEC = "llmos.dev/allow-exec"  # read by the chart's no-exec admission policy (Tenant.spec.policy.allowExec)

# Annotations ------------------------------------------------------------------------------------------------------
ANNOTATION_ADOPT = "llmos.dev/adopt"  # set by the platform: this existing namespace may be taken by that tenant
ANNOTATION_CONFIG_HASH = "llmos.dev/config-hash"  # on a pod template: what the pods were made from
ANNOTATION_MODEL_DIGEST = "llmos.dev/model-digest"  # on a pod template: the verified weights it serves
# Written by the runtime on its own pod: {"loaded": [names], "failed": {name: reason}}; the operator sums it up.
ANNOTATION_ADAPTERS = "llmos.dev/adapters"

# Containers and identities ----------------------------------------------------------------------------------------
RUNTIME_CONTAINER = "runtime"
# The runtime's identity in a tenant namespace: allowed to read and annotate pods there, nothing else.
RUNTIME_SERVICE_ACCOUNT = "llmos-runtime"

# A Tenant's children in each of its namespaces --------------------------------------------------------------------
NETWORK_POLICY_NAME = "llmos-tenant-isolation"
EGRESS_POLICY_NAME = "llmos-tenant-egress"
RUNTIME_BINDING_NAME = "llmos-runtime-pods"
# The one ResourceQuota: GPUs the ledger reserves here, CPU, memory and object counts (Tenant.spec.quota). One, not two:
# quota admission updates the status of every quota a pod counts against, at every pod create.
TENANT_QUOTA_NAME = "llmos-tenant-quota"
LEGACY_GPU_QUOTA_NAME = "llmos-gpus"  # the GPU lines alone, before issue 22: removed where found
API_KEYS_CONFIGMAP = "llmos-api-keys"  # the key hashes of a namespace, which its model pods enforce
API_KEY_SECRET_TYPE = "llmos.dev/api-key"  # a Secret holding one API key (its plain text is only there)
LIMIT_RANGE_NAME = "llmos-tenant-limits"  # default requests, so that pods asking for nothing meet that quota
# What a released namespace keeps (every name llmos gives there starts with RELEASED_PREFIX)
RELEASED_PREFIX = "llmos-released-"
RELEASED_QUOTA_NAME = RELEASED_PREFIX + "gpus"
RELEASED_POLICY_NAME = RELEASED_PREFIX + "deny-ingress"

# Conditions -------------------------------------------------------------------------------------------------------
READY = "Ready"
QUOTA_ADMITTED = "QuotaAdmitted"
MODEL_VERIFIED = "ModelVerified"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
RECONCILING = "Reconciling"  # kstatus: a change is being made (admitted, verified, rolled out)
STALLED = "Stalled"  # kstatus: no progress without someone changing something
VERIFIED = "Verified"  # the Model's condition
NAMESPACES_READY = "NamespacesReady"  # the Tenant's: every namespace it lists is its own
OVER_QUOTA = "OverQuota"  # the Tenant's: reservations above a quota that was lowered
ISOLATED = "Isolated"  # the Tenant's: every GPU pod of its namespaces belongs to an admitted ModelDeployment
CHILD_CONFLICT = "ChildConflict"  # reason: an object in the way of a child is not llmos's
SCALING_ACTIVE = "ScalingActive"  # a ModelDeployment's with spec.autoscaling: the replica count follows its load
SCALING_LIMITED = "ScalingLimited"  # fewer replicas granted than wanted (quota), or the load wants more than max


def selector_labels(mdep_name: str) -> dict[str, str]:
    """Labels selecting the pods of one ModelDeployment (immutable in a Deployment: never change them)."""
    return {LABEL_NAME: RUNTIME_APP, LABEL_MODEL_DEPLOYMENT: mdep_name}


def child_labels(mdep_name: str) -> dict[str, str]:
    """Labels of every child of a ModelDeployment and of its pods."""
    return {LABEL_NAME: RUNTIME_APP, LABEL_INSTANCE: mdep_name, LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_MODEL_DEPLOYMENT: mdep_name}


def selector_string(mdep_name: str) -> str:
    """The pod selector as a string (``status.selector``, used by the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(mdep_name).items()))
