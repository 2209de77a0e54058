{{/* Chart name, truncated to the 63 characters DNS names allow. */}}
{{- define "medops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "medops.fullname" -}}
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

{{- define "medops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "medops.labels" -}}
helm.sh/chart: {{ include "medops.chart" .ctx }}
{{ include "medops.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: medops
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "medops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medops.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of a component's objects: (dict "ctx" $ "component" "gateway"). */}}
{{- define "medops.componentName" -}}
{{- printf "%s-%s" (include "medops.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image reference: (dict "ctx" $ "image" .Values.gateway.image). */}}
{{- define "medops.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Pod security context: non-root, RuntimeDefault seccomp. Argument: the uid. */}}
{{- define "medops.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security context used by every container of the chart. */}}
{{- define "medops.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "medops.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields of a component: (dict "nodeSelector" .. "tolerations" .. "affinity" ..). */}}
{{- define "medops.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Extra environment from a map, sorted by name. */}}
{{- define "medops.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{/* MLflow tracking URI the services use. */}}
{{- define "medops.trackingUri" -}}
{{- if .Values.mlflow.enabled }}
{{- printf "http://%s:%d" (include "medops.componentName" (dict "ctx" . "component" "mlflow")) (int .Values.mlflow.service.port) }}
{{- else }}
{{- required "mlflow.external.trackingUri is required when mlflow.enabled is false" .Values.mlflow.external.trackingUri }}
{{- end }}
{{- end }}

{{/* Object store endpoint (bundled MinIO or external S3). */}}
{{- define "medops.s3Endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "http://%s:9000" (include "medops.componentName" (dict "ctx" . "component" "minio")) }}
{{- else }}
{{- required "objectStore.endpoint is required when minio.enabled is false" .Values.objectStore.endpoint }}
{{- end }}
{{- end }}

{{/* S3 credentials as AWS_* environment variables. */}}
{{- define "medops.s3Env" -}}
{{- if .Values.minio.enabled }}
{{- $secret := default (include "medops.componentName" (dict "ctx" . "component" "minio")) .Values.minio.auth.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: root-user
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: root-password
{{- else }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ required "objectStore.existingSecret is required when minio.enabled is false" .Values.objectStore.existingSecret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.existingSecret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.objectStore.region | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ include "medops.s3Endpoint" . | quote }}
{{- end }}

{{/* mc reads the store's address and credentials from MC_HOST_store (after the AWS_* variables). */}}
{{- define "medops.mcHostEnv" -}}
- name: MC_HOST_store
  value: {{ regexReplaceAll "^(https?://)" (include "medops.s3Endpoint" .) "${1}$(AWS_ACCESS_KEY_ID):$(AWS_SECRET_ACCESS_KEY)@" | quote }}
{{- end }}

{{/* A generated secret value, kept across upgrades: (dict "ctx" $ "name" secretName "key" key). */}}
{{- define "medops.persistentSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $existing (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}

{{/* The Istio destination of the gateway's HTTP port. */}}
{{- define "medops.gatewayHost" -}}
{{- printf "%s.%s.svc.cluster.local" (include "medops.componentName" (dict "ctx" . "component" "gateway")) .Release.Namespace }}
{{- end }}

{{/* Refuse a routing document whose split is meaningless (the gateway refuses it the same way). */}}
{{- define "medops.validateRouting" -}}
{{- range $model, $spec := .Values.routing.models }}
{{- $total := 0 }}
{{- $names := list }}
{{- range $spec.variants }}
{{- $total = add $total (int .weight) }}
{{- if has .name $names }}
{{- fail (printf "routing.models.%s: variant names must be unique, repeated: %s" $model .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- if ne (int $total) 100 }}
{{- fail (printf "routing.models.%s: variant weights must sum to 100, got %d" $model (int $total)) }}
{{- end }}
{{- with $spec.shadow }}
{{- if not (has .variant $names) }}
{{- fail (printf "routing.models.%s.shadow.variant %q is not one of the variants" $model .variant) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether the prediction log lives in the bundled PostgreSQL. */}}
{{- define "medops.bundledPredictionLog" -}}
{{- if and (eq .Values.predictionLog.source "postgresql") .Values.mlflow.enabled .Values.postgresql.enabled }}true{{ end }}
{{- end }}

{{/* The prediction log's URL as MEDOPS_<SERVICE>_STORE_URL (argument: dict "ctx" $ "prefix" "MEDOPS_MONITOR"); with "routing" true also as <prefix>_ROUTING_STORE_URL, the store the gateway replicas share their routing through (not for a local SQLite file, which pods cannot share). */}}
{{- define "medops.predictionLogEnv" -}}
{{- $v := .ctx.Values }}
{{- $names := list (printf "%s_STORE_URL" .prefix) }}
{{- if and .routing (ne $v.predictionLog.source "local") }}
{{- $names = append $names (printf "%s_ROUTING_STORE_URL" .prefix) }}
{{- end }}
{{- if include "medops.bundledPredictionLog" .ctx }}
{{- $pg := include "medops.componentName" (dict "ctx" .ctx "component" "postgresql") }}
- name: MEDOPS_PREDICTION_LOG_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default $pg $v.postgresql.auth.existingSecret }}
      key: password
{{- range $names }}
- name: {{ . }}
  value: {{ printf "postgresql://%s:$(MEDOPS_PREDICTION_LOG_PASSWORD)@%s:5432/%s" $v.postgresql.auth.username $pg $v.predictionLog.database | quote }}
{{- end }}
{{- else if eq $v.predictionLog.source "external" }}
{{- range $names }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ required "predictionLog.existingSecret is required when predictionLog.source is external" $v.predictionLog.existingSecret }}
      key: url
{{- end }}
{{- else if eq $v.predictionLog.source "postgresql" }}
{{- fail "predictionLog.source postgresql needs the bundled PostgreSQL (mlflow.enabled and postgresql.enabled); use external or local" }}
{{- end }}
{{- end }}

{{/* The API-key hashes the gateway and the monitor both mount (the plain keys stay in the
Secret for the operator, never mounted). */}}
{{- define "medops.apiKeysVolume" -}}
- name: api-keys
  secret:
    secretName: {{ default (printf "%s-api-keys" (include "medops.componentName" (dict "ctx" . "component" "gateway"))) .Values.apiKeys.existingSecret }}
    defaultMode: 0440
    items:
      - key: api-keys.json
        path: api-keys.json
{{- end }}

{{/* Environment of a service that checks API keys: (dict "prefix" "MEDOPS_GATEWAY"). Keys come
hashed from the Secret; no service makes its own in a cluster. */}}
{{- define "medops.apiKeysEnv" -}}
- name: {{ .prefix }}_LOCAL_MODE
  value: "false"
- name: {{ .prefix }}_API_KEYS_FILE
  value: /etc/medops/api-keys/api-keys.json
{{- end }}
