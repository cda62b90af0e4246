{{/*
The chart name, or nameOverride.
*/}}
{{- define "iamlet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, else the release name when it
contains the chart name, else "<release>-<chart>". Truncated to 63 characters (DNS labels).
*/}}
{{- define "iamlet.fullname" -}}
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
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "iamlet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "iamlet.labels" -}}
helm.sh/chart: {{ include "iamlet.chart" . }}
{{ include "iamlet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the agent's pods (immutable in the DaemonSet's selector).
*/}}
{{- define "iamlet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iamlet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the agent runs as.
*/}}
{{- define "iamlet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iamlet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The agent's command-line flags, one YAML list item each. Flags whose value is empty or false
are left out, so the agent's own default applies.
*/}}
{{- define "iamlet.args" -}}
{{- $a := .Values.agent -}}
- --listen-v4=$(HOST_IP):{{ int $a.metadataPort }}
{{- with $a.listenV6 }}
- --listen-v6={{ . }}
{{- end }}
- --admin-listen=$(HOST_IP):{{ int $a.adminPort }}
- --shutdown-grace={{ int $a.shutdownGraceSeconds }}s
- --log-format={{ $a.logFormat }}
- --log={{ $a.logLevel }}
{{- with $a.cgroup }}
- --cgroup={{ . }}
{{- end }}
{{- with $a.bpffsDir }}
- --bpffs-dir={{ . }}
{{- end }}
- --handover-socket={{ $a.handoverDir }}/handover.sock
- --on-exit={{ $a.onExit }}
- --max-connections={{ int $a.maxConnections }}
- --max-connections-per-pod={{ int $a.maxConnectionsPerPod }}
- --max-waiting-per-pod={{ int $a.maxWaitingPerPod }}
{{- with $a.proxyThreads }}
- --proxy-threads={{ int . }}
{{- end }}
{{- /* `0` turns busy polling off: test the text, as `with` would skip a number 0. */}}
{{- if ne (toString $a.proxyBusyPoll) "" }}
- --proxy-busy-poll={{ $a.proxyBusyPoll }}
{{- end }}
- --forward-guard={{ $a.forwardGuard }}
{{- with $a.baseRoleArn }}
- --base-role-arn={{ . }}
{{- end }}
{{- if $a.requireImdsv2 }}
- --require-imdsv2
{{- end }}
{{- with $a.region }}
- --region={{ . }}
{{- end }}
{{- with $a.stsEndpoint }}
- --sts-endpoint={{ . }}
{{- end }}
{{- with $a.sessionDuration }}
- --session-duration={{ . }}
{{- end }}
{{- if $a.sessionTags }}
- --session-tags
{{- end }}
{{- with $a.upstream }}
- --upstream={{ . }}
{{- end }}
{{- range $a.allowPaths }}
- {{ printf "--allow-path=%s" . | quote }}
{{- end }}
{{- range $a.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The container's resources: as given, with the memory limit derived from the agent's bounds
when none is given (memoryBaseMi + maxConnections x 15 KiB + 16 MiB of request bytes).
*/}}
{{- define "iamlet.resources" -}}
{{- $r := deepCopy (.Values.resources | default dict) -}}
{{- $limits := $r.limits | default dict -}}
{{- if not $limits.memory -}}
{{- $connMi := div (add (mul (int .Values.agent.maxConnections) 15) 1023) 1024 -}}
{{- $_ := set $limits "memory" (printf "%dMi" (add (int .Values.memoryBaseMi) $connMi 16)) -}}
{{- end -}}
{{- $_ := set $r "limits" $limits -}}
{{- toYaml $r }}
{{- end }}
