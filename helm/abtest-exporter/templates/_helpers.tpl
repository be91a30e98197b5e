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
Labels on every object (component "exporter": single mode, and the objects shared by both
topologies).
*/}}
{{- define "abtest-exporter.labels" -}}
{{ include "abtest-exporter.componentLabels" (dict "root" . "component" "exporter") }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector cannot change).
*/}}
{{- define "abtest-exporter.selectorLabels" -}}
{{ include "abtest-exporter.componentSelectorLabels" (dict "root" . "component" "exporter") }}
{{- end }}

{{/*
Labels of one component's objects: (dict "root" $ "component" "exporter|ingest|analyzer").
*/}}
{{- define "abtest-exporter.componentLabels" -}}
helm.sh/chart: {{ include "abtest-exporter.chart" .root }}
{{ include "abtest-exporter.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: abtest-exporter
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component: exporter (single mode), ingest or analyzer (scaled mode).
*/}}
{{- define "abtest-exporter.componentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "abtest-exporter.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
mode scaled: the ingest StatefulSet and its Services, and the analyzer's Deployment and
Service. Cut so that pod names (plus "-N") and revision labels stay within 63 characters.
*/}}
{{- define "abtest-exporter.ingestName" -}}
{{- printf "%s-ingest" (include "abtest-exporter.fullname" . | trunc 48 | trimSuffix "-") }}
{{- end }}

