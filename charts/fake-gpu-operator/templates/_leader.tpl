{{/*
Leader election of the central services. Every helper takes
(dict "root" $ "c" componentValues "component" labelComponent "sa" serviceAccountSuffix
      "lease" leaseName)
*/}}

{{/* "true" when the component elects a leader: replicas > 1, or leaderElection.enabled. */}}
{{- define "fgo.elects" -}}
{{- $le := include "fgo.get" (list .root "leaderElection") | fromYaml -}}
{{- if or (gt (int (default 1 (default dict .c).replicas)) 1) (eq (toString $le.enabled) "true") -}}
true
{{- end -}}
{{- end -}}

{{/* spec.replicas and spec.strategy of a central Deployment. */}}
{{- define "fgo.centralReplicas" -}}
replicas: {{ int (default 1 (default dict .c).replicas) }}
{{- if include "fgo.elects" . }}
# The Lease allows one writer at a time: a rolling update keeps a standby ready to take over.
strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}
{{- else }}
# One writer without an election: never two pods, not even during a rollout.
strategy: {type: Recreate}
{{- end }}
{{- end -}}

{{/* Container env of the election (nothing when the component does not elect). */}}
{{- define "fgo.leaderEnv" -}}
{{- if include "fgo.elects" . }}
{{- $le := include "fgo.get" (list .root "leaderElection") | fromYaml }}
- {name: LEADER_ELECTION, value: "true"}
- {name: LEASE_NAME, value: {{ .lease }}}
- name: LEASE_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: LEASE_IDENTITY
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- {name: LEASE_DURATION_SECONDS, value: {{ $le.leaseDurationSeconds | default 15 | quote }}}
- {name: RENEW_DEADLINE_SECONDS, value: {{ $le.renewDeadlineSeconds | default 10 | quote }}}
- {name: RETRY_PERIOD_SECONDS, value: {{ $le.retryPeriodSeconds | default 2 | quote }}}
{{- end }}
{{- end -}}

{{/* Preferred anti-affinity spreading the replicas over nodes (with > 1 replica and no
podAntiAffinity of the user's). Returns an affinity object as YAML, or nothing. */}}
{{- define "fgo.spreadAffinity" -}}
{{- $c := default dict .c -}}
{{- $affinity := deepCopy (default dict $c.affinity) -}}
{{- if and (gt (int (default 1 $c.replicas)) 1) (not $affinity.podAntiAffinity) -}}
{{- $selector := include "fgo.workloadSelector" (dict "root" .root "component" .component) | fromYaml -}}
{{- $term := dict "weight" 100 "podAffinityTerm" (dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" $selector)) -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list $term)) -}}
{{- end -}}
{{- with $affinity }}{{ toYaml . }}{{ end -}}
{{- end -}}

{{/* fgo.scheduling of a central component, with the replicas spread over nodes. */}}
{{- define "fgo.centralScheduling" -}}
{{- $c := merge (dict "affinity" (include "fgo.spreadAffinity" . | fromYaml)) (deepCopy (default dict .c)) -}}
{{- include "fgo.scheduling" (dict "root" .root "c" $c) -}}
{{- end -}}

{{/* Role + RoleBinding for the Lease; PodDisruptionBudget with > 1 replica. Starts with ---. */}}
{{- define "fgo.leaderObjects" -}}
{{- if include "fgo.elects" . }}
{{- $ctx := dict "root" .root "component" .component }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: fgo-{{ .component }}-leader
  namespace: {{ .root.Release.Namespace }}
  labels: {{- include "fgo.componentLabels" $ctx | nindent 4 }}
rules:
  # Leader election: the Lease is created by whichever replica comes first (create cannot be
  # narrowed to a name).
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [create]
  # Then read, renewed, taken over and released by name.
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    resourceNames: [{{ .lease }}]
    verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: fgo-{{ .component }}-leader
  namespace: {{ .root.Release.Namespace }}
  labels: {{- include "fgo.componentLabels" $ctx | nindent 4 }}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: fgo-{{ .component }}-leader}
subjects:
  - {kind: ServiceAccount, name: fgo-{{ .sa }}, namespace: {{ .root.Release.Namespace }}}
{{- if gt (int (default 1 (default dict .c).replicas)) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .lease }}
  namespace: {{ .root.Release.Namespace }}
  labels: {{- include "fgo.componentLabels" $ctx | nindent 4 }}
spec:
  # A drain takes one replica at a time: the other holds (or takes over) the Lease.
  minAvailable: 1
  selector:
    matchLabels: {{- include "fgo.workloadSelector" $ctx | nindent 6 }}
{{- end }}
{{- end }}
{{- end -}}
