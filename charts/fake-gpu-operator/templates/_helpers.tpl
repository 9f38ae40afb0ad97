{{/* Name of the chart, truncated to the DNS label limit. */}}
{{- define "fgo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fgo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "fgo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fake-gpu-operator
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "status-updater") */}}
{{- define "fgo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fgo.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fgo.componentLabels" -}}
{{ include "fgo.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A component's values, nil-safe: (include "fgo.values" (list $ "statusUpdater")) is YAML. */}}
{{- define "fgo.componentValues" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- toYaml (default dict (index $root.Values $key)) -}}
{{- end -}}

{{/* Whether a component is enabled: (list $ "key" defaultBool). Missing or null -> default. */}}
{{- define "fgo.enabled" -}}
{{- $root := index . 0 -}}
{{- $values := default dict (index $root.Values (index . 1)) -}}
{{- if hasKey $values "enabled" -}}
{{- if eq (toString $values.enabled) "false" -}}false{{- else -}}true{{- end -}}
{{- else -}}
{{- index . 2 -}}
{{- end -}}
{{- end -}}

{{/* Image of a component: (list $ componentValues defaultRepository) */}}
{{- define "fgo.image" -}}
{{- $root := index . 0 -}}
{{- $c := default dict (index . 1) -}}
{{- $img := default dict $c.image -}}
{{- $global := default dict $root.Values.image -}}
{{- $repo := default (index . 2) $img.repository -}}
{{- $registry := default "ghcr.io/fake-gpu-operator" $global.registry -}}
{{- $tag := default (default $root.Chart.AppVersion $global.tag) $img.tag -}}
{{- if contains "/" $repo -}}{{ $repo }}:{{ $tag }}{{- else -}}{{ $registry }}/{{ $repo }}:{{ $tag }}{{- end -}}
{{- end -}}

{{- define "fgo.pullPolicy" -}}
{{- $root := index . 0 -}}
{{- $img := default dict (default dict (index . 1)).image -}}
{{- default (default "IfNotPresent" (default dict $root.Values.image).pullPolicy) $img.pullPolicy -}}
{{- end -}}

{{/* Environment every service gets. */}}
{{- define "fgo.commonEnv" -}}
- name: TOPOLOGY_CM_NAME
  value: topology
- name: TOPOLOGY_CM_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- end -}}

{{- define "fgo.nodeNameEnv" -}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
{{- end -}}

{{/* Scheduling knobs of a component: (dict "c" componentValues) */}}
{{- define "fgo.scheduling" -}}
{{- $c := default dict .c -}}
{{- with $c.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Security context of the central (non-node) components. */}}
{{- define "fgo.restrictedContainerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "fgo.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 5
{{- end -}}

{{/* The topology document; with no pools given, the seed's default (2 x Tesla K80 per node). */}}
{{- define "fgo.topologyYaml" -}}
{{- if .Values.cluster -}}
{{ toYaml .Values.cluster }}
{{- else -}}
{{- $t := deepCopy (default dict .Values.topology) -}}
{{- if not $t.nodePools -}}
{{- $_ := set $t "nodePools" (dict "default" (dict "gpus" (list (dict "type" "Tesla K80" "count" 2)))) -}}
{{- end -}}
{{ toYaml $t }}
{{- end -}}
{{- end -}}