{{- define "abtest-exporter.analyzerName" -}}
{{- printf "%s-analyzer" (include "abtest-exporter.fullname" . | trunc 48 | trimSuffix "-") }}
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
Refuse what the chart cannot run, with the same words as values.schema.json (so that
`helm template --skip-schema-validation` says why too).
*/}}
{{- define "abtest-exporter.checkMode" -}}
{{- if not (has .Values.mode (list "single" "scaled")) }}
{{- fail (printf "mode %q: mode must be single or scaled" (toString .Values.mode)) }}
{{- end }}
{{- if eq .Values.mode "scaled" }}
{{- if not .Values.scaled.prometheusUrl }}
{{- fail "mode scaled needs scaled.prometheusUrl: the URL of the Prometheus that scrapes the ingest replicas, which the analyzer (--role analyzer --prometheus-url) reads them from" }}
{{- end }}
{{- if .Values.persistence.existingClaim }}
{{- fail "mode scaled makes one claim per ingest replica (volumeClaimTemplates): persistence.existingClaim is for mode single" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The pod template (metadata and spec) of one component, shared by single mode's Deployment,
the ingest StatefulSet and the analyzer Deployment:
(dict "root" $ "component" "exporter|ingest|analyzer"). "exporter" is single mode's one
process. An ingest replica's data volume comes from the StatefulSet's volumeClaimTemplates;
the analyzer keeps no data file (its figures are rebuilt from Prometheus every round), takes
no records and so has no data volume and no OTLP port.
*/}}
{{- define "abtest-exporter.podTemplate" -}}
{{- $root := .root }}
{{- $v := .root.Values }}
{{- $component := .component }}
{{- $analyzer := eq $component "analyzer" }}
{{- $scheme := include "abtest-exporter.scheme" $root | upper -}}
metadata:
  labels:
    {{- include "abtest-exporter.componentLabels" . | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $configChecksum := and $v.config.toml (not $v.config.existingConfigMap) }}
  {{- if or $configChecksum $v.podAnnotations }}
  annotations:
    {{- if $configChecksum }}
    checksum/config: {{ $v.config.toml | sha256sum }}
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "abtest-exporter.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  # Off: a Service named abtest-exporter would inject ABTEST_EXPORTER_PORT=tcp://...,
  # which the exporter reads as its --port and refuses.
  enableServiceLinks: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  containers:
    - name: exporter
      image: {{ include "abtest-exporter.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        - serve
        - --host=0.0.0.0
        - --port={{ $v.port }}
        {{- if $analyzer }}
        - --role=analyzer
        - {{ printf "--prometheus-url=%s" $v.scaled.prometheusUrl | quote }}
        {{- with $v.scaled.prometheusSelector }}
        - {{ printf "--prometheus-selector=%s" . | quote }}
        {{- end }}
        - --durability=off
        {{- else }}
        {{- if eq $component "ingest" }}
        - --role=ingest
        {{- end }}
        - --data-dir={{ $v.dataDir }}
        - --durability={{ $v.durability }}
        {{- if $v.otlp.enabled }}
        - --otlp-port={{ $v.otlp.port }}
        {{- end }}
        {{- end }}
        {{- if include "abtest-exporter.hasConfig" $root }}
        - --config=/etc/abtest-exporter/config/config.toml
        {{- end }}
        {{- if $v.tls.enabled }}
        - --tls-cert=/etc/abtest-exporter/tls/tls.crt
        - --tls-key=/etc/abtest-exporter/tls/tls.key
        {{- end }}
        {{- range $v.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- if or $v.auth.enabled $v.auth.metrics $v.env }}
      env:
        {{- if $v.auth.enabled }}
        - name: ABTEST_EXPORTER_TOKEN_FILE
          value: /etc/abtest-exporter/tokens/{{ $v.auth.writeTokenKey }}
        {{- end }}
        {{- if $v.auth.metrics }}
        - name: ABTEST_EXPORTER_METRICS_TOKEN_FILE
          value: /etc/abtest-exporter/tokens/{{ $v.auth.metricsTokenKey }}
        {{- end }}
        {{- with $v.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- with $v.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ $v.port }}
          protocol: TCP
        {{- if and $v.otlp.enabled (not $analyzer) }}
        - name: otlp-http
          containerPort: {{ $v.otlp.port }}
          protocol: TCP
        {{- end }}
      startupProbe:
        httpGet:
          path: /-/healthy
          port: http
          scheme: {{ $scheme }}
        {{- toYaml $v.startupProbe | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /-/healthy
          port: http
          scheme: {{ $scheme }}
        {{- toYaml $v.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /-/ready
          port: http
          scheme: {{ $scheme }}
        {{- toYaml $v.readinessProbe | nindent 8 }}
      {{- with (ternary $v.scaled.analyzer.resources $v.resources $analyzer) }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        {{- if not $analyzer }}
        - name: data
          mountPath: {{ $v.dataDir }}
        {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- if include "abtest-exporter.hasConfig" $root }}
        - name: config
          mountPath: /etc/abtest-exporter/config
          readOnly: true
        {{- end }}
        {{- if or $v.auth.enabled $v.auth.metrics }}
        - name: tokens
          mountPath: /etc/abtest-exporter/tokens
          readOnly: true
        {{- end }}
        {{- if $v.tls.enabled }}
        - name: tls
          mountPath: /etc/abtest-exporter/tls
          readOnly: true
        {{- end }}
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- if eq $component "exporter" }}
    - name: data
      {{- if $v.persistence.enabled }}
      persistentVolumeClaim:
        claimName: {{ include "abtest-exporter.claimName" $root }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- else if and (eq $component "ingest") (not $v.persistence.enabled) }}
    - name: data
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.tmpSizeLimit }}
    {{- if include "abtest-exporter.hasConfig" $root }}
    - name: config
      configMap:
        name: {{ include "abtest-exporter.configMapName" $root }}
        items:
          - key: config.toml
            path: config.toml
    {{- end }}
    {{- if or $v.auth.enabled $v.auth.metrics }}
    - name: tokens
      secret:
        secretName: {{ include "abtest-exporter.tokenSecretName" $root }}
        defaultMode: 0440
        items:
          {{- if $v.auth.enabled }}
          - key: {{ $v.auth.writeTokenKey }}
            path: {{ $v.auth.writeTokenKey }}
          {{- end }}
          {{- if $v.auth.metrics }}
          - key: {{ $v.auth.metricsTokenKey }}
            path: {{ $v.auth.metricsTokenKey }}
          {{- end }}
    {{- end }}
    {{- if $v.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ $v.tls.secretName }}
        defaultMode: 0440
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
