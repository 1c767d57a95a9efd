-- Argo CD health check for llmos.dev Tenant, Model and ModelDeployment (docs/gitops.md).
-- Same reading as kstatus (Flux `wait: true`): a status for an older generation is Progressing; Stalled=True is
-- Degraded, Reconciling=True is Progressing; then each kind's own conditions.
local hs = {status = "Progressing", message = "Waiting for the llmos operator to report a status"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.message = "Generation " .. generation .. " not yet reconciled (status is for generation " .. observed .. ")"
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions or {}) do
  -- A condition written for an older generation says nothing about this one.
  if generation == nil or c.observedGeneration == nil or c.observedGeneration == generation then
    conditions[c.type] = c
  end
end
local function is(type_, status)
  return conditions[type_] ~= nil and conditions[type_].status == status
end
local function say(status, c, fallback)
  hs.status = status
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    hs.message = (c.reason or "") .. ": " .. c.message
  else
    hs.message = fallback
  end
  return hs
end

if is("Stalled", "True") then return say("Degraded", conditions.Stalled, "Stalled") end
if is("Reconciling", "True") then return say("Progressing", conditions.Reconciling, "Reconciling") end

if obj.kind == "Model" then
  local verified = conditions.Verified
  if is("Verified", "True") then return say("Healthy", verified, "Verified") end
  -- Allowed by the Model's own choice (signature.policy Disabled): healthy, the message says why.
  if is("Verified", "False") and verified.reason == "SignatureDisabled" then
    return say("Healthy", verified, "Signature verification disabled")
  end
  if is("Verified", "False") then return say("Degraded", verified, "Verification failed") end
  return say("Progressing", verified, "Verification pending")
end

if obj.kind == "ModelDeployment" then
  if is("Degraded", "True") then return say("Degraded", conditions.Degraded, "Degraded") end
  if is("Ready", "True") then return say("Healthy", conditions.Ready, "Ready") end
  -- Waiting for GPU quota is not an error: the deployment starts when the tenant's GPUs free up.
  if is("QuotaAdmitted", "False") then return say("Progressing", conditions.QuotaAdmitted, "Queued for GPU quota") end
  return say("Progressing", conditions.Ready, "Not ready yet")
end

-- Tenant (and any other kind with a Ready condition).
if is("Ready", "True") then return say("Healthy", conditions.Ready, "Ready") end
if is("Ready", "False") then return say("Degraded", conditions.Ready, "Not ready") end
return say("Progressing", conditions.Ready, "Not reconciled yet")
