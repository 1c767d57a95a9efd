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
