{{/*
The chart's name, or nameOverride.
*/}}
{{- define "abtest-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A fully qualified app name: the release name, with the chart name unless the release name
already contains it. Cut at 63 characters (DNS names).
*/}}
{{- define "abtest-exporter.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "abtest-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "abtest-exporter.labels" -}}
helm.sh/chart: {{ include "abtest-exporter.chart" . }}
{{ include "abtest-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: abtest-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector cannot change).
*/}}
{{- define "abtest-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "abtest-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: exporter
{{- end }}

{{/*
The ServiceAccount's name.
*/}}
{{- define "abtest-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "abtest-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository:tag, or repository@digest when a digest is set.
*/}}
{{- define "abtest-exporter.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the tokens: the user's, or the one this chart makes.
*/}}
{{- define "abtest-exporter.tokenSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-tokens" (include "abtest-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The ConfigMap holding config.toml: the user's, or the one this chart makes.
*/}}
{{- define "abtest-exporter.configMapName" -}}
{{- if .Values.config.existingConfigMap }}
{{- .Values.config.existingConfigMap }}
{{- else }}
{{- printf "%s-config" (include "abtest-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Whether the exporter reads a config file.
*/}}
{{- define "abtest-exporter.hasConfig" -}}
{{- if or .Values.config.existingConfigMap .Values.config.toml }}true{{- end }}
{{- end }}

{{/*
The PersistentVolumeClaim's name: the user's, or the one this chart makes.
*/}}
{{- define "abtest-exporter.claimName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else }}
{{- printf "%s-data" (include "abtest-exporter.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
http or https, for probes, the ServiceMonitor and NOTES.
*/}}
{{- define "abtest-exporter.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
Refuse what the chart cannot do yet, with the same words as values.schema.json (so that
`helm template --skip-schema-validation` says why too).
*/}}
{{- define "abtest-exporter.checkMode" -}}
{{- if ne .Values.mode "single" }}
{{- fail (printf "mode %q: only mode single is available; mode scaled is refused until the scale-out roles (serve --role ingest and --role analyzer) exist in abtest-exporter" (toString .Values.mode)) }}
{{- end }}
{{- end }}
