{{/* Names and labels shared by the templates. */}}
{{- define "imds-guard.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "imds-guard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "imds-guard.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "imds-guard.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "imds-guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imds-guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "imds-guard.labels" -}}
{{ include "imds-guard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The pin directory inside the container (the host's bpffs is mounted at the same path). */}}
{{- define "imds-guard.pinDir" -}}
{{ .Values.bpffs }}/imds-guard
{{- end -}}

{{/* The policy file: a complete override, or mode/endpoints/imdsv1 + the EKS rules + extra rules. */}}
{{- define "imds-guard.policy" -}}
{{- if .Values.policy.override -}}
{{ .Values.policy.override }}
{{- else -}}
# Rendered by the imds-guard chart (values: policy.*). Reference: docs/POLICY.md.
mode = {{ .Values.policy.mode | quote }}
endpoints = {{ .Values.policy.endpoints | toJson }}
imdsv1 = {{ .Values.policy.imdsv1 | quote }}

# The image has no nft (yet), so no nftables layer here, with or without hostNetwork. Every pod's
# processes are below the node's cgroup root, so the cgroup hooks judge them.
[netfilter]
forward = false
reduced_mode = "off"
{{- if .Values.policy.eksPreset }}

{{ .Files.Get "files/eks-rules.toml" }}
{{- end }}
{{- with .Values.policy.extraRules }}

{{ . }}
{{- end }}
{{- end }}
{{- end -}}
