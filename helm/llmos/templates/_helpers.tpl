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
