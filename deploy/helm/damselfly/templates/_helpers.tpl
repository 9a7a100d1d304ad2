{{/* Names, labels and computed values shared by the templates. */}}

{{- define "damselfly.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "damselfly.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "damselfly.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "damselfly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "damselfly.selector" -}}
app.kubernetes.io/name: {{ include "damselfly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "damselfly.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "damselfly.supernode" -}}
{{- printf "%s-supernode" (include "damselfly.fullname" .) }}
{{- end }}

{{- define "damselfly.headless" -}}
{{- printf "%s-supernode-headless" (include "damselfly.fullname" .) }}
{{- end }}

{{- define "damselfly.dfdaemon" -}}
{{- printf "%s-dfdaemon" (include "damselfly.fullname" .) }}
{{- end }}

{{/* The supernode list every dfdaemon uses: the values, else each StatefulSet pod's stable name. */}}
{{- define "damselfly.supernodes" -}}
{{- $nodes := list }}
{{- if .Values.dfdaemon.supernodes }}
{{- $nodes = .Values.dfdaemon.supernodes }}
{{- else }}
{{- $sn := include "damselfly.supernode" . }}
{{- $hl := include "damselfly.headless" . }}
{{- range $i := until (int .Values.supernode.replicas) }}
{{- $nodes = append $nodes (printf "%s-%d.%s.%s.svc.%s:%d" $sn $i $hl $.Release.Namespace $.Values.clusterDomain (int $.Values.supernode.port)) }}
{{- end }}
{{- end }}
{{- toJson $nodes }}
{{- end }}

{{/* tcpSocket probe target: kubelet shares a hostNetwork pod's network, loopback included. */}}
{{- define "damselfly.proxyProbe" -}}
port: proxy
{{- if .Values.dfdaemon.hostNetwork }}
host: {{ .Values.dfdaemon.proxyListen | replace "0.0.0.0" "127.0.0.1" | quote }}
{{- end }}
{{- end }}

{{- define "damselfly.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
fsGroup: {{ .Values.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "damselfly.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Fail early, with a message, on values the manifests or the daemons would reject later. */}}
{{- define "damselfly.validate" -}}
{{- if lt (int .Values.supernode.replicas) 1 }}
{{- fail "supernode.replicas must be at least 1: dfdaemon needs a supernode" }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9.-]+(:[0-9]+)?$" .Values.containerd.registry) }}
{{- fail (printf "containerd.registry %q is not a registry host[:port] (e.g. docker.io)" .Values.containerd.registry) }}
{{- end }}
{{- if not (regexMatch "^https?://[A-Za-z0-9.-]+(:[0-9]+)?/?$" .Values.containerd.server) }}
{{- fail (printf "containerd.server %q must be http(s)://host[:port]" .Values.containerd.server) }}
{{- end }}
{{- if not (regexMatch "^/[A-Za-z0-9._/-]+$" .Values.containerd.certsDir) }}
{{- fail (printf "containerd.certsDir %q must be an absolute path" .Values.containerd.certsDir) }}
{{- end }}
{{- range .Values.dfdaemon.extraDfgetFlags }}
{{- if has (. | toString) (list "--port" "--url" "-u" "--output" "-o" "--home") }}
{{- fail (printf "dfdaemon.extraDfgetFlags must not set %s: the chart sets it" .) }}
{{- end }}
{{- end }}
{{- if eq (int .Values.dfdaemon.port) (int .Values.dfdaemon.peerPort) }}
{{- fail "dfdaemon.port and dfdaemon.peerPort must differ" }}
{{- end }}
{{- end }}
