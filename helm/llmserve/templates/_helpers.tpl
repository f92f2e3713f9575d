{{- define "llmserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmserve.fullname" -}}
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

{{- define "llmserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "llmserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: frontend or triton. */}}
{{- define "llmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmserve.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "llmserve.secretName" -}}
{{- default (printf "%s-secrets" (include "llmserve.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "llmserve.tritonImage" -}}
{{- $image := ternary .Values.triton.image .Values.triton.cpuImage (eq .Values.triton.variant "gpu") }}
{{- printf "%s:%s" $image.repository $image.tag }}
{{- end }}

{{- define "llmserve.tritonPullPolicy" -}}
{{- $image := ternary .Values.triton.image .Values.triton.cpuImage (eq .Values.triton.variant "gpu") }}
{{- $image.pullPolicy }}
{{- end }}

{{- define "llmserve.frontendImage" -}}
{{- printf "%s:%s" .Values.frontend.image.repository .Values.frontend.image.tag }}
{{- end }}

{{- define "llmserve.modelClaim" -}}
{{- default (printf "%s-models" (include "llmserve.fullname" .)) .Values.modelRepository.pvc.existingClaim }}
{{- end }}

{{- define "llmserve.tokenizerDir" -}}
{{- if .Values.modelRepository.tokenizerDir }}
{{- .Values.modelRepository.tokenizerDir }}
{{- else if eq .Values.triton.variant "gpu" }}
{{- printf "%s/trtllm/tokenizer" .Values.modelRepository.mountPath }}
{{- else }}
{{- printf "%s/models/SmolLM2-135M-Instruct" .Values.modelRepository.mountPath }}
{{- end }}
{{- end }}

{{/* The front-end's connection settings, from the Secret. */}}
{{- define "llmserve.secretEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ include "llmserve.secretName" . }}, key: database-url}
- name: REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ include "llmserve.secretName" . }}, key: redis-url, optional: true}
{{- end }}
