{{- define "fedops-control.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedops-control.labels" -}}
app.kubernetes.io/part-of: fedops-stack
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fedops-control.serviceAccountName" -}}
{{- default (include "fedops-control.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "fedops-control.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The ClusterRole bound in each run namespace (the launcher's --k8s-run-role is its name). */}}
{{- define "fedops-control.runRole" -}}
fedops-run-namespace
{{- end -}}
