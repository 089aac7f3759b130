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

{{/* Cluster-scoped objects are named from the release's namespace and full name: two releases in
one cluster, in one namespace or of one name in two, never share (or overwrite) a ClusterRole. */}}
{{- define "fedops-control.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "fedops-control.fullname" .) -}}
{{- end -}}

{{/* The ClusterRole bound in each run namespace (the control service's --k8s-run-role). */}}
{{- define "fedops-control.runRole" -}}
{{- default (printf "%s-run-namespace" (include "fedops-control.clusterName" .)) .Values.rbac.runRole -}}
{{- end -}}

{{/* The fedops.io/owner label value on this release's run namespaces (--k8s-owner): a restarted
control service deletes only its own orphans, never another release's runs. A label value: at most
63 characters, alphanumeric at both ends. */}}
{{- define "fedops-control.owner" -}}
{{- printf "%s.%s" .Release.Namespace .Release.Name | trunc 63 | trimSuffix "-" | trimSuffix "." -}}
{{- end -}}
