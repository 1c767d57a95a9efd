{{- define "llmos.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "llmos.labels" -}}
app.kubernetes.io/name: llmos-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "llmos.selector" -}}
app.kubernetes.io/name: llmos-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{/* The operator's image; its tag defaults to the chart's appVersion (= the package version `make images` tags). */}}
{{- define "llmos.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- define "llmos.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (.Values.runtimeImage.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{/* The operator configuration: .Values.config with runtime.image filled in from runtimeImage. */}}
{{- define "llmos.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $runtime := $config.runtime | default dict -}}
{{- if not $runtime.image -}}
{{- $_ := set $runtime "image" (include "llmos.runtimeImage" .) -}}
{{- end -}}
{{- /* runtime.roleName: the chart's runtime ClusterRole, the only one the operator may bind (rbac.yaml). */ -}}
{{- $_ := set $runtime "roleName" (printf "%s-runtime" (include "llmos.fullname" .)) -}}
{{- /* engine.extraAllowedFlags: the same extension the engine-flags admission policy gets. */ -}}
{{- if .Values.isolation.extraEngineFlags -}}
{{- $engine := $config.engine | default dict -}}
{{- $_ := set $engine "extraAllowedFlags" .Values.isolation.extraEngineFlags -}}
{{- $_ := set $config "engine" $engine -}}
{{- end -}}
{{- $_ := set $config "runtime" $runtime -}}
{{- toYaml $config -}}
{{- end -}}
{{- define "llmos.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "llmos.fullname" .) -}}
{{- end -}}
{{/*
Admission-policy helpers (templates/admission-*.yaml).

llmos.bindings: one ValidatingAdmissionPolicyBinding per namespace label (llmos tenant namespaces and the namespaces a
Tenant gave up) for the policy named .policy. `dict "root" $ "policy" "<suffix>"`.
*/}}
{{- define "llmos.bindings" -}}
{{- $fullname := include "llmos.fullname" .root }}
{{- range $label := list "tenant" "released" }}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {{ $fullname }}-{{ $.policy }}-{{ $label }}
  labels: {{- include "llmos.labels" $.root | nindent 4 }}
spec:
  policyName: {{ $fullname }}-{{ $.policy }}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchExpressions:
        - {key: llmos.dev/{{ $label }}, operator: Exists}
{{- end }}
{{- end -}}
{{/*
llmos.workloadRules: resourceRules of every kind that carries pod specs (pods, the built-in workloads and
isolation.extraGpuWorkloads) for the operations in .ops. `dict "root" $ "ops" (list "CREATE" "UPDATE")`.
*/}}
{{- define "llmos.workloadRules" -}}
- apiGroups: [""]
  apiVersions: ["v1"]
  resources: ["pods", "replicationcontrollers"]
  operations: {{ .ops | toJson }}
- apiGroups: ["apps"]
  apiVersions: ["v1"]
  resources: ["deployments", "replicasets", "statefulsets", "daemonsets"]
  operations: {{ .ops | toJson }}
- apiGroups: ["batch"]
  apiVersions: ["v1"]
  resources: ["jobs", "cronjobs"]
  operations: {{ .ops | toJson }}
{{- range .root.Values.isolation.extraGpuWorkloads }}
- apiGroups: [{{ .group | quote }}]
  apiVersions: [{{ .version | quote }}]
  resources: [{{ .resource | quote }}]
  operations: {{ $.ops | toJson }}
{{- end }}
{{- end -}}
{{/*
llmos.cel.podSpecs: a CEL list of the pod specs in `object` (one for a pod or a built-in workload; what
isolation.extraGpuWorkloads[].podSpecs says for the extra kinds).
*/}}
{{- define "llmos.cel.podSpecs" -}}
request.resource.resource == 'pods' ? [object.spec] :
request.resource.resource == 'cronjobs' ? [object.spec.jobTemplate.spec.template.spec] :
request.resource.resource == 'replicationcontrollers' ? (has(object.spec.template) ? [object.spec.template.spec] : []) :
{{- range .Values.isolation.extraGpuWorkloads }}
(request.resource.group == {{ .group | squote }} && request.resource.resource == {{ .resource | squote }}) ? ({{ .podSpecs }}) :
{{- end }}
[object.spec.template.spec]
{{- end -}}
{{/*
llmos.cel.platformAdmin: whoever may delete admission policy bindings could lift every policy anyway, so refusing
them protects nothing (break glass: a stuck llmos pod, a drain). Used by the tenancy and children policies, never
by the GPU policy.
*/}}
{{- define "llmos.cel.platformAdmin" -}}
authorizer.group('admissionregistration.k8s.io').resource('validatingadmissionpolicybindings').check('delete').allowed()
{{- end -}}
{{/*
llmos.cel.marks: why the object in CEL variable .o is llmos's, as words for a message; '' when it is not.
`dict "o" "object" "runtime" <runtime service account>`; needs variables.reservedNames.
*/}}
{{- define "llmos.cel.marks" -}}
{{- $o := .o -}}
{{- $template := printf "(request.resource.resource == 'cronjobs' ? %s.?spec.?jobTemplate.?spec.?template : %s.?spec.?template)" $o $o -}}
{{- $podSpec := printf "(request.resource.resource == 'pods' ? %s.?spec : %s.?spec)" $o $template -}}
{{ $o }}.metadata.?labels[?'app.kubernetes.io/managed-by'].orValue('') == 'llmos'
? 'its label app.kubernetes.io/managed-by=llmos' :
{{ $o }}.metadata.?labels[?'llmos.dev/model-deployment'].hasValue()
? 'its label llmos.dev/model-deployment=' + {{ $o }}.metadata.labels['llmos.dev/model-deployment'] :
({{ $o }}.metadata.?name.orValue('') in variables.reservedNames ||
 {{ $o }}.metadata.?name.orValue('').startsWith('llmos-released-'))
? 'its name, which llmos gives its own object in every tenant namespace' :
({{ $template }}.?metadata.?labels[?'app.kubernetes.io/managed-by'].orValue('') == 'llmos' ||
 {{ $template }}.?metadata.?labels[?'llmos.dev/model-deployment'].hasValue())
? 'the llmos labels of its pod template' :
({{ $podSpec }}.?serviceAccountName.orValue('') == '{{ .runtime }}' ||
 {{ $podSpec }}.?serviceAccount.orValue('') == '{{ .runtime }}')
? 'its pods run as {{ .runtime }}, the llmos runtime\'s service account' :
(request.resource.resource == 'secrets' && {{ $o }}.?type.orValue('') == 'kubernetes.io/service-account-token' &&
 {{ $o }}.metadata.?annotations[?'kubernetes.io/service-account.name'].orValue('') == '{{ .runtime }}')
? 'a token Secret of {{ .runtime }}, the llmos runtime\'s service account' :
(request.resource.resource == 'rolebindings' && {{ $o }}.?subjects.orValue([]).exists(s,
 s.kind == 'ServiceAccount' && s.name == '{{ .runtime }}'))
? 'it grants {{ .runtime }}, the llmos runtime\'s service account (code in a model pod), more rights' : ''
{{- end -}}
